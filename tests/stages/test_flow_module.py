from __future__ import annotations

import copy
import math

import pytest
import torch

from foley.encoders import ClipEncoder, SynchformerEncoder, TextEncoder
from foley.flow import FlowMatching
from foley.models.mmdit import MMDiT
from foley.stages.flow_module import FlowModule

from helpers.stage2_parts import save_tiny_codec, tiny_codec

SR = 44100
CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
SYNC_ARGS = dict(crop_size=32, patch_size=16, dim=32, depth=1, num_heads=2)
T5_CONFIG = {"vocab_size": 384, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}


def tiny_network() -> MMDiT:
    network = MMDiT(latent_dim=4, hidden_dim=32, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=16,
                    sync_dim=32, text_dim=32, clip_rate=8.0, sync_rate=25.0, max_text_tokens=16)
    # Zero-initialised output layers would make every condition give the same velocity;
    # perturb all weights so the conditions visibly matter.
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network


@pytest.fixture(scope="module")
def parts() -> dict:
    torch.manual_seed(0)
    return {
        "codec": tiny_codec(),
        "clip": ClipEncoder(model_config=CLIP_CONFIG),
        "sync": SynchformerEncoder(**SYNC_ARGS),
        "text": TextEncoder(model_config=T5_CONFIG, max_length=16),
        "network": tiny_network(),
    }


def make_module(parts: dict, encoders: bool = True, **kwargs) -> FlowModule:
    torch.manual_seed(1)
    return FlowModule(
        network=copy.deepcopy(parts["network"]),
        flow=FlowMatching(),
        codec=parts["codec"],
        clip_encoder=parts["clip"] if encoders else None,
        sync_encoder=parts["sync"] if encoders else None,
        text_encoder=parts["text"] if encoders else None,
        **kwargs,
    )


def make_batch(durations=(0.5, 0.37), captions=("knock knock", "")) -> dict:
    g = torch.Generator().manual_seed(3)
    counts = [round(d * SR) for d in durations]
    n = max(counts)
    t = torch.arange(n) / SR
    audio = torch.zeros(len(durations), 2, n)
    mask = torch.zeros(len(durations), n, dtype=torch.bool)
    for i, c in enumerate(counts):
        burst = torch.sin(2 * math.pi * (300 + 200 * i) * t[:c]) * torch.exp(-20 * t[:c])
        audio[i, :, :c] = 0.5 * burst
        mask[i, :c] = True
    clip_counts = [math.floor(d * 8 + 1e-6) for d in durations]
    sync_counts = [math.floor(d * 25 + 1e-6) for d in durations]
    return {
        "audio": audio,
        "audio_mono": audio.mean(1),
        "audio_mask": mask,
        "clip_frames": torch.randint(0, 256, (len(durations), max(clip_counts), 3, 32, 32), generator=g, dtype=torch.uint8),
        "clip_mask": torch.arange(max(clip_counts))[None] < torch.tensor(clip_counts)[:, None],
        "sync_frames": torch.randint(0, 256, (len(durations), max(sync_counts), 3, 32, 32), generator=g, dtype=torch.uint8),
        "sync_mask": torch.arange(max(sync_counts))[None] < torch.tensor(sync_counts)[:, None],
        "caption": list(captions),
        "seconds_start": torch.zeros(len(durations)),
        "seconds_total": torch.tensor(durations, dtype=torch.float32),
        "key": [f"k{i}" for i in range(len(durations))],
        "meta": [{} for _ in durations],
    }


def precompute(module: FlowModule, batch: dict) -> dict:
    """The batch as feature shards deliver it: latents and features instead of audio/frames."""
    latent, _ = module.encode_latents(batch)
    conditions = module.encode_conditions(batch)
    out = {k: v for k, v in batch.items() if k not in ("audio", "audio_mono", "clip_frames", "sync_frames", "caption")}
    out["latent"] = latent
    for name in ("clip", "sync", "text"):
        out[f"{name}_features"] = conditions[name]
        out[f"{name}_features_mask"] = conditions[f"{name}_mask"]
    return out


