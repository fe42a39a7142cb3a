"""Log-mel front end matching the public BigVGAN-v2 44 kHz / 128-band vocoder.

The parameters default to that vocoder's training front end (reflect-pad 768 samples,
STFT with ``center=False``, n_fft = win = 2048, hop 512, magnitude
``sqrt(|X|^2 + 1e-9)``, Slaney-normalised Slaney-scale mel filters from 0 Hz to
Nyquist, natural log of the magnitude clamped at 1e-5), so that mels computed here can
be fed to the official MIT-licensed generator weights and vice versa. MMAudio's 44.1 kHz
Mel-VAE uses the same front end and also clamps the waveform to [-1, 1]
(``clamp_waveform=True``).

The filters are computed in float64 and rounded once to float32, as librosa (which those
models were trained with) does; float32 arithmetic would move band sums by up to 2e-5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from foley.configurable import Configurable

__all__ = ["LogMelSpectrogram", "num_mel_frames", "slaney_mel_filterbank"]


def _hz_to_slaney_mel(freq: Tensor) -> Tensor:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    linear_step = 200.0 / 3
    break_mel = 1000.0 / linear_step
    log_step = math.log(6.4) / 27.0
    log_part = break_mel + torch.log(freq.clamp_min(1e-10) / 1000.0) / log_step
    return torch.where(freq >= 1000.0, log_part, freq / linear_step)


def _slaney_mel_to_hz(mel: Tensor) -> Tensor:
    linear_step = 200.0 / 3
    break_mel = 1000.0 / linear_step
    log_step = math.log(6.4) / 27.0
    return torch.where(mel >= break_mel, 1000.0 * torch.exp(log_step * (mel - break_mel)), mel * linear_step)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Area-normalised triangular filters on the Slaney mel scale, ``(n_mels, n_fft // 2 + 1)`` float64.

    The filter definition of librosa's ``filters.mel`` defaults (``htk=False``, ``norm="slaney"``):
    ``n_mels + 2`` edges equally spaced in mel, each filter rising from edge ``m`` to ``m + 1``
    and falling to ``m + 2``, scaled by ``2 / (f[m + 2] - f[m])``.

    Args:
        sample_rate: Audio rate in Hz.
        n_fft: FFT size.
        n_mels: Number of filters.
        f_min: Lowest edge in Hz.
        f_max: Highest edge in Hz.
    """
    fft_freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sample_rate / n_fft)
    mel_edges = torch.linspace(
        float(_hz_to_slaney_mel(torch.tensor(float(f_min), dtype=torch.float64))),
        float(_hz_to_slaney_mel(torch.tensor(float(f_max), dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    edges = _slaney_mel_to_hz(mel_edges)
    widths = edges.diff()
    offsets = edges.unsqueeze(1) - fft_freqs.unsqueeze(0)  # (n_mels + 2, n_freqs)
    rising = -offsets[:-2] / widths[:-1].unsqueeze(1)
    falling = offsets[2:] / widths[1:].unsqueeze(1)
    triangles = torch.minimum(rising, falling).clamp_min(0.0)
    return triangles * (2.0 / (edges[2:] - edges[:-2])).unsqueeze(1)


def num_mel_frames(num_samples: int, hop_length: int = 512) -> int:
    """Frames produced by :class:`LogMelSpectrogram` for ``num_samples`` samples.

    With the symmetric ``(n_fft - hop) / 2`` reflect padding and ``center=False`` this is
    ``floor(num_samples / hop)``: exactly one frame per hop, as the vocoder expects.

    Args:
        num_samples: Waveform length.
        hop_length: STFT hop.
    """
    return num_samples // hop_length


class LogMelSpectrogram(Configurable, nn.Module):
    """Waveform ``(B, N)`` in [-1, 1] → natural-log mel magnitude ``(B, n_mels, N // hop)``.

    Args:
        sample_rate: Expected input rate in Hz.
        n_fft: FFT size.
        hop_length: Hop in samples (one mel frame per hop).
        win_length: Hann window length.
        n_mels: Mel bands.
        f_min: Lowest filter edge in Hz.
        f_max: Highest filter edge in Hz; ``None`` means Nyquist.
        clamp_min: Floor on the mel magnitude before the log (ln(1e-5) ≈ -11.51 for silence).
        clamp_waveform: Clamp the input to [-1, 1] first, as MMAudio's VAE front end does
            (:class:`~foley.models.codec.Codec` already clamps what it encodes).
    """

    def __init__(
        self,
        sample_rate: int = 44100,
        n_fft: int = 2048,
        hop_length: int = 512,
        win_length: int = 2048,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        clamp_min: float = 1e-5,
        clamp_waveform: bool = False,
    ) -> None:
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError(f"n_fft - hop_length must be even for symmetric padding, got {n_fft=} {hop_length=}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.clamp_min = clamp_min
        self.clamp_waveform = clamp_waveform
        self.pad = (n_fft - hop_length) // 2
        fbanks = slaney_mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max if f_max is not None else sample_rate / 2)
        # Deterministic functions of the config: kept out of the state dict.
        self.register_buffer("mel_basis", fbanks.float().contiguous(), persistent=False)  # (n_mels, n_freqs)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def magnitude(self, wave: Tensor) -> Tensor:
        """Linear STFT magnitude ``(B, n_fft // 2 + 1, N // hop)``."""
        if wave.dim() != 2:
            raise ValueError(f"LogMelSpectrogram expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        if wave.shape[-1] <= self.pad:
            raise ValueError(
                f"waveform of {wave.shape[-1]} samples is too short for reflect padding of {self.pad}; "
                f"zero-pad it to at least {self.pad + 1} samples first"
            )
        if self.clamp_waveform:
            wave = wave.clamp(-1.0, 1.0)
        padded = torch.nn.functional.pad(wave.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            padded.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)

    def forward(self, wave: Tensor) -> Tensor:
        mel = torch.matmul(self.mel_basis, self.magnitude(wave))
        return torch.log(torch.clamp(mel, min=self.clamp_min))
