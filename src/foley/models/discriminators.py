"""Waveform discriminators for vocoder GAN training.

Both return ``(logits, feature_maps)``: one logit map per sub-discriminator and, per
sub-discriminator, the list of intermediate activations used for feature matching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

__all__ = ["MultiPeriodDiscriminator", "MultiResolutionDiscriminator", "DiscriminatorOutput"]

DiscriminatorOutput = tuple[list[Tensor], list[list[Tensor]]]

_LEAK = 0.1


def _norm(module: nn.Module, use_spectral_norm: bool) -> nn.Module:
    return spectral_norm(module) if use_spectral_norm else weight_norm(module)


def _run_stack(x: Tensor, convs: nn.ModuleList, conv_post: nn.Module) -> tuple[Tensor, list[Tensor]]:
    """Leaky-ReLU conv stack + output conv → (flattened logits, every intermediate activation)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), _LEAK)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Folds the waveform into ``(N / period, period)`` and applies 2-D convolutions along time.

    Args:
        period: Fold period in samples.
        channels: Output channels of the strided convolution stack.
        kernel_size: Kernel along the time axis.
        stride: Stride along the time axis (the last convolution uses stride 1).
        use_spectral_norm: Spectral instead of weight normalisation.
    """

    def __init__(
        self,
        period: int,
        channels: Sequence[int] = (32, 128, 512, 1024, 1024),
        kernel_size: int = 5,
        stride: int = 3,
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.period = period
        layers = []
        in_ch = 1
        for index, out_ch in enumerate(channels):
            step = stride if index < len(channels) - 1 else 1
            layers.append(
                _norm(
                    nn.Conv2d(in_ch, out_ch, (kernel_size, 1), (step, 1), padding=(kernel_size // 2, 0)),
                    use_spectral_norm,
                )
            )
            in_ch = out_ch
        self.convs = nn.ModuleList(layers)
        self.conv_post = _norm(nn.Conv2d(in_ch, 1, (3, 1), 1, padding=(1, 0)), use_spectral_norm)

    def forward(self, wave: Tensor) -> tuple[Tensor, list[Tensor]]:
        batch, channels, length = wave.shape
        if length % self.period:
            wave = F.pad(wave, (0, self.period - length % self.period), mode="reflect")
        x = wave.view(batch, channels, -1, self.period)
        return _run_stack(x, self.convs, self.conv_post)


class _DiscriminatorGroup(nn.Module):
    """Runs each sub-discriminator in ``self.discriminators`` on the same waveform ``(B, 1, N)``."""

    discriminators: nn.ModuleList

    def forward(self, wave: Tensor) -> DiscriminatorOutput:
        logits, features = [], []
        for disc in self.discriminators:
            logit, fmap = disc(wave)
            logits.append(logit)
            features.append(fmap)
        return logits, features


class MultiPeriodDiscriminator(_DiscriminatorGroup):
    """HiFi-GAN multi-period discriminator (periods 2, 3, 5, 7, 11 by default).

    Args:
        periods: Fold periods.
        channels: Channel stack of each period discriminator.
        use_spectral_norm: Spectral instead of weight normalisation.
    """

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        channels: Sequence[int] = (32, 128, 512, 1024, 1024),
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(p, channels, use_spectral_norm=use_spectral_norm) for p in periods
        )


class ResolutionDiscriminator(nn.Module):
    """2-D convolutions over one linear STFT magnitude.

    Args:
        n_fft: FFT size.
        hop_length: Hop.
        win_length: Hann window length.
        channels: Width of the convolution stack.
        use_spectral_norm: Spectral instead of weight normalisation.
    """

    def __init__(
        self, n_fft: int, hop_length: int, win_length: int, channels: int = 32, use_spectral_norm: bool = False
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.convs = nn.ModuleList(
            [
                _norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4)), use_spectral_norm),
                _norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)), use_spectral_norm),
                _norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)), use_spectral_norm),
                _norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)), use_spectral_norm),
                _norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)), use_spectral_norm),
            ]
        )
        self.conv_post = _norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)), use_spectral_norm)

    def forward(self, wave: Tensor) -> tuple[Tensor, list[Tensor]]:
        pad = (self.n_fft - self.hop_length) // 2
        x = F.pad(wave, (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            x.float(), self.n_fft, self.hop_length, self.win_length, self.window, center=False, return_complex=True
        )
        # (B, freq, frames) → (B, 1, frames, freq): time along height, frequency along width.
        x = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9).transpose(1, 2).unsqueeze(1)
        return _run_stack(x, self.convs, self.conv_post)


class MultiResolutionDiscriminator(_DiscriminatorGroup):
    """UnivNet-style multi-resolution spectrogram discriminator.

    Args:
        resolutions: ``(n_fft, hop_length, win_length)`` per sub-discriminator.
        channels: Width of each sub-discriminator.
        use_spectral_norm: Spectral instead of weight normalisation.
    """

    def __init__(
        self,
        resolutions: Sequence[Sequence[int]] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)),
        channels: int = 32,
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            ResolutionDiscriminator(n_fft, hop, win, channels, use_spectral_norm) for n_fft, hop, win in resolutions
        )
