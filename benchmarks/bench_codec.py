"""Stage-1 codec benchmark: speed of the paper-scale codec, quality of a briefly trained small one.

1. Real-time factor (processing seconds per audio second) of ``encode`` + ``decode`` for
   ``--rtf-seconds`` of audio with the paper-scale codec (32-layer Mel-VAE, 40-channel
   latent, 122 M-parameter BigVGAN-v2 vocoder), random weights (speed does not depend on them).
2. Reconstruction quality on held-out synthetic-world clips of a small codec trained on CPU
   for ``--train-minutes`` (or ``--train-steps``): multi-resolution STFT distance, log-mel L1
   (128-band front end, natural-log units), SI-SDR; for the untrained and the trained codec,
   for the full codec (wave → latent → mel → wave) and for the vocoder alone (copy synthesis).

Usage:
    python benchmarks/bench_codec.py                      # both parts, ~5 min on 2 CPU cores
    python benchmarks/bench_codec.py --skip-quality --rtf-seconds 10
    python benchmarks/bench_codec.py --skip-rtf --train-minutes 1 --device cpu

On a busy shared CPU pass ``--threads 1`` for the small-codec training: its tiny convolutions
run many times slower when two threads compete with other jobs.
"""

from __future__ import annotations

import argparse
import math
import time

import lightning as L
import numpy as np
import torch

from foley.models.bigvgan import BigVGAN
from foley.models.codec import Codec
from foley.models.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from foley.models.mel_vae import MelVAE
from foley.stages.codec_losses import MultiResolutionSTFTLoss
from foley.stages.codec_module import CodecModule

