"""Magnitude-preserving Mel-VAE: the EDM2-style 1-D convolutional VAE of MMAudio's 44.1 kHz codec.

Every layer is designed to keep activations at unit RMS (Karras et al., "Analyzing and
Improving the Training Dynamics of Diffusion Models", 2024): bias-free convolutions whose
weights have unit L2 norm per output channel, SiLU rescaled by 1 / 0.596, per-position
normalisation of the channel vector ("pixel norm") at the start of each residual block, and
residual sums that weight the branch by ``t`` and divide by ``sqrt((1 - t)^2 + t^2)``. So,
unlike :class:`~foley.models.mel_vae.MelVAE`, it has no GroupNorm and no biases.

Layout (channels ``h · m`` at level ``m`` of ``channel_multipliers``; ``L`` levels)::

    encoder: conv_in → per level: blocks_per_level residual blocks [→ 2× downsample]
             → mid (block, self-attention, block) → SiLU → conv_out (2 · C channels, gain)
    decoder: conv_in → mid → per level, coarsest first: blocks_per_level + 1 blocks
             [→ 2× upsample] → SiLU → conv_out (n_mels channels, gain)

The module tree (names and shapes) is that of MMAudio's published ``v1-44.pth`` file, so its
weights map one to one; the file stores the raw weights that the EDM2 recipe normalises on
every forward pass, and :func:`magnitude_preserving_weight` turns them into the plain weights
this module uses (``foley.convert.mmaudio_vae`` does that for the file). Log-mels are
standardised per mel bin with the ``data_mean`` / ``data_std`` buffers, which the file holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.models.mel_vae import GaussianMelVAE

__all__ = ["MagnitudePreservingMelVAE", "magnitude_preserving_weight", "mp_silu", "pixel_norm", "mp_add"]

_SILU_RMS = 0.596  # RMS of silu(x) for x ~ N(0, 1)


def pixel_norm(x: Tensor, dim: int = 1, eps: float = 1e-4) -> Tensor:
    """Scale ``x`` to unit RMS along ``dim``: ``x / (eps + ||x|| / sqrt(size))``; the norm is taken in float32."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(1.0 / x.shape[dim]))
    return x / norm.to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    """SiLU rescaled to unit output RMS for unit-RMS Gaussian input."""
    return F.silu(x) / _SILU_RMS


def mp_add(x: Tensor, branch: Tensor, t: float) -> Tensor:
    """Magnitude-preserving residual sum ``lerp(x, branch, t) / sqrt((1 - t)^2 + t^2)``."""
    return torch.lerp(x, branch, t) / math.sqrt((1 - t) ** 2 + t**2)


@torch.no_grad()
def magnitude_preserving_weight(raw: Tensor, eps: float = 1e-4) -> Tensor:
    """Plain convolution weight from a raw EDM2 weight ``(out, in, kernel)``, computed in float32.

    Each output channel is divided by ``eps + ||w_o|| / sqrt(fan_in)`` and the result by
    ``sqrt(fan_in)``, ``fan_in = in · kernel``: unit norm per output channel, so a unit-RMS input
    gives a unit-RMS output.

    Args:
        raw: Weight as trained (and as MMAudio's file stores it).
        eps: Floor of the per-channel scale.
    """
    weight = raw.float()
    fan_in = weight[0].numel()
    norm = torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.dim())), keepdim=True)
    norm = torch.add(eps, norm, alpha=math.sqrt(1.0 / fan_in))
    return (weight / norm / math.sqrt(fan_in)).to(raw.dtype)


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv1d:
    return nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)


