"""Throughput of the frozen stage-2 front end (what `foley extract` spends its time on).

Builds the full-size encoders with random weights (same shapes and compute as MetaCLIP
ViT-H/14, Synchformer and T5-base; no downloads), feeds 8 s clips (64 CLIP frames at 8 fps,
200 sync frames at 25 fps, one caption, 8 s of 44.1 kHz audio) and prints clips/s per
encoder and overall. Also checks the FlowModule on the device: a bf16-autocast training
loss is finite and `generate` is deterministic for a seed and close to the fp32 result.

    python benchmarks/bench_encoders.py --device cuda --batch 8
    python benchmarks/bench_encoders.py --device cpu --batch 1 --tiny   # smoke run
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from foley.encoders import ClipEncoder, SynchformerEncoder, TextEncoder
from foley.flow import FlowMatching
from foley.models.bigvgan import BigVGAN
from foley.models.codec import Codec
from foley.models.mel import LogMelSpectrogram
from foley.models.mel_vae import MelVAE
from foley.models.mmdit import MMDiT
from foley.stages.flow_module import FlowModule

SECONDS, SR = 8.0, 44100
T5_BASE = {"vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12,
           "feed_forward_proj": "gated-gelu"}
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


def timed(fn, device: str, reps: int) -> float:
    fn()  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny encoders (smoke run of this script)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device, batch = args.device, args.batch
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
    results: dict[str, float | bool | str] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                              "batch": batch}
    torch.manual_seed(0)
    size = 32 if args.tiny else 224
    if args.tiny:
        clip = ClipEncoder(model_config=TINY_CLIP)
        sync = SynchformerEncoder(crop_size=32, patch_size=16, dim=32, depth=1, num_heads=2)
        text = TextEncoder(model_config={"vocab_size": 384, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
                                         "num_heads": 4})
        vae = MelVAE(latent_channels=40, hidden_channels=16, encoder_layers=2, decoder_layers=2)
    else:
        clip = ClipEncoder("ViT-H-14-quickgelu", pretrained=None)
        sync = SynchformerEncoder()
        text = TextEncoder(model_config=T5_BASE)
        vae = MelVAE()
    vocoder = BigVGAN(upsample_rates=(8, 8, 8), upsample_kernel_sizes=(16, 16, 16), upsample_initial_channel=16,
                      resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    codec = Codec(vae, vocoder, LogMelSpectrogram()).eval().requires_grad_(False)
    for module in (clip, sync, text, codec):
        module.to(device)

    clip_frames = torch.randint(0, 256, (batch, int(SECONDS * 8), 3, size, size), dtype=torch.uint8, device=device)
    sync_frames = torch.randint(0, 256, (batch, int(SECONDS * 25), 3, size, size), dtype=torch.uint8, device=device)
    captions = ["a wooden drum is hit twice, then a ball bounces on a tiled floor"] * batch
    audio = 0.1 * torch.randn(batch, int(SECONDS * SR), device=device)

    with torch.no_grad(), autocast:
        for name, fn in (("clip", lambda: clip(clip_frames)), ("sync", lambda: sync(sync_frames)),
                         ("text", lambda: text(captions)), ("codec_encode", lambda: codec.encode(audio))):
            seconds = timed(fn, device, args.reps)
            results[f"{name}_clips_per_s"] = round(batch / seconds, 2)
            print(f"{name:13s} {batch / seconds:9.2f} clips/s  ({seconds * 1000:.1f} ms per batch of {batch})", flush=True)
    total = sum(batch / results[f"{n}_clips_per_s"] for n in ("clip", "sync", "text", "codec_encode"))
    results["all_encoders_clips_per_s"] = round(batch / total, 2)
    print(f"{'all':13s} {batch / total:9.2f} clips/s of 8 s (frozen front end, bf16 autocast)", flush=True)

    # FlowModule on this device: bf16 training loss, deterministic generate close to fp32.
    network = MMDiT(hidden_dim=64, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=clip.dim, sync_dim=sync.dim,
                    text_dim=text.dim, sync_rate=sync.token_rate)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    flow_module = FlowModule(network=network, flow=FlowMatching(), codec=codec, clip_encoder=clip,
                             sync_encoder=sync, text_encoder=text).to(device)
    small = min(2, batch)
    batch_dict = {
        "audio_mono": audio[:small, : SR * 2], "audio_mask": torch.ones(small, SR * 2, dtype=torch.bool, device=device),
        "clip_frames": clip_frames[:small, :16], "sync_frames": sync_frames[:small, :50], "caption": captions[:small],
        "seconds_start": torch.zeros(small, device=device), "seconds_total": torch.full((small,), 2.0, device=device),
    }
    with autocast:
        loss = flow_module.loss(batch_dict)
    loss.backward()
    results["bf16_loss_finite"] = bool(torch.isfinite(loss).item())
    grads = [p.grad for p in flow_module.network.parameters() if p.grad is not None]
    results["bf16_grads_finite"] = all(bool(torch.isfinite(g).all()) for g in grads) and len(grads) > 0
    first = flow_module.generate(batch_dict, steps=4, seed=5)
    again = flow_module.generate(batch_dict, steps=4, seed=5)
    with autocast:
        mixed = flow_module.generate(batch_dict, steps=4, seed=5)
    results["generate_deterministic"] = bool(torch.equal(first, again))
    results["generate_bf16_vs_fp32_max_abs"] = float((mixed.float() - first).abs().max())
    results["generate_shape"] = str(tuple(first.shape))

    # Training step of the small generator (hidden 448, 4 + 8 blocks) on 8 s clips:
    # frozen encoders run online vs precomputed features (what `foley extract` buys).
    network = MMDiT(clip_dim=clip.dim, sync_dim=sync.dim, text_dim=text.dim, sync_rate=sync.token_rate)
    if args.tiny:
        network = MMDiT(hidden_dim=64, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=clip.dim,
                        sync_dim=sync.dim, text_dim=text.dim, sync_rate=sync.token_rate)
    trainer_module = FlowModule(network=network, flow=FlowMatching(), codec=codec, clip_encoder=clip,
                                sync_encoder=sync, text_encoder=text, ema_decay=0.0).to(device)
    optimizer = torch.optim.AdamW(trainer_module.network.parameters(), lr=1e-4, betas=(0.9, 0.95))
    online = {"audio_mono": audio, "audio_mask": torch.ones_like(audio, dtype=torch.bool),
              "clip_frames": clip_frames, "sync_frames": sync_frames, "caption": captions,
              "seconds_start": torch.zeros(batch, device=device), "seconds_total": torch.full((batch,), SECONDS, device=device)}
    with torch.no_grad(), autocast:
        latent, _ = trainer_module.encode_latents(online)
        conditions = trainer_module.encode_conditions(online)
    offline = {k: v for k, v in online.items() if k not in ("clip_frames", "sync_frames", "caption")}
    offline["latent"] = latent
    for name in ("clip", "sync", "text"):
        offline[f"{name}_features"] = conditions[name]
        offline[f"{name}_features_mask"] = conditions[f"{name}_mask"]

    def step(data: dict) -> None:
        with autocast:
            loss = trainer_module.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for label, data in (("train_online_encoders", online), ("train_precomputed", offline)):
        seconds = timed(lambda: step(data), device, args.reps)
        results[f"{label}_samples_per_s"] = round(batch / seconds, 2)
        print(f"{label:22s} {batch / seconds:8.2f} samples/s (batch {batch} x 8 s)", flush=True)
    print(json.dumps(results, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
