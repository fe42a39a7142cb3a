"""Losses for stage-1 codec training: margin KL, spectral reconstruction, GAN terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

__all__ = [
    "gaussian_kl",
    "margin_kl_loss",
    "masked_l1",
    "MultiResolutionSTFTLoss",
    "MultiResolutionMelLoss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "feature_matching_loss",
]


def gaussian_kl(mean: Tensor, logvar: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) in nats per latent element, averaged over real frames.

    Args:
        mean: Posterior mean ``(B, C, T)``.
        logvar: Posterior log-variance ``(B, C, T)``.
        mask: ``(B, T)`` True on frames to count.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    if mask is None:
        return kl.mean()
    weights = mask.unsqueeze(1).to(kl.dtype).expand_as(kl)
    return (kl * weights).sum() / weights.sum().clamp_min(1.0)


def margin_kl_loss(kl: Tensor, margin: float) -> Tensor:
    """Margin KL ``max(0, D_KL − Δ)``: no pressure (and no gradient) while the KL is below Δ.

    Args:
        kl: Scalar KL divergence.
        margin: Δ, in the units of ``kl``.
    """
    return F.relu(kl - margin)


def masked_l1(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over ``(B, C, T)`` with an optional ``(B, T)`` frame mask."""
    error = (prediction - target).abs()
    if mask is None:
        return error.mean()
    weights = mask.unsqueeze(1).to(error.dtype).expand_as(error)
    return (error * weights).sum() / weights.sum().clamp_min(1.0)


def _stft_magnitude(wave: Tensor, n_fft: int, hop: int, win: int, window: Tensor) -> Tensor:
    spec = torch.stft(wave.float(), n_fft, hop, win, window, center=True, pad_mode="reflect", return_complex=True)
    return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-7)


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions.

    Args:
        resolutions: ``(n_fft, hop_length, win_length)`` triples.
    """

    def __init__(
        self, resolutions: Sequence[Sequence[int]] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
    ) -> None:
        super().__init__()
        self.resolutions = [tuple(int(v) for v in r) for r in resolutions]
        for index, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window_{index}", torch.hann_window(win), persistent=False)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Distance between waveforms ``(B, N)`` (lower is better; 0 for identical inputs)."""
        total = prediction.new_zeros(())
        for index, (n_fft, hop, win) in enumerate(self.resolutions):
            window = getattr(self, f"window_{index}")
            pred_mag = _stft_magnitude(prediction, n_fft, hop, win, window)
            target_mag = _stft_magnitude(target, n_fft, hop, win, window)
            convergence = torch.linalg.vector_norm(target_mag - pred_mag) / torch.linalg.vector_norm(
                target_mag
            ).clamp_min(1e-5)
            log_mag = (pred_mag.log() - target_mag.log()).abs().mean()
            total = total + convergence + log_mag
        return total / len(self.resolutions)


class MultiResolutionMelLoss(nn.Module):
    """L1 between log-mels at several resolutions (BigVGAN-v2's multi-scale mel loss).

    Args:
        sample_rate: Waveform rate.
        n_ffts: FFT size per scale (window = n_fft, hop = n_fft / 4).
        n_mels: Mel bands per scale.
    """

    def __init__(
        self,
        sample_rate: int = 44100,
        n_ffts: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
    ) -> None:
        super().__init__()
        if len(n_ffts) != len(n_mels):
            raise ValueError("n_ffts and n_mels must have the same length")
        self.scales = list(zip((int(v) for v in n_ffts), (int(v) for v in n_mels)))
        for index, (n_fft, mels) in enumerate(self.scales):
            fbank = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, mels, sample_rate, "slaney", "slaney")
            self.register_buffer(f"fbank_{index}", fbank.T.contiguous(), persistent=False)
            self.register_buffer(f"window_{index}", torch.hann_window(n_fft), persistent=False)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        total = prediction.new_zeros(())
        for index, (n_fft, _) in enumerate(self.scales):
            window = getattr(self, f"window_{index}")
            fbank = getattr(self, f"fbank_{index}")
            pred = torch.matmul(fbank, _stft_magnitude(prediction, n_fft, n_fft // 4, n_fft, window))
            tgt = torch.matmul(fbank, _stft_magnitude(target, n_fft, n_fft // 4, n_fft, window))
            total = total + (pred.clamp_min(1e-5).log() - tgt.clamp_min(1e-5).log()).abs().mean()
        return total / len(self.scales)


def discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """Least-squares GAN discriminator loss: real → 1, generated → 0, summed over sub-discriminators."""
    return sum(((1 - r.float()).pow(2).mean() + f.float().pow(2).mean() for r, f in zip(real_logits, fake_logits)))


def generator_adversarial_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """Least-squares GAN generator loss: generated → 1."""
    return sum((1 - f.float()).pow(2).mean() for f in fake_logits)


def feature_matching_loss(real_features: Sequence[Sequence[Tensor]], fake_features: Sequence[Sequence[Tensor]]) -> Tensor:
    """L1 between discriminator activations of real and generated audio (real side detached)."""
    total = 0.0
    count = 0
    for real_maps, fake_maps in zip(real_features, fake_features):
        for real, fake in zip(real_maps, fake_maps):
            total = total + (real.detach().float() - fake.float()).abs().mean()
            count += 1
    return total / max(count, 1)
