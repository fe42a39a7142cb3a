"""Already decoded frames, looked up by time like a :class:`~foley.io.video.VideoFile`."""
from __future__ import annotations

import numpy as np
from torch import Tensor

from foley.io.video import DEFAULT_PTS_TOLERANCE, FrameRule, frame_indices

__all__ = ["DecodedFrames"]


class DecodedFrames:
    """Already decoded video frames at a constant rate, read by time like a :class:`VideoFile`.

    Args:
        frames: uint8 ``(T, H, W, 3)`` (numpy or torch), frame ``i`` on screen from ``i / fps``.
        fps: frame rate.
        name: how to call the frames in messages.
    """

    def __init__(self, frames: np.ndarray | Tensor, fps: float, name: str = "frames") -> None:
        array = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
            raise ValueError(
                f"{name}: expected uint8 frames (T, H, W, 3) with T > 0, got {array.dtype} {tuple(array.shape)}"
            )
        if not fps or fps <= 0:
            raise ValueError(f"{name}: decoded frames need their frame rate (fps > 0), got {fps!r}")
        self.name = name
        self.fps = float(fps)
        self.array = array
        self.starts = np.arange(array.shape[0], dtype=np.float64) / self.fps
        self.pts_times = self.starts
        self.duration = array.shape[0] / self.fps

    def frames_at(self, times: np.ndarray, tolerance: float = DEFAULT_PTS_TOLERANCE, rule: FrameRule = "on_screen") -> np.ndarray:
        """Frames at ``times`` (clamped to the first and last frame): on screen, or by ``rule``
        (:data:`~foley.io.video.FrameRule`; frame ``i`` starts at ``i / fps``)."""
        return self.array[frame_indices(self.starts, times, rule, tolerance)]
