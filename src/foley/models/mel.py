"""Log-mel front end matching the public BigVGAN-v2 44 kHz / 128-band vocoder.

The parameters default to that vocoder's training front end (reflect-pad 768 samples,
STFT with ``center=False``, n_fft = win = 2048, hop 512, magnitude
``sqrt(|X|^2 + 1e-9)``, Slaney-normalised Slaney-scale mel filters from 0 Hz to
Nyquist, natural log of the magnitude clamped at 1e-5), so that mels computed here can
be fed to the official MIT-licensed generator weights and vice versa.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from foley.configurable import Configurable

__all__ = ["LogMelSpectrogram", "num_mel_frames"]


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
        self.pad = (n_fft - hop_length) // 2
        fbanks = AF.melscale_fbanks(
            n_freqs=n_fft // 2 + 1,
            f_min=f_min,
            f_max=float(f_max if f_max is not None else sample_rate / 2),
            n_mels=n_mels,
            sample_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        # Deterministic functions of the config: kept out of the state dict.
        self.register_buffer("mel_basis", fbanks.T.contiguous(), persistent=False)  # (n_mels, n_freqs)
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
