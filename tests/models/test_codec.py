"""Codec contract (docs/architecture.md §3): lengths, latent statistics, bad input, persistence."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import torchaudio.functional as AF

from foley.models.bigvgan import BigVGAN
from foley.models.codec import Codec
from foley.models.mel_vae import MelVAE

SR = 44100


pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny_codec() -> Codec:
    vae = MelVAE(latent_channels=8, hidden_channels=16, encoder_layers=4, decoder_layers=4)
    vocoder = BigVGAN(
        upsample_rates=[8, 4, 4, 4],
        upsample_kernel_sizes=[16, 8, 8, 8],
        upsample_initial_channel=32,
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]],
    )
    return Codec(vae, vocoder).eval()


@pytest.fixture(scope="module")
def codec() -> Codec:
    torch.manual_seed(0)
    return _tiny_codec()


def _tone(seconds: float, freq: float = 440.0, amplitude: float = 0.3) -> torch.Tensor:
    t = torch.arange(round(seconds * SR)) / SR
    return amplitude * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize("seconds", [0.3, 1.0, 7.77])
@torch.no_grad()
def test_round_trip_keeps_length(codec: Codec, seconds: float) -> None:
    wave = _tone(seconds).unsqueeze(0)
    n = wave.shape[-1]
    latent = codec.encode(wave)
    assert latent.shape == (1, 8, math.ceil(n / 1024))
    assert codec.decode_mel(latent).shape == (1, 128, 2 * latent.shape[-1])
    out = codec.decode(latent, n)
    assert out.shape == (1, n)
    assert torch.isfinite(out).all()


def test_geometry(codec: Codec) -> None:
    assert codec.samples_per_latent == 1024
    assert math.isclose(codec.latent_rate, 44100 / 1024)
    assert codec.num_latents(1) == 1 and codec.num_latents(1024) == 1 and codec.num_latents(1025) == 2
    assert codec.vocode(torch.zeros(1, 128, 3)).shape == (1, 3 * 512)
    assert codec.mel(torch.zeros(1, 2048)).shape == (1, 128, 4)


@torch.no_grad()
def test_decode_rejects_lengths_beyond_the_latent(codec: Codec) -> None:
    with pytest.raises(ValueError, match="outside"):
        codec.decode(torch.zeros(1, 8, 2), 2049)
    with pytest.raises(ValueError, match=r"\(B, 8, T\)"):
        codec.decode(torch.zeros(1, 7, 2), 100)


@torch.no_grad()
def test_latent_statistics_normalise_and_invert() -> None:
    codec = _tiny_codec()
    wave = _tone(0.5).unsqueeze(0)
    raw = codec.encode(wave, normalize=False)
    codec.latent_mean.copy_(torch.linspace(-1, 1, 8))
    codec.latent_std.copy_(torch.linspace(0.5, 2, 8))
    normalised = codec.encode(wave)
    expected = (raw - codec.latent_mean.view(1, -1, 1)) / codec.latent_std.view(1, -1, 1)
    torch.testing.assert_close(normalised, expected)
    torch.testing.assert_close(codec.decode_mel(normalised), codec.vae.decode(raw), atol=1e-5, rtol=1e-5)


def test_exact_running_statistics_match_the_pooled_ones() -> None:
    codec = _tiny_codec()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 8, t, generator=gen) * torch.arange(1, 9).view(1, -1, 1) + 3 for t in (5, 9, 4)]
    masks = [torch.rand(2, b.shape[-1], generator=gen) > 0.3 for b in batches]
    for latent, mask in zip(batches, masks):
        codec.update_latent_stats(latent, mask, momentum=None)
    pooled = torch.cat([b.transpose(1, 2)[m] for b, m in zip(batches, masks)])
    torch.testing.assert_close(codec.latent_mean, pooled.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codec.latent_std, pooled.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
    assert int(codec.latent_stats_count) == pooled.shape[0]


@torch.no_grad()
def test_stereo_is_mixed_down(codec: Codec) -> None:
    left, right = _tone(0.4, 300), _tone(0.4, 900, 0.1)
    stereo = torch.stack([left, right]).unsqueeze(0)
    torch.testing.assert_close(codec.encode(stereo), codec.encode((left + right).unsqueeze(0) / 2))


@torch.no_grad()
def test_other_sample_rates_are_resampled(codec: Codec) -> None:
    wave_22k = _tone(0.5, 440)[::2].clone()
    latent = codec.encode(wave_22k.unsqueeze(0), sample_rate=22050)
    resampled = AF.resample(wave_22k.unsqueeze(0), 22050, SR)
    assert latent.shape[-1] == math.ceil(resampled.shape[-1] / 1024)
    torch.testing.assert_close(latent, codec.encode(resampled))


@torch.no_grad()
def test_non_finite_input_is_a_clear_error(codec: Codec) -> None:
    wave = _tone(0.2).unsqueeze(0)
    wave[0, 100] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        codec.encode(wave)
    wave[0, 100] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        codec.encode(wave)


@torch.no_grad()
def test_over_range_input_is_clamped_with_a_warning(codec: Codec, caplog: pytest.LogCaptureFixture) -> None:
    loud = _tone(0.3, amplitude=2.5).unsqueeze(0)
    with caplog.at_level(logging.WARNING, logger="foley.models.codec"):
        latent = codec.encode(loud)
    assert "clamping" in caplog.text
    torch.testing.assert_close(latent, codec.encode(loud.clamp(-1, 1)))


@torch.no_grad()
def test_silence_and_clipped_audio_stay_finite(codec: Codec) -> None:
    for wave in (torch.zeros(1, 5000), torch.sign(_tone(0.3)).unsqueeze(0)):
        out = codec.decode(codec.encode(wave), wave.shape[-1])
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("suffix", ["", ".safetensors", ".pt"])
@torch.no_grad()
def test_save_and_from_checkpoint_rebuild_the_same_codec(tmp_path: Path, suffix: str) -> None:
    codec = _tiny_codec()
    codec.latent_mean.fill_(0.25)
    path = tmp_path / f"codec{suffix}"
    codec.save(path)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file
    rebuilt = Codec.from_checkpoint(path)
    wave = _tone(0.2).unsqueeze(0)
    torch.testing.assert_close(rebuilt(wave), codec(wave))
    assert rebuilt.init_config() == codec.init_config()
    if not suffix:  # a folder: the codec component exactly as a model folder holds it
        assert sorted(p.name for p in path.iterdir()) == ["codec.json", "codec.safetensors"]


def test_from_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Codec.from_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ValueError, match=r"empty_folder.*no codec\.json"):
        Codec.from_checkpoint(tmp_path / "empty_folder")
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, bare)
    with pytest.raises(ValueError, match="architecture"):
        Codec.from_checkpoint(bare)


@torch.no_grad()
def test_fit_latent_stats_standardises_the_data_set() -> None:
    codec = _tiny_codec()
    batches = [
        {"audio_mono": torch.stack([_tone(0.5, f), _tone(0.5, 2 * f, 0.1)]), "audio_mask": torch.ones(2, 22050, dtype=torch.bool)}
        for f in (220.0, 660.0, 1500.0)
    ]
    frames = codec.fit_latent_stats(batches)
    assert frames == 3 * 2 * math.ceil(22050 / 1024)
    latents = torch.cat([codec.encode(b["audio_mono"]) for b in batches]).transpose(1, 2).reshape(-1, 8)
    torch.testing.assert_close(latents.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(latents.std(0, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
