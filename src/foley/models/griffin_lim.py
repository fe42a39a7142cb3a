"""A training-free mel → waveform vocoder (fast Griffin-Lim).

It inverts exactly the front end of :class:`foley.models.mel.LogMelSpectrogram` (same
filters, hop and frame alignment), so it can stand in for BigVGAN wherever no trained
vocoder exists yet: CPU demos, smoke tests, or checking a Mel-VAE before a vocoder is
trained. Its audio is phasey, but loudness and timing follow the mel frame by frame,
which is what onset and stereo evaluations measure. Train or load BigVGAN for quality.
"""
from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from foley.configurable import Configurable

__all__ = ["GriffinLimVocoder"]


class GriffinLimVocoder(Configurable, nn.Module):
    """Log-mel ``(B, n_mels, F)`` → waveform ``(B, 1, F · hop)`` by fast Griffin-Lim.

    Args:
        num_mels: mel bands of the front end.
        sample_rate: sample rate in Hz.
        n_fft: FFT size (= window length) of the front end.
        hop_length: hop of the front end.
        f_min: lowest mel filter edge in Hz.
        f_max: highest mel filter edge in Hz; ``None`` is Nyquist.
        n_iter: Griffin-Lim iterations.
        momentum: fast Griffin-Lim momentum (0 is the classic algorithm).
        seed: seed of the initial phase, so vocoding is deterministic.
    """

    def __init__(self, num_mels: int = 128, sample_rate: int = 44100, n_fft: int = 2048, hop_length: int = 512,
                 f_min: float = 0.0, f_max: float | None = None, n_iter: int = 32, momentum: float = 0.99,
                 seed: int = 0) -> None:
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError(f"n_fft - hop_length must be even, got {n_fft=} {hop_length=}")
        self.num_mels, self.sample_rate, self.n_fft, self.hop_length = num_mels, sample_rate, n_fft, hop_length
        self.n_iter, self.momentum, self.seed = n_iter, momentum, seed
        fbanks = AF.melscale_fbanks(n_fft // 2 + 1, f_min, float(f_max or sample_rate / 2), num_mels,
                                    sample_rate, norm="slaney", mel_scale="slaney")  # (n_freqs, n_mels)
        # Least-squares inverse of the mel projection; derived from the config, not saved.
        self.register_buffer("inverse_basis", torch.linalg.pinv(fbanks.T.double()).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # The front end's frame f is centred on sample f·hop + (n_fft/2 - pad); a centred
        # STFT puts it on f·hop, so the result is delayed by this many samples.
        self.delay = n_fft // 2 - (n_fft - hop_length) // 2

    def _stft(self, wave: Tensor) -> Tensor:
        return torch.stft(wave, self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True)

    def _istft(self, spec: Tensor, length: int) -> Tensor:
        return torch.istft(spec, self.n_fft, self.hop_length, window=self.window, center=True, length=length)

    @torch.no_grad()
    def forward(self, log_mel: Tensor) -> Tensor:
        if log_mel.dim() != 3 or log_mel.shape[1] != self.num_mels:
            raise ValueError(f"expected a log-mel of shape (B, {self.num_mels}, F), got {tuple(log_mel.shape)}")
        frames = log_mel.shape[-1]
        magnitude = (self.inverse_basis @ log_mel.float().exp()).clamp_min(0.0)
        # One extra frame so the centred inverse spans exactly frames · hop samples.
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
        length = frames * self.hop_length
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        # One phase draw shared by the batch: a clip vocodes the same alone or batched.
        phase = torch.rand(magnitude.shape[-2:], generator=generator).to(magnitude.device) * (2 * math.pi)
        angles = torch.polar(torch.ones_like(magnitude), phase)
        previous = torch.zeros_like(angles)
        blend = self.momentum / (1 + self.momentum)
        for _ in range(self.n_iter):
            rebuilt = self._stft(self._istft(magnitude * angles, length))
            angles = rebuilt - blend * previous
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        wave = self._istft(magnitude * angles, length)
        wave = torch.nn.functional.pad(wave, (self.delay, 0))[..., :length]
        return wave.clamp(-1.0, 1.0).unsqueeze(1).to(log_mel.dtype)
