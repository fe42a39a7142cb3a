"""Generic transformer building blocks shared by foley's networks.

Precision policy: networks may be cast to bfloat16 with ``module.to(torch.bfloat16)``
for fast inference on CPUs with AMX/AVX512-BF16 and on GPUs, without autocast. Matrix
products then run in bf16; every statistic that would overflow or lose precision in bf16
accumulates in float32 (normalisation statistics inside the kernels, sinusoidal
features, rotary angles). Under ``torch.autocast`` with float32 weights the same code
runs the matmuls in the autocast dtype and keeps the residual stream in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RMSNorm",
    "rms_normalize",
    "layer_norm",
    "modulate",
    "linear",
    "MLP",
    "TemporalConvMLP",
    "FeatureStandardizer",
    "SinusoidalEmbedding",
    "joint_attention",
    "TokenConv1d",
    "SwiGLU",
    "swiglu_hidden_dim",
    "InputProjection",
    "token_layer",
    "apply_token_layer",
]


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """Applies ``layer`` after casting ``x`` to the layer's weight dtype.

    Lets a float32 residual stream feed bf16 weights without autocast (which is slow
    on CPU); under autocast the cast is a no-op for float32 weights.
    """
    return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)


def rms_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / rms(x)`` over the last dimension, in ``x``'s dtype.

    ``vector_norm`` accumulates half-precision inputs in float32 and only rounds the
    result (0.4 % in bf16, the same as storing ``x``), so this costs one reduction pass
    plus one multiply; ``F.rms_norm`` on bf16 CPU tensors is several times slower.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).float()
    inverse_rms = torch.rsqrt(norm.square() / x.shape[-1] + eps)
    return x * inverse_rms.to(x.dtype)


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
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        scale = torch.rsqrt(norm.square() / x.shape[-1] + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        return (x * scale).to(x.dtype)  # one rounding of the float32 product


def layer_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Parameter-free LayerNorm over the last dimension in ``x``'s dtype.

    PyTorch's CPU and CUDA kernels accumulate the mean and variance of bf16/fp16
    inputs in float32, so no explicit upcast (an extra pass over memory) is needed.
    """
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def modulate(x: Tensor, shift: Tensor, scale_plus_one: Tensor) -> Tensor:
    """Adaptive-norm modulation ``x * scale_plus_one + shift`` in one fused pass.

    Callers pass ``1 + scale`` (they fold the one into a small per-sample tensor, so the
    per-token tensor is not rebuilt).
    """
    return torch.addcmul(shift, x, scale_plus_one)


class MLP(nn.Module):
    """Two-layer feed-forward block with GELU (exact erf form: on CPU the tanh
    approximation is several times slower in bf16).

    Args:
        dim: input and output width.
        hidden_dim: width of the hidden layer.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.fc2, F.gelu(linear(self.fc1, x)))


class TemporalConvMLP(nn.Module):
    """Residual two-layer MLP whose layers are 1-D convolutions along time.

    Tokens past each sample's valid length are replaced by its last valid token and the
    sequence ends are replicated, so padding never changes a valid token and a
    constant sequence (e.g. a placeholder) maps to a constant sequence.

    Args:
        dim: input and output width.
        hidden_dim: width of the hidden layer.
        kernel_size: odd temporal kernel size.
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.pad = kernel_size // 2
        self.conv1 = nn.Conv1d(dim, hidden_dim, kernel_size)
        self.conv2 = nn.Conv1d(hidden_dim, dim, kernel_size)

    def forward(self, x: Tensor, valid_length: Tensor | None = None) -> Tensor:
        """``x`` (B, T, D) and optional (B,) valid lengths -> (B, T, D)."""
        index = None
        if valid_length is not None:
            index = torch.arange(x.shape[1], device=x.device)[None]
            index = torch.minimum(index, (valid_length.clamp_min(1) - 1)[:, None])[:, None, :]

        def conv(layer: nn.Conv1d, h: Tensor) -> Tensor:  # (B, C, T), padding-proof
            if index is not None:
                h = torch.gather(h, 2, index.expand(-1, h.shape[1], -1))
            return F.conv1d(F.pad(h, (self.pad, self.pad), mode="replicate"), layer.weight, layer.bias)

        h = conv(self.conv1, x.transpose(1, 2).to(self.conv1.weight.dtype))
        h = conv(self.conv2, F.gelu(h))
        return x + h.transpose(1, 2).to(x.dtype)


