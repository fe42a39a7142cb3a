"""StereoModule: the ILD measure, learning to pan from the video, checkpoints."""
from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from helpers.pipeline_fakes import FakeCodec, panned_batch

from foley.metrics.synthetic import pan_correlation  # noqa: E402
from foley.models.mono2stereo import Mono2Stereo  # noqa: E402
from foley.stages.stereo_module import StereoModule, mel_ild_correlation  # noqa: E402

SR = 16000


def _codec() -> FakeCodec:
    return FakeCodec(sample_rate=SR, hop_length=256, n_mels=32, n_fft=1024)


def _module(lr: float = 3e-3) -> StereoModule:
    net = Mono2Stereo(n_mels=32, hidden=32, layers=2, video_channels=8, video_size=32, video_columns=8)
    return StereoModule(net, codec=_codec(), optimizer=lambda params: torch.optim.AdamW(params, lr=lr))


def test_mel_ild_correlation_on_a_known_trajectory() -> None:
    frames = 50
    source = torch.rand(1, 1, 8, frames) - 3.0
    ild_db = torch.linspace(-12, 12, frames)
    # ILD in dB of power = 20·log10(gL/gR); split it symmetrically in log-magnitude.
    half = ild_db / 20.0 * math.log(10) / 2
    stereo = torch.cat([source + half, source - half], dim=1)
    assert float(mel_ild_correlation(stereo, stereo)[0]) == pytest.approx(1.0, abs=1e-9)
    mirrored = stereo.flip(1)
    assert float(mel_ild_correlation(mirrored, stereo)[0]) == pytest.approx(-1.0, abs=1e-9)
    centred = torch.cat([source, source], dim=1)
    assert math.isnan(float(mel_ild_correlation(centred, stereo)[0]))


