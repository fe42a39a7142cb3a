"""Generic transformer building blocks shared by foley's networks.

Precision policy (the reason these layers exist instead of plain ``torch.nn`` ones):
the networks may be cast to bfloat16 with ``module.to(torch.bfloat16)`` for fast
inference on CPUs with AMX/AVX512-BF16 and on GPUs. Matrix products then run in the
weights' dtype, but every statistic that overflows or loses precision in bf16 is
computed in float32: normalisation statistics, sinusoidal features, rotary angles and
the residual stream itself (see :class:`foley.models.mmdit.MMDiT`). Under
``torch.autocast`` with float32 weights the same code runs the matmuls in the autocast
dtype and everything else in float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RMSNorm",
    "layer_norm_fp32",
    "modulate",
    "linear",
    "MLP",
    "SinusoidalEmbedding",
    "joint_attention",
]


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """Applies ``layer`` after casting ``x`` to the layer's weight dtype.

    Lets a float32 residual stream feed bf16 weights without autocast (which is slow
    on CPU); under autocast the cast is a no-op for float32 weights.
    """
    return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, statistics in float32.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square before the square root.
        elementwise_affine: learn a per-channel gain (initialised to one).
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), (x.shape[-1],), weight, self.eps).to(x.dtype)


def layer_norm_fp32(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Parameter-free LayerNorm over the last dimension, computed and returned in float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive-norm modulation ``x * (1 + scale) + shift`` (shift/scale broadcast over tokens)."""
    return torch.addcmul(shift, x, 1 + scale)


class MLP(nn.Module):
    """Two-layer feed-forward block with tanh-GELU.

    Args:
        dim: input and output width.
        hidden_dim: width of the hidden layer.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.fc2, F.gelu(linear(self.fc1, x), approximate="tanh"))


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar followed by a two-layer MLP.

    Used for the flow time ``t`` in [0, 1] and for durations in seconds. The features are
    a fixed function of the value (no lookup table), so values never seen in training
    (e.g. longer clips) still get a well-defined embedding.

    Args:
        dim: output width.
        frequency_dim: number of sinusoidal features (half sines, half cosines).
        scale: the value is multiplied by this before the features (1000 for t in [0, 1]).
        max_period: longest period of the features, in units of ``value * scale``.
    """

    def __init__(self, dim: int, frequency_dim: int = 256, scale: float = 1.0,
                 max_period: float = 10000.0) -> None:
        super().__init__()
        if frequency_dim % 2:
            raise ValueError(f"frequency_dim must be even, got {frequency_dim}")
        self.scale = scale
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.fc1 = nn.Linear(frequency_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, value: Tensor) -> Tensor:
        """Embeds ``value`` of shape (B,) into (B, dim) (float32 features, weight-dtype output)."""
        # Frequencies are rebuilt in float32 on every call (cheap) rather than stored as a
        # buffer, so casting the module to bf16 cannot round them.
        half = self.frequency_dim // 2
        exponent = torch.arange(half, device=value.device, dtype=torch.float32) / half
        freqs = torch.exp(-math.log(self.max_period) * exponent)
        args = (value.float() * self.scale)[:, None] * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return linear(self.fc2, F.silu(linear(self.fc1, features)))


def joint_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """Scaled-dot-product attention over all tokens with an optional key padding mask.

    Args:
        q, k, v: (B, heads, N, head_dim).
        key_mask: (B, N) bool, True on real tokens; ``None`` when every token is real
            (lets SDPA pick its fastest unmasked kernel).

    Returns:
        (B, N, heads * head_dim).
    """
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)