class FeatureStandardizer(nn.Module):
    """Per-channel standardisation of frozen-encoder features with statistics gathered in training.

    In training mode the first ``warmup_updates`` calls add their (unmasked) tokens to
    cumulative sums, like batch norm with a cumulative average that then freezes; every call
    standardises with the statistics gathered so far (identity before the first update).
    The statistics are buffers, so they are saved with the weights and, under DDP, broadcast
    from rank 0 with the other buffers.

    Why: a frozen encoder's tokens can share a large constant part, with the time-varying
    part that carries the timing an order of magnitude smaller; an Adam-trained input
    projection then learns to read that part correspondingly slowly.

    Args:
        dim: feature channels.
        warmup_updates: training calls that update the statistics.
        eps: variance floor.
    """

    def __init__(self, dim: int, warmup_updates: int = 100, eps: float = 1e-6) -> None:
        super().__init__()
        self.warmup_updates = warmup_updates
        self.eps = eps
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Add the tokens of ``x`` (B, T, D) where ``mask`` (B, T) is True, if still warming up.

        Written without host synchronisation (no ``.item()``/boolean indexing), so it can
        sit in a compiled or CUDA-graphed training step.
        """
        weight = torch.ones(x.shape[:-1], dtype=torch.float64, device=x.device) if mask is None else mask.double()
        weight = weight * (self.updates < self.warmup_updates).double()
        flat = x.detach().double()
        self.count += weight.sum()
        self.total += (flat * weight[..., None]).sum(dim=tuple(range(flat.dim() - 1)))
        self.total_sq += (flat.square() * weight[..., None]).sum(dim=tuple(range(flat.dim() - 1)))
        self.updates += 1

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, D) standardised per channel; updates the statistics while warming up."""
        if self.training:
            self.update(x, mask)
        count = self.count.clamp_min(1.0)
        mean = self.total / count
        std = (self.total_sq / count - mean.square()).clamp_min(0.0).add(self.eps).sqrt()
        # Before the first update (count 0) the layer is the identity.
        return torch.where(self.count > 0, (x.double() - mean) / std, x.double()).to(x.dtype)


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
        # The scale is folded into the frequencies and the powers are taken with float32
        # ``pow``: the same rounding as the DiT/MMAudio reference, whose high frequencies
        # (scale 1e4 with t in [0, 1]) amplify any one-ulp difference into the phase.
        exponent = torch.arange(0, self.frequency_dim, 2, device=value.device, dtype=torch.float32) / self.frequency_dim
        freqs = (1.0 / self.max_period ** exponent) * self.scale
        args = value.float()[:, None] * freqs[None]
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


class TokenConv1d(nn.Conv1d):
    """1-D convolution along the tokens of a ``(B, T, C)`` sequence, "same" padding.

    Tokens where ``mask`` is False (padding at the end of a sample) are zeroed before the
    convolution, so they read as the zero padding of an unpadded sequence and a padded
    batch gives every real token the output it would have alone.

    Args:
        in_channels: input width.
        out_channels: output width.
        kernel_size: odd temporal kernel.
        bias: learn an additive bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``x`` (B, T, in) and optional (B, T) bool mask -> (B, T, out) in the weights' dtype."""
        x = x.to(self.weight.dtype)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def token_layer(in_dim: int, out_dim: int, kernel_size: int = 1, bias: bool = True) -> nn.Module:
    """A per-token ``nn.Linear`` (kernel 1) or a :class:`TokenConv1d` (kernel > 1)."""
    if kernel_size == 1:
        return nn.Linear(in_dim, out_dim, bias=bias)
    return TokenConv1d(in_dim, out_dim, kernel_size, bias=bias)


def apply_token_layer(layer: nn.Module, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Runs a per-token ``nn.Linear`` or a token module taking ``(x, mask)`` (convolutions, projections)."""
    if isinstance(layer, nn.Linear):
        return linear(layer, x)
    return layer(x, mask)


def swiglu_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """Hidden width of a SwiGLU replacing a GELU MLP of ``hidden_dim``.

    Two thirds of it (three matrices instead of two keep the parameter count), rounded up to
    a multiple of ``multiple_of`` (the LLaMA / SD3 / MMAudio convention).
    """
    width = int(2 * hidden_dim / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward block ``w2(silu(w1 x) * w3 x)`` without biases.

    With ``kernel_size > 1`` the three maps are convolutions along the tokens (a
    convolutional MLP, as in MMAudio's audio and CLIP streams).

    Args:
        dim: input and output width.
        hidden_dim: width of the gated hidden layer (already rounded, see
            :func:`swiglu_hidden_dim`).
        kernel_size: temporal kernel of the three maps (1 = per-token linears).
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.w1 = token_layer(dim, hidden_dim, kernel_size, bias=False)
        self.w2 = token_layer(hidden_dim, dim, kernel_size, bias=False)
        self.w3 = token_layer(dim, hidden_dim, kernel_size, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        gated = F.silu(apply_token_layer(self.w1, x, mask)) * apply_token_layer(self.w3, x, mask)
        return apply_token_layer(self.w2, gated, mask)


_ACTIVATIONS = {"silu": nn.SiLU, "selu": nn.SELU, "gelu": nn.GELU}


class InputProjection(nn.Module):
    """Maps encoder features to the transformer width: a linear/convolution, an optional
    activation and an optional (convolutional) SwiGLU, in sequence (not residual).

    Args:
        in_dim: feature width.
        dim: transformer width.
        kernel_size: temporal kernel of the first map (1 = linear).
        activation: ``"silu"``, ``"selu"``, ``"gelu"`` or ``None``.
        mlp_kernel_size: kernel of the SwiGLU after it (``None`` = no SwiGLU).
        mlp_ratio: the SwiGLU's nominal hidden width as a multiple of ``dim`` (before
            :func:`swiglu_hidden_dim`).
        multiple_of: rounding of the SwiGLU width.
    """

    def __init__(self, in_dim: int, dim: int, kernel_size: int = 1, activation: str | None = None,
                 mlp_kernel_size: int | None = None, mlp_ratio: float = 4.0, multiple_of: int = 256) -> None:
        super().__init__()
        if activation is not None and activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)} or None, got {activation!r}")
        self.proj = token_layer(in_dim, dim, kernel_size)
        self.activation = _ACTIVATIONS[activation]() if activation is not None else None
        self.mlp = (SwiGLU(dim, swiglu_hidden_dim(int(dim * mlp_ratio), multiple_of), mlp_kernel_size)
                    if mlp_kernel_size is not None else None)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, in_dim) -> (B, T, dim) in the weights' dtype."""
        h = apply_token_layer(self.proj, x, mask)
        if self.activation is not None:
            h = self.activation(h)
        return self.mlp(h, mask) if self.mlp is not None else h
