"""The training-free vocoder inverts the foley mel front end: timing, level and length."""
from __future__ import annotations

import math

import torch

from foley.models.griffin_lim import GriffinLimVocoder
from foley.models.mel import LogMelSpectrogram

SR = 44100


def _bursts(onsets: list[float], seconds: float = 1.0) -> torch.Tensor:
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    wave = torch.zeros(n)
    gen = torch.Generator().manual_seed(0)
    for onset in onsets:
        start = round(onset * SR)
        decay = torch.exp(-(t[start:] - onset) * 40)
        wave[start:] += 0.5 * decay * torch.randn(n - start, generator=gen)
    return wave


def _envelope_db(wave: torch.Tensor, hop: int = 256) -> torch.Tensor:
    frames = wave[: wave.numel() // hop * hop].reshape(-1, hop)
    return 10 * torch.log10(frames.pow(2).mean(-1) + 1e-10)


def test_round_trip_keeps_length_level_and_onset_times():
    mel = LogMelSpectrogram()
    vocoder = GriffinLimVocoder()
    onsets = [0.2, 0.55, 0.8]
    wave = _bursts(onsets)
    out = vocoder(mel(wave[None]))[0, 0]
    assert out.shape[-1] == wave.shape[-1] // 512 * 512
    ref_env, out_env = _envelope_db(wave), _envelope_db(out)
    for onset in onsets:
        frame = round(onset * SR / 256)
        before, after = out_env[frame - 4], out_env[frame + 3]
        assert after - before > 15, f"no onset at {onset}s in the vocoded audio"
    # Frame-level loudness follows the input (correlation of the dB envelopes).
    n = min(ref_env.numel(), out_env.numel())
    corr = torch.corrcoef(torch.stack([ref_env[:n], out_env[:n]]))[0, 1]
    assert corr > 0.8
    rms_ratio = out.pow(2).mean().sqrt() / wave[: out.numel()].pow(2).mean().sqrt()
    assert 0.5 < rms_ratio < 2.0


def test_spectral_content_is_recovered():
    mel = LogMelSpectrogram()
    vocoder = GriffinLimVocoder(n_iter=48)
    t = torch.arange(SR) / SR
    wave = 0.3 * torch.sin(2 * math.pi * 1000 * t)
    out = vocoder(mel(wave[None]))[0, 0]
    spectrum = torch.fft.rfft(out[4096:-4096]).abs()
    peak_hz = spectrum.argmax().item() * SR / (out.numel() - 8192)
    assert abs(peak_hz - 1000) < 10
    # Re-analysing the output gives back the input mel closely where there is energy.
    assert (mel(out[None]) - mel(wave[None][:, : out.numel()]))[..., 4:-4].abs().mean() < 0.5


def test_deterministic_and_batched():
    vocoder = GriffinLimVocoder(n_iter=4)
    log_mel = torch.randn(2, 128, 20) - 4
    a, b = vocoder(log_mel), vocoder(log_mel)
    assert torch.equal(a, b)
    # Alone or batched, a clip gets the same phase draw; only rounding may differ, e.g. the
    # 128-term mel-inverse GEMM blocked differently for another batch size (~sqrt(128) eps32
    # per magnitude). Griffin-Lim's phase normalisation amplifies that: an eps32 relative
    # change of the magnitudes moves this output by up to 40 eps32 of its peak (measured over
    # random perturbations), so 2 * 40 * sqrt(128) * eps32 * peak = 1.1e-4 * peak bounds it.
    # Another phase draw or mixed-up rows change the output by ~1 * peak.
    tolerance = 2 * 40 * math.sqrt(128) * torch.finfo(torch.float32).eps * float(a.abs().max())
    torch.testing.assert_close(vocoder(log_mel[1:]), a[1:], rtol=0, atol=tolerance)