def seeded_loss(module: FlowModule, batch: dict, seed: int, **kwargs) -> torch.Tensor:
    return module.loss(batch, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_latents_and_mask_follow_the_audio(parts):
    module = make_module(parts)
    batch = make_batch()
    latent, mask = module.encode_latents(batch)
    assert latent.shape == (2, math.ceil(22050 / 1024), 4)
    assert mask.sum(1).tolist() == [math.ceil(22050 / 1024), math.ceil(16317 / 1024)]
    alone = parts["codec"].encode(batch["audio_mono"][:1, :22050]).transpose(1, 2)
    torch.testing.assert_close(latent[:1], alone, atol=1e-5, rtol=1e-5)


def test_latent_targets_stay_fp32_under_bf16_autocast(parts):
    module = make_module(parts)
    batch = make_batch()
    reference, _ = module.encode_latents(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = module.encode_latents(batch)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=0, atol=0)


def test_empty_caption_and_missing_frames_drop_to_placeholders(parts):
    module = make_module(parts)
    conditions = module.encode_conditions(make_batch())
    flags = module.drop_flags(conditions)
    assert flags["drop_text"].tolist() == [False, True]
    assert flags["drop_clip"].tolist() == [False, False]
    assert conditions["clip"].shape == (2, 4, 16) and conditions["sync"].shape == (2, 8, 32)
    absent = make_module(parts, encoders=False).encode_conditions(make_batch())
    assert all(v is None for v in absent.values())
    too_short = module.encode_conditions(make_batch(durations=(0.1, 0.05)))  # no CLIP frame at 8 fps
    assert too_short["clip"] is None and too_short["sync"] is not None


def test_full_condition_dropout_equals_absent_modalities(parts):
    module = make_module(parts, cond_dropout=1.0)
    absent = make_module(parts, encoders=False)
    absent.network.load_state_dict(module.network.state_dict())
    batch = make_batch()
    dropped = seeded_loss(module, batch, 5)
    torch.testing.assert_close(dropped, seeded_loss(absent, batch, 5), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(seeded_loss(module, batch, 5, dropout=0.0), dropped)


def test_training_reduces_the_loss_on_a_fixed_batch(parts):
    module = make_module(parts)
    batch = precompute(module, make_batch())
    evaluate = lambda: torch.stack([seeded_loss(module, batch, s, dropout=0.0) for s in range(3)]).mean()  # noqa: E731
    with torch.no_grad():
        before = evaluate()
    optimizer = torch.optim.AdamW(module.network.parameters(), lr=1e-2)
    for step in range(24):  # 12 steps left the outcome at the mercy of the initial draw
        loss = seeded_loss(module, batch, step % 3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = evaluate()
    assert after < 0.7 * before, (before, after)
    assert all(p.grad is None for name in ("clip_encoder", "sync_encoder", "text_encoder", "codec")
               for p in getattr(module, name).parameters())


def test_generate_is_deterministic_and_exactly_as_long_as_the_clip(parts):
    module = make_module(parts)
    batch = precompute(module, make_batch(durations=(0.1713, 0.1)))
    first = module.generate(batch, steps=2, cfg=2.0, seed=11)
    assert first.shape == (2, 1, round(0.1713 * SR))
    assert (first[1, 0, round(0.1 * SR):] == 0).all()
    assert first[1, 0, : round(0.1 * SR)].abs().max() > 0
    assert first.abs().max() <= 1.0
    torch.testing.assert_close(module.generate(batch, steps=2, cfg=2.0, seed=11), first, rtol=0, atol=0)
    # Another seed gives other audio.
    other = module.generate(batch, steps=2, cfg=2.0, seed=12)
    assert other.shape == first.shape and not torch.equal(other, first)


def test_generate_is_the_vocoded_generated_mel_and_takes_noise_and_known_latents(parts):
    module = make_module(parts)
    batch = precompute(module, make_batch(durations=(0.1713, 0.1)))
    n, length = round(0.1713 * SR), math.ceil(round(0.1713 * SR) / 1024)
    wave = module.generate(batch, steps=2, cfg=2.0, seed=11)
    latent = module.generate_latents(batch, steps=2, cfg=2.0, seed=11)
    assert latent.shape == (2, length, 4)
    mel = module.generate_mel(batch, steps=2, cfg=2.0, seed=11)
    assert mel.shape == (2, 16, 2 * length)
    torch.testing.assert_close(mel, parts["codec"].decode_mel(latent.transpose(1, 2)), rtol=0, atol=0)
    # generate = the codec's vocoder on that mel, cut to the clip and zero after each duration.
    expected = parts["codec"].vocode(mel)[:, :n].clamp(-1, 1)
    expected[1, round(0.1 * SR):] = 0
    torch.testing.assert_close(wave[:, 0], expected, rtol=0, atol=0)
    # Explicit noise equal to the seeded draw gives the same latents.
    noise = torch.randn(2, length, 4, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(module.generate_latents(batch, steps=2, cfg=2.0, noise=noise), latent, rtol=0, atol=0)
    # Inpainting: the known frames come back exactly, the others still depend on the network.
    known = torch.randn(2, length, 4)
    known_mask = torch.arange(length)[None].expand(2, -1) < 3
    inpainted = module.generate_latents(batch, steps=2, cfg=2.0, noise=noise, known=known, known_mask=known_mask)
    torch.testing.assert_close(inpainted[:, :3], known[:, :3], rtol=0, atol=0)
    assert not torch.allclose(inpainted[:, 3:], latent[:, 3:])
    with pytest.raises(ValueError, match="noise has shape"):
        module.generate_latents(batch, steps=1, noise=noise[:, :-1])


def test_negative_prompt_replaces_the_unconditional_branch(parts):
    module = make_module(parts)
    batch = precompute(module, make_batch(durations=(0.13, 0.12)))
    # Compared on the mel: the tiny random vocoder barely depends on its input (waveforms
    # differ by ~1e-7), so a waveform comparison could not tell the branches apart.
    plain = module.generate_mel(batch, steps=2, seed=3)
    negative = module.generate_mel(batch, steps=2, seed=3, negative_prompt="speech")
    assert (plain - negative).abs().max() > 0.1 * plain.abs().max()
    torch.testing.assert_close(module.generate_mel(batch, steps=2, seed=3, negative_prompt=["speech", "speech"]),
                               negative)
    # cfg = 1 ignores the unconditional branch entirely.
    unguided = module.generate_mel(batch, steps=2, cfg=1.0, seed=3, negative_prompt="speech")
    assert (unguided - negative).abs().max() > 0.1 * unguided.abs().max()
    torch.testing.assert_close(module.generate_mel(batch, steps=2, cfg=1.0, seed=3), unguided)


def test_precomputed_features_give_the_same_loss_as_online_encoding(parts):
    module = make_module(parts)
    batch = make_batch()
    precomputed = precompute(module, batch)
    torch.testing.assert_close(seeded_loss(module, precomputed, 2), seeded_loss(module, batch, 2))
    precomputed["seconds_start"] = torch.tensor([0.0, 1.5])
    with pytest.raises(ValueError, match="clip_seconds"):
        seeded_loss(module, precomputed, 2)


def test_ema_tracks_the_network(parts):
    module = make_module(parts, ema_decay=0.75, ema_warmup=False)
    start = [p.clone() for p in module.ema_network.parameters()]
    with torch.no_grad():
        for p in module.network.parameters():
            p.add_(1.0)
    module.update_ema(step=0)
    for old, ema in zip(start, module.ema_network.parameters()):
        torch.testing.assert_close(ema, old + 0.25)
    assert module.inference_network is module.ema_network
    assert not any(p.requires_grad for p in module.ema_network.parameters())
    assert make_module(parts, ema_decay=0.0).inference_network is not None


def test_warmup_schedule_and_optimizer_only_see_the_network(parts):
    module = make_module(parts, warmup_steps=4, optimizer=lambda params: torch.optim.AdamW(params, lr=1.0))
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in module.network.parameters())
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_frozen_parts_stay_in_eval_mode(parts):
    module = make_module(parts)
    module.train()
    assert module.network.training
    assert not module.codec.training and not module.clip_encoder.training and not module.ema_network.training


@pytest.fixture(scope="module")
def codec_checkpoint(tmp_path_factory) -> str:
    return save_tiny_codec(tmp_path_factory.mktemp("stage2_codec") / "codec.pt")


def test_cli_smoke_fit_and_checkpoint_round_trip(codec_checkpoint, synth_shards, tmp_path):
    from foley.cli import main

    run_dir = tmp_path / "run"
    main([
        "fit", "--config", "configs/tiny/stage2.yaml",
        f"--model.init_args.codec_checkpoint={codec_checkpoint}",
        f"--data.init_args.train_shards={synth_shards['train']}",
        f"--data.init_args.val_shards={synth_shards['val']}",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={run_dir}",
    ])
    checkpoints = sorted(run_dir.rglob("*.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    checkpoint = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert checkpoint["global_step"] == 2
    assert not any(k.startswith("codec.") for k in state)  # reloaded from its own file
    assert any(k.startswith("ema_network.") for k in state)
    assert any(k.startswith("clip_encoder.") for k in state)  # random tiny encoder: must be kept
    module = FlowModule.load_from_checkpoint(checkpoints[-1], map_location="cpu")
    for key, value in module.state_dict().items():
        if key in state:
            torch.testing.assert_close(value, state[key], msg=key)
