"""Aligned rotary position embeddings: positions measured in real time.

Every stream that carries time (audio latents, CLIP frames) places its token ``i`` at
``tau = i / stream_rate`` seconds and rotates it by the angle for position
``tau * latent_rate``, i.e. the audio latent index that shows the same instant. A CLIP
frame at 8 fps and an audio latent at 43.07 Hz that show the same moment therefore
get exactly the same rotation, for any clip duration and any input frame rate, and the
attention score between two rotated tokens depends only on their time difference.
Tokens are placed at the start of the interval they cover (frame ``i`` is displayed
from ``i / rate``), the same convention as the data module's stream timing.

Text tokens carry no time and are not rotated (equivalent to position 0); they are
handled by the caller simply by not applying the rotation.

Angles are computed in float64 (once per generation; float32 angles drift by 1e-3 rad
after ~10k positions and bf16 ones after a few hundred) and the rotation uses
float32 tables cast to the dtype of the queries and keys.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["AlignedRoPE", "apply_rope"]


class AlignedRoPE:
    """Builds rotary tables for streams with different token rates on one time axis.

    Has no parameters (a plain object, not an ``nn.Module``), so it never changes dtype.

    Args:
        head_dim: attention head size (even).
        latent_rate: token rate (Hz) of the reference stream, whose token ``i`` sits at
            position ``i``; 44100 / 1024 for the audio latent.
        base: RoPE base; the frequencies are ``base ** (-2j / head_dim)``.
    """

    def __init__(self, head_dim: int, latent_rate: float, base: float = 10000.0) -> None:
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        if latent_rate <= 0:
            raise ValueError(f"latent_rate must be positive, got {latent_rate}")
        self.head_dim = head_dim
        self.latent_rate = float(latent_rate)
        self.base = float(base)

    def frequencies(self, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
        """(head_dim / 2,) angular frequencies in radians per position."""
        half = self.head_dim // 2
        exponent = torch.arange(half, device=device, dtype=torch.float64) * 2 / self.head_dim
        return (self.base ** -exponent).to(dtype)

    def positions(self, length: int, rate: float, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
        """(length,) positions (in latent frames) of a stream with ``rate`` tokens per second."""
        if rate <= 0:
            raise ValueError(f"stream rate must be positive, got {rate}")
        index = torch.arange(length, device=device, dtype=torch.float64)
        return (index * (self.latent_rate / float(rate))).to(dtype)

    def tables_for_positions(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Float32 cos/sin tables (..., T, head_dim) for the given positions.

        Angles are formed in float64 (float32 angles are off by ~1e-3 rad after ten
        thousand positions; on MPS, which lacks float64, on the CPU). The returned
        ``sin`` is sign-folded (first half negated) so that :func:`apply_rope` is two
        multiply-adds on a half-swapped tensor.
        """
        work_device = "cpu" if positions.device.type == "mps" else positions.device
        angles = positions.detach().to(work_device, torch.float64)[..., None]
        angles = angles * self.frequencies(work_device, torch.float64)
        cos, sin = torch.cos(angles), torch.sin(angles)
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)
        return cos.to(positions.device, torch.float32), sin.to(positions.device, torch.float32)

    def tables(self, length: int, rate: float, device: torch.device | str | None = None
               ) -> tuple[Tensor, Tensor]:
        """Cos/sin tables (length, head_dim) for a stream with ``rate`` tokens per second."""
        work_device = "cpu" if torch.device(device or "cpu").type == "mps" else device
        cos, sin = self.tables_for_positions(self.positions(length, rate, work_device, torch.float64))
        return cos.to(device), sin.to(device)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, weight: Tensor | None = None) -> Tensor:
    """Rotates pairs ``(x[j], x[j + D/2])`` of ``x`` (..., T, D) by the tabulated angles.

    Args:
        x: queries or keys; the result has the same dtype.
        cos, sin: tables from :class:`AlignedRoPE` (float32); they are cast to ``x``'s
            dtype, which in bf16 costs the same relative error as storing ``x`` in bf16.
        weight: optional per-channel gain (an RMSNorm weight) applied before the
            rotation; it is folded into the small tables instead of scaling ``x``.
    """
    if weight is not None:
        half = weight.shape[-1] // 2
        cos = cos * weight.float()
        sin = sin * torch.cat([weight[half:], weight[:half]]).float()
    half = x.shape[-1] // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos.to(x.dtype), swapped, sin.to(x.dtype))