class _ResidualBlock(nn.Module):
    """Pixel norm → SiLU → conv → SiLU → conv, added to the (projected) normalised input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, residual_t: float) -> None:
        super().__init__()
        self.residual_t = residual_t
        self.conv1 = _conv(in_channels, out_channels, kernel_size)
        self.conv2 = _conv(out_channels, out_channels, kernel_size)
        self.nin_shortcut = _conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        x = pixel_norm(x)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_add(x, h, self.residual_t)


class _SelfAttention(nn.Module):
    """Self-attention over time with pixel-normalised queries, keys and values.

    ``qkv`` interleaves its output channels: channel ``3 · c + j`` of each head is feature ``c``
    of the query (``j = 0``), key (1) or value (2).
    """

    def __init__(self, channels: int, heads: int, residual_t: float) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels {channels} are not divisible by {heads} heads")
        self.heads = heads
        self.residual_t = residual_t
        self.qkv = _conv(channels, 3 * channels, 1)
        self.proj_out = _conv(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, length = x.shape
        qkv = self.qkv(x).reshape(batch, self.heads, -1, 3, length)
        q, k, v = (t.transpose(-1, -2) for t in pixel_norm(qkv, dim=2).unbind(3))  # (B, heads, L, c)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(batch, -1, length)
        return mp_add(x, self.proj_out(h), self.residual_t)


class _Downsample(nn.Module):
    """1×1 conv → 2× average pooling → 1×1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 1)
        self.conv2 = _conv(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class _Upsample(nn.Module):
    """Repeat each frame twice → conv."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = _conv(channels, channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.repeat_interleave(2, dim=-1))


class _Level(nn.Module):
    """One resolution: residual blocks, then an optional resampler."""

    def __init__(self, blocks: list[nn.Module], resample_name: str | None = None, resample: nn.Module | None = None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample_name is not None:
            self.add_module(resample_name, resample)

    @property
    def resample(self) -> nn.Module | None:
        return getattr(self, self.resample_name) if self.resample_name is not None else None


class _Middle(nn.Module):
    def __init__(self, channels: int, kernel_size: int, heads: int, residual_t: float) -> None:
        super().__init__()
        self.block_1 = _ResidualBlock(channels, channels, kernel_size, residual_t)
        self.attn_1 = _SelfAttention(channels, heads, residual_t)
        self.block_2 = _ResidualBlock(channels, channels, kernel_size, residual_t)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Encoder(nn.Module):
    def __init__(
        self, n_mels: int, out_channels: int, widths: list[int], blocks: int, down_levels: set[int],
        kernel_size: int, heads: int, residual_t: float, clip: float,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.conv_in = _conv(n_mels, widths[0], kernel_size)
        self.down = nn.ModuleList()
        channels = widths[0]
        for level, width in enumerate(widths):
            stack = []
            for _ in range(blocks):
                stack.append(_ResidualBlock(channels, width, kernel_size, residual_t))
                channels = width
            down = _Downsample(channels) if level in down_levels else None
            self.down.append(_Level(stack, "downsample" if down is not None else None, down))
        self.mid = _Middle(channels, kernel_size, heads, residual_t)
        self.conv_out = _conv(channels, out_channels, kernel_size)
        self.learnable_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h).clamp(-self.clip, self.clip)
            if level.resample is not None:
                h = level.resample(h)
        h = self.mid(h).clamp(-self.clip, self.clip)
        return F.conv1d(mp_silu(h), self.conv_out.weight * (self.learnable_gain + 1), padding=self.conv_out.padding)


class _Decoder(nn.Module):
    def __init__(
        self, latent_channels: int, n_mels: int, widths: list[int], blocks: int, up_levels: set[int],
        kernel_size: int, heads: int, residual_t: float, clip: float,
    ) -> None:
        super().__init__()
        self.clip = clip
        channels = widths[-1]
        self.conv_in = _conv(latent_channels, channels, kernel_size)
        self.mid = _Middle(channels, kernel_size, heads, residual_t)
        levels: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            stack = []
            for _ in range(blocks + 1):
                stack.append(_ResidualBlock(channels, widths[level], kernel_size, residual_t))
                channels = widths[level]
            up = _Upsample(channels, kernel_size) if level in up_levels else None
            levels.insert(0, _Level(stack, "upsample" if up is not None else None, up))
        self.up = nn.ModuleList(levels)  # finest level first, run coarsest first
        self.conv_out = _conv(channels, n_mels, kernel_size)
        self.learnable_gain = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z)).clamp(-self.clip, self.clip)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h).clamp(-self.clip, self.clip)
            if level.resample is not None:
                h = level.resample(h)
        return F.conv1d(mp_silu(h), self.conv_out.weight * (self.learnable_gain + 1), padding=self.conv_out.padding)


class MagnitudePreservingMelVAE(Configurable, GaussianMelVAE):
    """EDM2-style 1-D convolutional VAE from log-mel to a continuous latent and back.

    The defaults are MMAudio's 44.1 kHz VAE (``v1-44.pth``, ≈305 M parameters): 128 mel bins,
    40 latent channels, width 512 × (1, 2, 4), one 2× downsample, so one latent frame per two
    mel frames (1024 samples at hop 512). It has the interface :class:`~foley.models.codec.Codec`
    uses (:class:`~foley.models.mel_vae.GaussianMelVAE`), so it can be a codec's VAE in place of
    :class:`~foley.models.mel_vae.MelVAE`.

    Its convolutions hold plain weights: the forced weight normalisation of EDM2 training is
    applied once, when converting (:func:`magnitude_preserving_weight`), as MMAudio does before
    inference. A fresh module starts from such normalised random weights. Training it further
    with plain weights is possible but no longer keeps the weights normalised.

    Args:
        n_mels: Mel bins in and out.
        latent_channels: Latent channels ``C`` (the encoder outputs ``2 · C``: mean and log-variance).
        hidden_channels: Width of the first level.
        channel_multipliers: Width of each level, in units of ``hidden_channels``.
        blocks_per_level: Encoder residual blocks per level (the decoder has one more).
        downsample_levels: Levels (all but the last) followed by a 2× downsample in the encoder;
            the decoder upsamples at the mirrored place.
        kernel_size: Odd kernel of the non-pointwise convolutions.
        attention_heads: Heads of the self-attention in the middle blocks.
        residual_t: Weight of the residual branch in the magnitude-preserving sums.
        clip_activation: Activations are clamped to ``±clip_activation`` after every block.
        logvar_clamp: Log-variance range of the posterior.
    """

    def __init__(
        self,
        n_mels: int = 128,
        latent_channels: int = 40,
        hidden_channels: int = 512,
        channel_multipliers: Sequence[int] = (1, 2, 4),
        blocks_per_level: int = 2,
        downsample_levels: Sequence[int] = (0,),
        kernel_size: int = 3,
        attention_heads: int = 1,
        residual_t: float = 0.3,
        clip_activation: float = 256.0,
        logvar_clamp: tuple[float, float] = (-30.0, 20.0),
    ) -> None:
        super().__init__()
        levels = len(channel_multipliers)
        down = set(downsample_levels)
        if levels < 1 or blocks_per_level < 1:
            raise ValueError("need at least one level (channel_multipliers) and one block per level")
        if len(down) != len(downsample_levels) or not all(0 <= level < levels - 1 for level in down):
            raise ValueError(
                f"downsample_levels {list(downsample_levels)} must be distinct levels in [0, {levels - 2}] "
                "(the decoder mirrors each one at the next coarser level)"
            )
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length convolutions), got {kernel_size}")
        self.n_mels = n_mels
        self.latent_channels = latent_channels
        self.downsample_factor = 2 ** len(down)
        self.logvar_clamp = tuple(logvar_clamp)
        widths = [hidden_channels * m for m in channel_multipliers]
        common = dict(kernel_size=kernel_size, heads=attention_heads, residual_t=residual_t, clip=clip_activation)
        self.register_buffer("data_mean", torch.zeros(1, n_mels, 1))
        self.register_buffer("data_std", torch.ones(1, n_mels, 1))
        self.encoder = _Encoder(n_mels, 2 * latent_channels, widths, blocks_per_level, down, **common)
        self.decoder = _Decoder(latent_channels, n_mels, widths, blocks_per_level, {d + 1 for d in down}, **common)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normalised Gaussian convolution weights, unit output gains, identity mel statistics."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d) and not module.weight.is_meta:
                module.weight.copy_(magnitude_preserving_weight(torch.randn_like(module.weight)))
        for coder in (self.encoder, self.decoder):
            coder.learnable_gain.zero_()
        self.data_mean.zero_()
        self.data_std.fill_(1.0)

    def normalize_mel(self, mel: Tensor) -> Tensor:
        """Log-mel → per-bin standardised mel."""
        return (mel - self.data_mean) / self.data_std

    def denormalize_mel(self, mel: Tensor) -> Tensor:
        """Per-bin standardised mel → log-mel."""
        return mel * self.data_std + self.data_mean

    def encode(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Log-mel ``(B, n_mels, F)`` → posterior ``(mean, logvar)``, each ``(B, C, F / downsample_factor)``."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must be (B, {self.n_mels}, frames), got shape {tuple(mel.shape)}")
        if mel.shape[-1] % self.downsample_factor:
            raise ValueError(f"mel length must be a multiple of {self.downsample_factor}, got {mel.shape[-1]} frames")
        mean, logvar = self.encoder(self.normalize_mel(mel)).chunk(2, dim=1)
        return mean, logvar.clamp(*self.logvar_clamp)

    def decode(self, latent: Tensor) -> Tensor:
        """Latent ``(B, C, T)`` → log-mel ``(B, n_mels, T · downsample_factor)``."""
        return self.denormalize_mel(self.decoder(latent))
