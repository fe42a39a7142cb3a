"""Frame preprocessing shared by the visual condition encoders.

Frames arrive as uint8 ``(B, T, 3, H, W)`` from the DataModule and are normalised on
the encoder's device, so the data loader never ships float video.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["frames_to_float", "resize_center_crop", "require"]


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
