"""The log-mel front end against an independent NumPy implementation of BigVGAN-v2's recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foley.models.mel import LogMelSpectrogram, num_mel_frames


pytestmark = pytest.mark.usefixtures("single_thread")



def _hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(freq >= min_log_hz, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def _slaney_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters equally spaced on the Slaney mel scale, area-normalised (librosa's defaults)."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sr / 2), n_mels + 2)
    hz_points = _mel_to_hz_slaney(mel_points)
    weights = np.zeros((n_mels, fft_freqs.size))
    for m in range(n_mels):
        lower = (fft_freqs - hz_points[m]) / (hz_points[m + 1] - hz_points[m])
        upper = (hz_points[m + 2] - fft_freqs) / (hz_points[m + 2] - hz_points[m + 1])
        weights[m] = np.maximum(0, np.minimum(lower, upper)) * 2.0 / (hz_points[m + 2] - hz_points[m])
    return weights


def _reference_log_mel(wave: np.ndarray, sr: int = 44100, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    pad = (n_fft - hop) // 2
    padded = np.pad(wave, (pad, pad), mode="reflect")
    frames = 1 + (padded.size - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spec = np.stack([np.fft.rfft(padded[i * hop : i * hop + n_fft] * window) for i in range(frames)], axis=1)
    magnitude = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    mel = _slaney_filterbank(sr, n_fft, 128) @ magnitude
    return np.log(np.maximum(mel, 1e-5))


@pytest.fixture(scope="module")
def front_end() -> LogMelSpectrogram:
    return LogMelSpectrogram()


def test_matches_numpy_reference(front_end: LogMelSpectrogram) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(12345) / 44100
    wave = 0.4 * np.sin(2 * np.pi * 523.25 * t) + 0.05 * rng.standard_normal(t.size)
    expected = _reference_log_mel(wave)
    actual = front_end(torch.from_numpy(wave).float().unsqueeze(0))[0].double().numpy()
    assert actual.shape == expected.shape == (128, 12345 // 512)
    # Float32 STFT (and float32 input) vs float64 reference. Each bin's magnitude is off by
    # about delta = sqrt(n_fft) * eps32 * ||x w||_2 at most (probabilistic bound), a mel band
    # by delta * (its filter's sum), and its log by that over the band's value: largest where
    # the mel is smallest. The 0.05 noise keeps every band >= 0.013, far above the 1e-5 clamp,
    # so the bound is 1.7e-4 (measured error 1e-5); a 0.1 % gain error (1e-3) still fails.
    n_fft, hop = 2048, 512
    padded = np.pad(wave, (n_fft - hop) // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frame_l2 = max(np.linalg.norm(padded[i : i + n_fft] * window) for i in range(0, padded.size - n_fft + 1, hop))
    delta = math.sqrt(n_fft) * np.finfo(np.float32).eps * frame_l2
    bound = delta * _slaney_filterbank(44100, n_fft, 128).sum(axis=1).max() / np.exp(expected).min()
    assert bound < 5e-4
    np.testing.assert_allclose(actual, expected, atol=bound, rtol=0)


@pytest.mark.parametrize("num_samples", [769, 1024, 13230, 44100, 44101])
def test_one_frame_per_hop(front_end: LogMelSpectrogram, num_samples: int) -> None:
    mel = front_end(torch.zeros(2, num_samples))
    assert mel.shape == (2, 128, num_mel_frames(num_samples)) == (2, 128, num_samples // 512)


def test_silence_hits_the_log_floor(front_end: LogMelSpectrogram) -> None:
    mel = front_end(torch.zeros(1, 4096))
    torch.testing.assert_close(mel, torch.full_like(mel, math.log(1e-5)))


def test_sine_energy_lands_in_its_mel_band(front_end: LogMelSpectrogram) -> None:
    freq = 3000.0
    t = torch.arange(8192) / 44100
    mel = front_end(0.5 * torch.sin(2 * math.pi * freq * t).unsqueeze(0))
    # Filter with the largest weight at the FFT bin nearest 3 kHz.
    bin_index = round(freq / (44100 / 2048))
    expected_band = int(front_end.mel_basis[:, bin_index].argmax())
    assert int(mel[0, :, 4].argmax()) == expected_band


def test_too_short_input_is_a_clear_error(front_end: LogMelSpectrogram) -> None:
    with pytest.raises(ValueError, match="too short"):
        front_end(torch.zeros(1, 700))
