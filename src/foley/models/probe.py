"""A deliberately small audio-visual network used to exercise the training stack.

It predicts the audio loudness envelope at the sync frame rate from frame-to-frame
motion. It is the cheapest model that still has to use the video to lower its loss,
which makes it a useful smoke test for the CLI, the DataModule and distributed runs.
"""
from __future__ import annotations

import torch
from torch import nn


class MotionLoudnessNet(nn.Module):
    """Maps per-frame motion features of a video stream to per-frame log loudness.

    Args:
        hidden: width of the temporal convolutions.
        kernel_size: temporal receptive field of each convolution, in frames.
        pooled_size: frames are average-pooled to ``pooled_size``² pixels first.
    """

    def __init__(self, hidden: int = 32, kernel_size: int = 5, pooled_size: int = 8) -> None:
        super().__init__()
        self.pooled_size = pooled_size
        in_features = 3 * pooled_size * pooled_size
        self.net = nn.Sequential(
            nn.Conv1d(in_features, hidden, kernel_size, padding=kernel_size // 2),
            nn.GELU(),
            nn.Conv1d(hidden, 1, kernel_size, padding=kernel_size // 2),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Args:
            frames: uint8 or float video ``(B, T, 3, H, W)``.

        Returns:
            ``(B, T)`` predicted log loudness per frame.
        """
        b, t = frames.shape[:2]
        x = frames.float().flatten(0, 1) / 255.0
        x = nn.functional.adaptive_avg_pool2d(x, self.pooled_size).reshape(b, t, -1)
        # Motion, not appearance, says when something sounds: use temporal differences.
        motion = torch.diff(x, dim=1, prepend=x[:, :1])
        return self.net(motion.transpose(1, 2)).squeeze(1)
