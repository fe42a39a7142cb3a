"""Frame preprocessing shared by the visual condition encoders.

Frames arrive as uint8 ``(B, T, 3, H, W)`` from the DataModule and are normalised on
the encoder's device, so the data loader never ships float video.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Preprocess", "Resize", "frames_to_float", "prepare_images", "resize_center_crop", "resize_uint8", "require"]

Resize = Literal["center", "stretch"]
"""How a frame of another size reaches the square model input: ``"center"`` scales the short
side to the input size and crops the centre; ``"stretch"`` resizes the whole frame to the
square (aspect ratio not kept)."""

Preprocess = Literal["foley", "torchvision"]
"""Order and arithmetic of the frame preprocessing. ``"foley"``: scale to [0, 1] (``x / 255``),
normalise, then resize the float images (bicubic, antialiased). ``"torchvision"``: resize the
uint8 frames on the CPU with torchvision's ``Resize`` (bicubic, antialiased, rounded back to
uint8), then ``ToDtype(float32, scale=True)`` (``x * (1 / 255)``) and ``Normalize``, the
transforms MMAudio's ``load_video`` applies; the result is bit-identical to those transforms."""


def require(requirement: str, what: str) -> None:
    """Raise a clear ``ModuleNotFoundError`` when an optional dependency is missing.

    Args:
        requirement: A pip requirement string, e.g. ``"open_clip_torch>=3"``.
        what: What needs it (used in the message).
    """
    from lightning_utilities.core.imports import RequirementCache

    available = RequirementCache(requirement)
    if not available:
        raise ModuleNotFoundError(
            f"{what} needs {requirement!r}, which is not installed ({available.message}). "
            "Install the encoder extras with `pip install foley[encoders]`."
        )


def frames_to_float(frames: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Scale uint8 frames ``(..., 3, H, W)`` to [0, 1] and normalise per channel."""
    if frames.dtype == torch.uint8:
        images = frames.float() / 255.0
    else:
        images = frames.float()
    shape = (3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t


def resize_center_crop(images: Tensor, size: int) -> Tensor:
    """Bicubic-resize the short side of ``(N, 3, H, W)`` images to ``size``, then centre-crop.

    A no-op when the images already have the target size (the DataModule usually
    delivers them that way).
    """
    height, width = images.shape[-2:]
    if height == size and width == size:
        return images
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top : top + size, left : left + size]


def resize_uint8(frames: Tensor, size: int, resize: Resize) -> Tensor:
    """Resize uint8 frames ``(N, 3, H, W)`` to ``size x size`` with torchvision on the CPU.

    ``"stretch"`` is ``Resize((size, size))``; ``"center"`` is ``Resize(size)`` (short side to
    ``size``, long side ``int(size * long / short)``) then ``CenterCrop(size)``; both bicubic
    with antialiasing, as MMAudio's ``load_video``. The CPU runs torchvision's native uint8
    kernel (integer arithmetic, the intermediate pass stored as uint8); a CUDA tensor would go
    through float interpolation instead and differ by many levels at sharp edges, so frames on
    another device are resized on the CPU and moved back.
    """
    from torchvision.transforms.v2 import functional as TF

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"resize_uint8 expects uint8 frames (N, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    if resize not in ("center", "stretch"):
        raise ValueError(f"resize must be 'center' or 'stretch', got {resize!r}")
    if tuple(frames.shape[-2:]) == (size, size):
        return frames
    images = frames.cpu()
    bicubic = TF.InterpolationMode.BICUBIC
    if resize == "stretch":
        images = TF.resize(images, [size, size], interpolation=bicubic, antialias=True)
    else:
        images = TF.center_crop(TF.resize(images, [size], interpolation=bicubic, antialias=True), [size, size])
    return images.contiguous().to(frames.device)


def prepare_images(
    frames: Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: Resize = "center",
    preprocess: Preprocess = "foley",
) -> Tensor:
    """Frames ``(N, 3, H, W)`` (uint8, or float in [0, 1]) to normalised float32 model input ``(N, 3, size, size)``.

    Args:
        frames: The frames.
        size: Model input side.
        mean: Per-channel mean of the [0, 1] images.
        std: Per-channel standard deviation.
        resize: ``"center"`` or ``"stretch"`` (see :data:`Resize`); frames of the input size are not resized.
        preprocess: ``"foley"`` or ``"torchvision"`` (see :data:`Preprocess`).
    """
    if preprocess == "torchvision":
        if frames.dtype != torch.uint8:
            raise ValueError("preprocess='torchvision' resizes uint8 frames; got " + str(frames.dtype))
        images = resize_uint8(frames, size, resize).to(torch.float32).mul_(1.0 / 255)
        shape = (3, 1, 1)
        mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
        std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
        return images.sub_(mean_t).div_(std_t)
    if preprocess != "foley":
        raise ValueError(f"preprocess must be 'foley' or 'torchvision', got {preprocess!r}")
    images = frames_to_float(frames, mean, std)
    if resize == "stretch":
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return images
    if resize != "center":
        raise ValueError(f"resize must be 'center' or 'stretch', got {resize!r}")
    return resize_center_crop(images, size)
