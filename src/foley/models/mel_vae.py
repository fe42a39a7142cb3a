"""Mel-VAE: a deep 1-D convolutional VAE over mono log-mels.

Encoder: mel ``(B, n_mels, 2T)`` → posterior mean and log-variance ``(B, C, T)`` with one
2× temporal downsample, so at hop 512 one latent frame covers 1024 samples (≈43.07 Hz
at 44.1 kHz). Decoder: latent ``(B, C, T)`` → mel ``(B, n_mels, 2T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from foley.configurable import Configurable

__all__ = ["GaussianMelVAE", "MelVAE", "ResidualConvBlock"]


def _groups(channels: int, preferred: int = 32) -> int:
    groups = min(preferred, channels)
    while channels % groups:
        groups -= 1
    return groups


class ResidualConvBlock(nn.Module):
    """Pre-norm residual block of two 1-D convolutions (two layers of depth).

    Args:
        channels: Feature channels.
        kernel_size: Odd kernel size.
        dilation: Dilation of the first convolution (widens the receptive field cheaply).
    """

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2))
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.act = nn.SiLU()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        return x + self.conv2(self.act(self.norm2(h)))


def _stack(channels: int, blocks: int, kernel_size: int, dilation_cycle: tuple[int, ...]) -> list[nn.Module]:
    return [ResidualConvBlock(channels, kernel_size, dilation_cycle[i % len(dilation_cycle)]) for i in range(blocks)]


class GaussianMelVAE(nn.Module):
    """What a :class:`~foley.models.codec.Codec` needs of its Mel-VAE: a diagonal-Gaussian posterior over latents.

    Subclasses set ``n_mels``, ``latent_channels`` and ``downsample_factor`` (mel frames per latent
    frame) and implement :meth:`encode` and :meth:`decode`.
    """

    n_mels: int
    latent_channels: int
    downsample_factor: int

    def encode(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Log-mel ``(B, n_mels, F)`` → posterior ``(mean, logvar)``, each ``(B, C, F / downsample_factor)``."""
        raise NotImplementedError

    def decode(self, latent: Tensor) -> Tensor:
        """Latent ``(B, C, T)`` → log-mel ``(B, n_mels, T · downsample_factor)``."""
        raise NotImplementedError

    @staticmethod
    def sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised posterior sample ``mean + exp(logvar / 2) · ε``."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def forward(self, mel: Tensor, sample_posterior: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct ``mel``; returns ``(reconstruction, mean, logvar)``."""
        mean, logvar = self.encode(mel)
        latent = self.sample(mean, logvar) if sample_posterior else mean
        return self.decode(latent), mean, logvar


class MelVAE(Configurable, GaussianMelVAE):
    """Convolutional VAE from log-mel to a continuous latent and back.

    Depth counts convolution layers: ``encoder_layers = 2 + 2 · blocks`` (stem, the 2×
    downsample, and two convolutions per residual block; the 1×1 output projection is
    not counted). The paper's 32-layer encoder is ``encoder_layers=32``.

    Log-mels are standardised with fixed ``mel_mean``/``mel_std`` before encoding and
    the decoder predicts standardised mels, which keeps activations O(1) for silence
    (ln 1e-5 ≈ -11.5) and loud audio alike.

    Args:
        n_mels: Mel bands in and out.
        latent_channels: Latent channels ``C``.
        hidden_channels: Width of the convolution stacks.
        encoder_layers: Convolution layers of the encoder (even, ≥ 2).
        decoder_layers: Convolution layers of the decoder (even, ≥ 2).
        kernel_size: Kernel of the residual convolutions.
        dilation_cycle: Dilations cycled through the residual blocks.
        mel_mean: Offset subtracted from the log-mel.
        mel_std: Scale dividing the log-mel.
        logvar_clamp: Log-variance range, for numerical safety with bf16 and bad inputs.
    """

    def __init__(
        self,
        n_mels: int = 128,
        latent_channels: int = 40,
        hidden_channels: int = 512,
        encoder_layers: int = 32,
        decoder_layers: int = 32,
        kernel_size: int = 3,
        dilation_cycle: tuple[int, ...] = (1, 2, 4),
        mel_mean: float = -5.0,
        mel_std: float = 2.5,
        logvar_clamp: tuple[float, float] = (-30.0, 20.0),
    ) -> None:
        super().__init__()
        for name, layers in (("encoder_layers", encoder_layers), ("decoder_layers", decoder_layers)):
            if layers < 2 or layers % 2:
                raise ValueError(f"{name} must be an even number ≥ 2 (stem + resampling + 2 per block), got {layers}")
        self.n_mels = n_mels
        self.latent_channels = latent_channels
        self.downsample_factor = 2
        self.mel_mean = mel_mean
        self.mel_std = mel_std
        self.logvar_clamp = tuple(logvar_clamp)
        dilations = tuple(dilation_cycle)
        pad = kernel_size // 2

        enc_blocks = (encoder_layers - 2) // 2
        enc_before = enc_blocks // 2
        self.encoder = nn.Sequential(
            nn.Conv1d(n_mels, hidden_channels, kernel_size, padding=pad),
            *_stack(hidden_channels, enc_before, kernel_size, dilations),
            nn.Conv1d(hidden_channels, hidden_channels, 4, stride=2, padding=1),
            *_stack(hidden_channels, enc_blocks - enc_before, kernel_size, dilations),
            nn.GroupNorm(_groups(hidden_channels), hidden_channels),
            nn.SiLU(),
            nn.Conv1d(hidden_channels, 2 * latent_channels, 1),
        )
        dec_blocks = (decoder_layers - 2) // 2
        dec_before = dec_blocks // 2
        self.decoder = nn.Sequential(
            nn.Conv1d(latent_channels, hidden_channels, kernel_size, padding=pad),
            *_stack(hidden_channels, dec_before, kernel_size, dilations),
            nn.ConvTranspose1d(hidden_channels, hidden_channels, 4, stride=2, padding=1),
            *_stack(hidden_channels, dec_blocks - dec_before, kernel_size, dilations),
            nn.GroupNorm(_groups(hidden_channels), hidden_channels),
            nn.SiLU(),
            nn.Conv1d(hidden_channels, n_mels, 1),
        )

    def normalize_mel(self, mel: Tensor) -> Tensor:
        """Log-mel → standardised mel."""
        return (mel - self.mel_mean) / self.mel_std

    def denormalize_mel(self, mel: Tensor) -> Tensor:
        """Standardised mel → log-mel."""
        return mel * self.mel_std + self.mel_mean

    def encode(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Log-mel ``(B, n_mels, 2T)`` → posterior ``(mean, logvar)``, each ``(B, C, T)``."""
        if mel.shape[-1] % self.downsample_factor:
            raise ValueError(f"mel length must be a multiple of {self.downsample_factor}, got {mel.shape[-1]} frames")
        stats = self.encoder(self.normalize_mel(mel))
        mean, logvar = stats.chunk(2, dim=1)
        return mean, logvar.clamp(*self.logvar_clamp)

    def decode(self, latent: Tensor) -> Tensor:
        """Latent ``(B, C, T)`` → log-mel ``(B, n_mels, 2T)``."""
        return self.denormalize_mel(self.decoder(latent))
