"""BigVGAN-v2 style vocoder: log-mel → waveform with anti-aliased SnakeBeta activations.

The module tree (names and shapes) follows the public BigVGAN-v2 generator so that the
MIT-licensed ``bigvgan_generator.pt`` files load without renaming; see
``load_bigvgan_checkpoint``. Weight norm uses the parametrization API; the loader maps the
legacy ``weight_g`` / ``weight_v`` names and also accepts checkpoints whose weight norm
was removed (plain ``weight``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from foley.configurable import Configurable

__all__ = [
    "BigVGAN",
    "SnakeBeta",
    "Activation1d",
    "AMPBlock1",
    "kaiser_sinc_filter1d",
    "load_bigvgan_checkpoint",
    "to_module_state_dict",
]

logger = logging.getLogger(__name__)

_WN_G = ".parametrizations.weight.original0"
_WN_V = ".parametrizations.weight.original1"


def kaiser_sinc_filter1d(cutoff: float, half_width: float, kernel_size: int) -> Tensor:
    """Kaiser-windowed sinc low-pass filter ``(1, 1, kernel_size)`` with unit DC gain.

    Args:
        cutoff: Cutoff as a fraction of the sample rate (0.25 = half the Nyquist band).
        half_width: Transition half-width, same unit.
        kernel_size: Taps.
    """
    even = kernel_size % 2 == 0
    half_size = kernel_size // 2
    # Kaiser's empirical formulas: attenuation A (dB) from the transition width, beta from A.
    attenuation = 2.285 * (half_size - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False, dtype=torch.float64)
    if even:
        time = torch.arange(-half_size, half_size, dtype=torch.float64) + 0.5
    else:
        time = torch.arange(kernel_size, dtype=torch.float64) - half_size
    if cutoff == 0:
        taps = torch.zeros_like(time)
    else:
        taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
        taps = taps / taps.sum()
    return taps.float().view(1, 1, kernel_size)


class LowPassFilter1d(nn.Module):
    """Depthwise low-pass filter with optional striding and replicate padding."""

    def __init__(self, cutoff: float = 0.5, half_width: float = 0.6, stride: int = 1, kernel_size: int = 12) -> None:
        super().__init__()
        self.stride = stride
        self.pad_left = kernel_size // 2 - int(kernel_size % 2 == 0)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_filter1d(cutoff, half_width, kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)


class UpSample1d(nn.Module):
    """Band-limited ×ratio upsampling (zero-stuffing + Kaiser-sinc interpolation)."""

    def __init__(self, ratio: int = 2, kernel_size: int | None = None) -> None:
        super().__init__()
        self.ratio = ratio
        self.kernel_size = kernel_size or int(6 * ratio // 2) * 2
        self.pad = self.kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (self.kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (self.kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, self.kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio, groups=channels)
        return x[..., self.crop_left : x.shape[-1] - self.crop_right]


class DownSample1d(nn.Module):
    """Band-limited ÷ratio downsampling."""

    def __init__(self, ratio: int = 2, kernel_size: int | None = None) -> None:
        super().__init__()
        kernel_size = kernel_size or int(6 * ratio // 2) * 2
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, stride=ratio, kernel_size=kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """Periodic activation ``x + sin²(αx) / β`` with per-channel α, β (optionally log-scale).

    Args:
        channels: Feature channels.
        alpha_logscale: Store α and β as logarithms (BigVGAN-v2 convention).
    """

    def __init__(self, channels: int, alpha_logscale: bool = True) -> None:
        super().__init__()
        self.alpha_logscale = alpha_logscale
        init = torch.zeros(channels) if alpha_logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init.clone())
        self.beta = nn.Parameter(init.clone())

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.view(1, -1, 1)
        beta = self.beta.view(1, -1, 1)
        if self.alpha_logscale:
            alpha, beta = alpha.exp(), beta.exp()
        return x + torch.sin(x * alpha).pow(2) / (beta + 1e-9)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample ×2, apply the nonlinearity, low-pass and downsample ×2."""

    def __init__(self, activation: nn.Module, up_ratio: int = 2, down_ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.act = activation
        self.upsample = UpSample1d(up_ratio, kernel_size)
        self.downsample = DownSample1d(down_ratio, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """Anti-aliased multi-periodicity residual block (BigVGAN resblock type "1").

    Args:
        channels: Feature channels.
        kernel_size: Convolution kernel.
        dilations: One dilated conv (followed by an undilated conv) per entry.
        alpha_logscale: SnakeBeta parameter storage.
    """

    def __init__(
        self, channels: int, kernel_size: int = 3, dilations: Sequence[int] = (1, 3, 5), alpha_logscale: bool = True
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=1, padding=_same_padding(kernel_size, 1)))
            for _ in dilations
        )
        self.activations = nn.ModuleList(
            Activation1d(SnakeBeta(channels, alpha_logscale)) for _ in range(2 * len(dilations))
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations[::2], self.activations[1::2]):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class BigVGAN(Configurable, nn.Module):
    """BigVGAN-v2 generator: log-mel ``(B, num_mels, F)`` → waveform ``(B, 1, F · prod(upsample_rates))``.

    The defaults are the public 44.1 kHz / 128-band / 512× configuration (≈122 M
    parameters); smaller vocoders only change the channel/kernel lists.

    Args:
        num_mels: Input mel bands.
        upsample_rates: Per-stage upsampling factors; their product is the hop length.
        upsample_kernel_sizes: Transposed-conv kernel per stage.
        upsample_initial_channel: Channels after ``conv_pre``; halved at each stage.
        resblock_kernel_sizes: Kernel of each parallel AMP block.
        resblock_dilation_sizes: Dilations of each parallel AMP block.
        snake_logscale: Store SnakeBeta parameters in log scale.
        use_tanh_at_final: Squash the output with tanh instead of clamping to [-1, 1].
        use_bias_at_final: Bias on the output convolution.
    """

    def __init__(
        self,
        num_mels: int = 128,
        upsample_rates: Sequence[int] = (8, 4, 2, 2, 2, 2),
        upsample_kernel_sizes: Sequence[int] = (16, 8, 4, 4, 4, 4),
        upsample_initial_channel: int = 1536,
        resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
        resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        snake_logscale: bool = True,
        use_tanh_at_final: bool = False,
        use_bias_at_final: bool = False,
    ) -> None:
        super().__init__()
        if len(upsample_rates) != len(upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        if len(resblock_kernel_sizes) != len(resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if upsample_initial_channel % (2 ** len(upsample_rates)):
            raise ValueError("upsample_initial_channel must be divisible by 2 ** len(upsample_rates)")
        self.num_mels = num_mels
        self.hop_length = math.prod(upsample_rates)
        self.use_tanh_at_final = use_tanh_at_final
        self.num_kernels = len(resblock_kernel_sizes)

        self.conv_pre = weight_norm(nn.Conv1d(num_mels, upsample_initial_channel, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes):
            self.ups.append(
                nn.ModuleList(
                    [
                        weight_norm(
                            nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)
                        )
                    ]
                )
            )
            channels //= 2
            for res_kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(AMPBlock1(channels, res_kernel, dilations, snake_logscale))
        self.activation_post = Activation1d(SnakeBeta(channels, snake_logscale))
        self.conv_post = weight_norm(nn.Conv1d(channels, 1, 7, 1, padding=3, bias=use_bias_at_final))
        self.apply(self._init_conv)

    @staticmethod
    def _init_conv(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and parametrize.is_parametrized(module, "weight"):
            # Small initial weights keep the untrained output near silence (HiFi-GAN practice).
            with torch.no_grad():
                module.parametrizations.weight.original1.normal_(0.0, 0.01)
                original = module.parametrizations.weight.original1
                # weight_norm keeps dim=0 for both layer kinds (as the official checkpoints do).
                module.parametrizations.weight.original0.copy_(
                    torch.linalg.vector_norm(original, dim=tuple(range(1, original.dim())), keepdim=True)
                )

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)
        for stage, ups in enumerate(self.ups):
            for up in ups:
                x = up(x)
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.use_tanh_at_final else torch.clamp(x, -1.0, 1.0)


def to_module_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a BigVGAN state dict into ``model``'s own naming.

    Accepts the legacy weight-norm names (``<layer>.weight_g`` / ``<layer>.weight_v``),
    the parametrization names, and checkpoints saved after weight norm was removed
    (``<layer>.weight``); for the latter the plain weight is split into magnitude and
    direction so the weight-normed model computes exactly that weight.

    Args:
        state_dict: Generator weights from a checkpoint.
        model: The model that will load them.
    """
    own_keys = set(model.state_dict().keys())
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            converted[key[: -len(".weight_g")] + _WN_G] = value
        elif key.endswith(".weight_v"):
            converted[key[: -len(".weight_v")] + _WN_V] = value
        elif key.endswith(".weight") and key not in own_keys and key[: -len(".weight")] + _WN_V in own_keys:
            prefix = key[: -len(".weight")]
            converted[prefix + _WN_V] = value
            if value.is_meta:
                converted[prefix + _WN_G] = torch.empty(
                    (value.shape[0],) + (1,) * (value.dim() - 1), device="meta", dtype=value.dtype
                )
            else:
                converted[prefix + _WN_G] = torch.linalg.vector_norm(
                    value, dim=tuple(range(1, value.dim())), keepdim=True
                )
        else:
            converted[key] = value
    return converted


def load_bigvgan_checkpoint(
    model: BigVGAN, path: str | os.PathLike[str], strict: bool = True, map_location: str | torch.device = "cpu"
) -> BigVGAN:
    """Load BigVGAN generator weights from a local file into ``model``.

    Supports the official ``bigvgan_generator.pt`` layout (``{"generator": state_dict}``),
    a flat state dict, and safetensors files, with legacy or removed weight norm.

    Args:
        model: Generator whose configuration matches the checkpoint.
        path: Local checkpoint path (no download happens here).
        strict: Require exactly matching keys.
        map_location: Device the tensors are loaded onto.

    Returns:
        ``model`` with the weights loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"BigVGAN checkpoint {path!r} not found; download bigvgan_generator.pt from "
            "https://huggingface.co/nvidia/bigvgan_v2_44khz_128band_512x and pass its local path"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        payload: Mapping[str, object] = load_file(path, device=str(map_location))
    else:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    state_dict = payload.get("generator", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(
            f"{path!r} does not hold a BigVGAN generator state dict (expected a dict of tensors, "
            "optionally under the key 'generator')"
        )
    try:
        model.load_state_dict(to_module_state_dict(state_dict, model), strict=strict)
    except RuntimeError as error:
        raise RuntimeError(
            f"BigVGAN weights in {path!r} do not match this generator's configuration "
            f"(check num_mels/upsample_rates/channels): {error}"
        ) from error
    logger.info("loaded BigVGAN generator weights from %s", path)
    return model