SR = 44100


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB per row of ``(B, N)``, zero-mean signals."""
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / reference.pow(2).sum(-1, keepdim=True).clamp_min(1e-8)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10(target.pow(2).sum(-1).clamp_min(1e-8) / noise.pow(2).sum(-1).clamp_min(1e-8))


def synthetic_clips(count: int, seconds: float, seed: int, first_index: int, render_seconds: float = 4.0) -> torch.Tensor:
    """``count`` mono clips ``(count, N)``: consecutive pieces of rendered synthetic-world scenes."""
    pieces_per_scene = max(1, int(render_seconds // seconds))
    piece = round(seconds * SR)
    try:
        from foley.synth.world import render_clip

        scenes = [
            render_clip(first_index + i, seed, seconds=max(render_seconds, seconds), size=16).audio.mean(0)
            for i in range(math.ceil(count / pieces_per_scene))
        ]
    except ImportError:  # synthetic world not installed: decaying tones
        rng = np.random.default_rng(seed + first_index)
        t = np.arange(round(max(render_seconds, seconds) * SR)) / SR
        scenes = [0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * np.exp(-4 * (t % 0.4))
                  for _ in range(math.ceil(count / pieces_per_scene))]
    clips = [scene[k * piece : (k + 1) * piece] for scene in scenes for k in range(pieces_per_scene)]
    return torch.from_numpy(np.stack(clips[:count])).float()


def paper_codec() -> Codec:
    return Codec(MelVAE(), BigVGAN())


def small_codec(hidden: int, layers: int, vocoder_channels: int) -> Codec:
    vae = MelVAE(latent_channels=40, hidden_channels=hidden, encoder_layers=layers, decoder_layers=layers)
    vocoder = BigVGAN(
        upsample_rates=[8, 4, 4, 4],
        upsample_kernel_sizes=[16, 8, 8, 8],
        upsample_initial_channel=vocoder_channels,
        resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3], [1, 3]],
    )
    return Codec(vae, vocoder)


@torch.no_grad()
def bench_rtf(seconds: float, device: torch.device, repeats: int) -> None:
    codec = paper_codec().to(device).eval()
    params = sum(p.numel() for p in codec.parameters())
    vae_params = sum(p.numel() for p in codec.vae.parameters())
    wave = 0.1 * torch.randn(1, round(seconds * SR), device=device)
    codec.decode(codec.encode(wave[:, : SR // 2]), SR // 2)  # warm-up
    encode_times, decode_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        latent = codec.encode(wave)
        if device.type == "cuda":
            torch.cuda.synchronize()
        middle = time.perf_counter()
        codec.decode(latent, wave.shape[-1])
        if device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        encode_times.append(middle - start)
        decode_times.append(end - middle)
    enc, dec = min(encode_times), min(decode_times)
    print(f"[rtf] paper-scale codec: {params / 1e6:.1f} M params (Mel-VAE {vae_params / 1e6:.1f} M), device={device}, "
          f"threads={torch.get_num_threads()}, audio={seconds:.1f} s, latent {tuple(latent.shape)}")
    print(f"[rtf] encode {enc * 1e3:.1f} ms (RTF {enc / seconds:.4f}), decode {dec * 1e3:.1f} ms (RTF {dec / seconds:.4f}), "
          f"encode+decode RTF {(enc + dec) / seconds:.4f}  (best of {repeats})")


@torch.no_grad()
def evaluate(codec: Codec, clips: torch.Tensor, device: torch.device, silence_rms: float = 1e-3) -> dict[str, float]:
    """Mean metrics over held-out clips.

    Log-mel L1 uses every clip. The STFT distance (spectral convergence divides by the
    target's energy) and SI-SDR (undefined for a silent reference) use only clips whose
    RMS exceeds ``silence_rms``; the synthetic world has silent stretches.
    """
    codec.eval()
    stft = MultiResolutionSTFTLoss().to(device)
    rows: dict[str, list[float]] = {k: [] for k in ("codec_stft", "codec_mel_l1", "codec_si_sdr", "vae_mel_l1",
                                                    "vocoder_stft", "vocoder_mel_l1", "vocoder_si_sdr")}
    for wave in clips.to(device).split(2):
        n = wave.shape[-1]
        audible = wave.pow(2).mean(-1).sqrt() > silence_rms
        mel = codec.mel(codec.pad_to_latent_grid(wave))
        latent = codec.encode(wave)
        recon = codec.decode(latent, n)
        copy = codec.vocode(mel)[..., :n]
        rows["vae_mel_l1"].append(float((codec.decode_mel(latent) - mel).abs().mean()))
        for prefix, out in (("codec", recon), ("vocoder", copy)):
            out_mel = codec.mel(codec.pad_to_latent_grid(out))
            rows[f"{prefix}_mel_l1"].append(float((out_mel - mel).abs().mean()))
            for index in torch.nonzero(audible).flatten().tolist():
                rows[f"{prefix}_stft"].append(float(stft(out[index : index + 1], wave[index : index + 1])))
                rows[f"{prefix}_si_sdr"].append(float(si_sdr(out[index : index + 1], wave[index : index + 1])[0]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in rows.items()}


def bench_quality(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    if args.clips_file:
        # Pre-rendered clips (see --save-clips): same data on machines without the video stack.
        stored = np.load(args.clips_file)
        train, held_out = torch.from_numpy(stored["train"]), torch.from_numpy(stored["held_out"])
    else:
        train = synthetic_clips(args.train_clips, args.clip_seconds, seed=0, first_index=0)
        held_out = synthetic_clips(args.eval_clips, args.clip_seconds, seed=1, first_index=10_000)
    if args.save_clips:
        np.savez(args.save_clips, train=train.numpy(), held_out=held_out.numpy())
    codec = small_codec(args.hidden, args.layers, args.vocoder_channels)
    module = CodecModule(
        codec,
        MultiPeriodDiscriminator(periods=[2, 3, 5, 7, 11], channels=[16, 32, 64, 128, 128]),
        MultiResolutionDiscriminator(channels=16),
        generator_optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, betas=(0.8, 0.99)),
        discriminator_optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, betas=(0.8, 0.99)),
        kl_margin=0.05,
        kl_weight=1e-2,
        gan_start_step=args.gan_start_step,
        vocoder_segment_frames=32,
    )
    before = evaluate(codec.to(device), held_out, device)

    class _RandomClips(torch.utils.data.IterableDataset):
        """Endless random draws from the training clips; the run stops on time or steps."""

        def __iter__(self):
            gen = torch.Generator().manual_seed(0)
            while True:
                wave = train[int(torch.randint(0, train.shape[0], (), generator=gen))]
                yield {"audio_mono": wave, "audio_mask": torch.ones_like(wave, dtype=torch.bool)}

    loader = torch.utils.data.DataLoader(_RandomClips(), batch_size=args.batch_size)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        # Lightning counts discriminator and generator updates: two steps per batch once the GAN is on.
        max_steps=2 * args.train_steps,
        max_time={"seconds": 60 * args.train_minutes},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    steps = int(module.generator_steps)
    elapsed = time.perf_counter() - start
    after = evaluate(module.codec.to(device), held_out, device)
    print(f"[quality] small codec: {sum(p.numel() for p in codec.parameters()) / 1e6:.2f} M params, "
          f"trained {steps} steps in {elapsed:.0f} s on {device} (batch {args.batch_size} x {args.clip_seconds} s, "
          f"{train.shape[0]} train clips), held-out {held_out.shape[0]} synthetic-world clips "
          f"({int((held_out.pow(2).mean(-1).sqrt() > 1e-3).sum())} audible, used for stft/si_sdr)")
    print(f"[quality] {'metric':<16}{'untrained':>12}{'trained':>12}")
    for key in before:
        print(f"[quality] {key:<16}{before[key]:>12.3f}{after[key]:>12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--rtf-seconds", type=float, default=10.0)
    parser.add_argument("--rtf-repeats", type=int, default=1)
    parser.add_argument("--skip-rtf", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--train-steps", type=int, default=100_000)
    parser.add_argument("--train-clips", type=int, default=32)
    parser.add_argument("--eval-clips", type=int, default=8)
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    parser.add_argument("--clips-file", default=None, help="read train/held-out clips from this .npz")
    parser.add_argument("--save-clips", default=None, help="also write the clips used to this .npz")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocoder-channels", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gan-start-step", type=int, default=200)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.skip_rtf:
        bench_rtf(args.rtf_seconds, device, args.rtf_repeats)
    if not args.skip_quality:
        bench_quality(args, device)


if __name__ == "__main__":
    main()