def _moving_clips(count: int, seed: int) -> dict:
    """Held-out clips whose source crosses at least half the screen (so the ILD changes clearly)."""
    batch = panned_batch(count * 4, seed=seed, sample_rate=SR)
    ild_span = []
    for i in range(count * 4):
        left, right = batch["audio"][i, 0], batch["audio"][i, 1]
        head, tail = slice(0, SR // 10), slice(-SR // 10, None)
        ild_span.append(abs(float(left[head].pow(2).sum() / right[head].pow(2).sum()).__abs__()
                            - float(left[tail].pow(2).sum() / right[tail].pow(2).sum())))
    keep = torch.tensor(ild_span).argsort(descending=True)[:count]
    return {k: (v[keep] if isinstance(v, torch.Tensor) else [v[int(i)] for i in keep]) for k, v in batch.items()}


def _scores(module: StereoModule, batch: dict) -> tuple[float, float]:
    stereo = module.generate(batch)
    assert stereo.shape == batch["audio"].shape
    pairs = [pan_correlation(stereo[i], batch["audio"][i], SR) for i in range(stereo.shape[0])]
    corr = [0.0 if math.isnan(c) else c for c, _ in pairs]
    return sum(corr) / len(corr), sum(m for _, m in pairs) / len(pairs)


@pytest.mark.slow  # about 30 s alone, minutes on a busy 2-core machine
def test_short_training_learns_to_pan_from_the_video() -> None:
    torch.manual_seed(0)
    module = _module()
    held_out = _moving_clips(4, seed=1000)
    base_corr, base_mae = _scores(module, held_out)
    optimizer = module.configure_optimizers()
    module.train()
    for step in range(100):
        loss, _ = module._pan_loss(panned_batch(4, seed=step, sample_rate=SR))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    corr, mae = _scores(module, held_out)
    # Centred output has no ILD at all: its correlation is undefined (counted as 0).
    assert base_corr == 0.0
    assert corr > 0.8, (corr, mae)
    assert mae < 0.5 * base_mae, (mae, base_mae)


def test_lightning_fit_checkpoint_and_reload(tmp_path: Path) -> None:
    module = _module()
    batches = [panned_batch(2, seed=s, sample_rate=SR) for s in range(3)]
    trainer = pl.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, limit_val_batches=1, num_sanity_val_steps=0, val_check_interval=3,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    path = tmp_path / "stage3.ckpt"
    trainer.save_checkpoint(path)
    reloaded = StereoModule.from_checkpoint(path, codec=_codec())
    for name, value in module.network.state_dict().items():
        torch.testing.assert_close(reloaded.network.state_dict()[name], value)
    batch = batches[0]
    module.eval()
    torch.testing.assert_close(reloaded.generate(batch), module.generate(batch))


def test_codec_is_frozen_and_needs_to_be_given() -> None:
    module = _module()
    module.train()
    assert not module.codec.training
    assert all(not p.requires_grad for p in module.codec.parameters())
    with pytest.raises(ValueError, match="exactly one"):
        StereoModule(Mono2Stereo(n_mels=32, hidden=8, layers=1))


@pytest.mark.parametrize("render", ["vocoder", "stft"])
def test_constant_pan_gives_the_closed_form_level_difference(render: str) -> None:
    module = _module()
    module.render = render
    batch = panned_batch(2, seed=5, sample_rate=SR)
    if render == "stft":
        # Centred (untrained) STFT rendering returns the mono signal itself in both ears.
        centred = module.generate(batch)
        assert torch.equal(centred[:, 0], centred[:, 1])  # exactly: no rounding-level ILD to correlate with
        torch.testing.assert_close(centred[:, 0], batch["audio_mono"], atol=1e-5, rtol=0)
    torch.nn.init.constant_(module.network.head.bias, math.log(0.8 / 0.2))  # p = 0.8 in every bin
    stereo = module.generate(batch)
    power = stereo.pow(2).sum(-1)
    ild = 10 * torch.log10(power[:, 0] / power[:, 1])
    # L = 1.6·M and R = 0.4·M in magnitude: 20·log10(4) = 12.04 dB.
    torch.testing.assert_close(ild, torch.full_like(ild, 20 * math.log10(4.0)), atol=0.3, rtol=0)
    if render == "stft":
        torch.testing.assert_close(stereo.mean(1), batch["audio_mono"], atol=1e-5, rtol=0)


def test_a_given_mono_mel_is_panned_directly_without_re_analysis() -> None:
    from foley.models.mono2stereo import LOG_MEL_FLOOR

    module = _module().eval()  # untrained head: p = 0.5 exactly, so L = R = the mono mel
    n = 3 * 256 + 100  # not a whole number of hops: the mel is cut to ceil(n / hop) = 4 frames
    mel = torch.randn(2, 32, 6) - 4.0  # more frames than needed, like the generator's whole latent frames
    batch = {"mel_mono": mel, "audio_mask": torch.ones(2, n, dtype=torch.bool)}
    stereo = module.generate(batch)
    expected = module.codec.vocode(mel[..., :4].clamp_min(LOG_MEL_FLOOR))[..., :n]
    assert stereo.shape == (2, 2, n)
    torch.testing.assert_close(stereo[:, 0], expected, rtol=0, atol=0)
    torch.testing.assert_close(stereo[:, 1], expected, rtol=0, atol=0)
    # The old route (vocode, re-analyse, pan, vocode again) gives something else.
    resynth = module.generate({"audio_mono": module.codec.vocode(mel[..., :4])[..., :n], "audio_mask": batch["audio_mask"]})
    assert not torch.allclose(resynth, stereo, atol=1e-3)
    # STFT rendering from a mel alone vocodes the mono once; centred, both ears are that signal.
    module.render = "stft"
    centred = module.generate(batch)
    mono = module.codec.vocode(mel[..., :4])[..., :n]
    torch.testing.assert_close(centred[:, 0], mono, atol=1e-5, rtol=0)
    assert torch.equal(centred[:, 0], centred[:, 1])
    with pytest.raises(ValueError, match="frames"):
        module.generate({"mel_mono": mel[..., :3], "audio_mask": torch.ones(2, n, dtype=torch.bool)})
