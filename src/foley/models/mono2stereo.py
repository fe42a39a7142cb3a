"""Mono2Stereo: turns a mono log-mel into a left/right pair of log-mels (stage 3).

The network never predicts spectra. It predicts one *pan ratio* per mel bin and frame,
``p = sigmoid(logit) ∈ (0, 1)``, and applies it to the mono mel in the linear-magnitude
domain::

    L = 2·p·M        R = 2·(1 − p)·M        (so (L + R) / 2 = M exactly)

For a source panned by gains ``g_L, g_R`` (amplitude panning, as in the synthetic world
and most mixes) the mono mixdown is ``(g_L + g_R)/2 · S`` and ``p = g_L / (g_L + g_R)``
recovers the true channel mels exactly in every bin one source dominates. The
constraint ``(L + R)/2 = M`` keeps the mono content and level of the stage-2 output
untouched: stage 3 can only redistribute it between the ears.

What makes a sound left or right is where its source is on screen, so the network also
reads a video frame stream: a small CNN keeps the horizontal layout of each frame (and
of its frame-to-frame difference, which lights up whatever moves or hits something),
pools the vertical axis away, and the per-frame features are resampled onto the mel
frame grid. A learnable placeholder stands in for a missing video. The output layer is
zero-initialised, so an untrained network renders every input dead centre (``L = R =
M``); mono content stays centred until training teaches it a cue.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foley.configurable import Configurable

__all__ = ["Mono2Stereo", "apply_pan", "pan_target"]

LOG_MEL_FLOOR = math.log(1e-5)


def apply_pan(mono_mel: Tensor, pan: Tensor, floor: float = LOG_MEL_FLOOR) -> Tensor:
    """Split a mono log-mel into a stereo log-mel with pan ratios ``pan`` (share of the left ear).

    Args:
        mono_mel: ``(B, n_mels, F)`` natural-log mel magnitude.
        pan: ``(B, n_mels, F)`` or broadcastable, values in [0, 1]; 0.5 is centre.
        floor: log-magnitude floor of the mel front end (silence stays silence).

    Returns:
        ``(B, 2, n_mels, F)`` log-mels, channel 0 = left.
    """
    pan = pan.clamp(1e-6, 1.0 - 1e-6)
    left = mono_mel + torch.log(2.0 * pan)
    right = mono_mel + torch.log(2.0 * (1.0 - pan))
    return torch.stack([left, right], dim=1).clamp_min(floor)


def pan_target(stereo_mel: Tensor) -> tuple[Tensor, Tensor]:
    """Ground-truth pan ratio and bin weight from a true stereo log-mel.

    Args:
        stereo_mel: ``(B, 2, n_mels, F)`` log-mels of the left and right channels.

    Returns:
        ``(pan, energy)``: ``pan = L / (L + R)`` in linear magnitude, and ``energy = (L + R) / 2``
        (the linear mono magnitude, used to weight bins by how audible they are).
    """
    linear = stereo_mel.float().exp()
    total = linear.sum(dim=1)
    return linear[:, 0] / total.clamp_min(1e-12), total / 2.0


class _VideoColumns(nn.Module):
    """Per-frame features that keep *where* (horizontally) things are and what moves."""

    def __init__(self, hidden: int, channels: int, size: int, columns: int) -> None:
        super().__init__()
        self.size = size
        self.columns = columns
        self.convs = nn.Sequential(
            nn.Conv2d(6, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
        )
        self.project = nn.Linear(channels * columns, hidden)

    def forward(self, frames: Tensor) -> Tensor:
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1).float() / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="area")
        x = x.reshape(b, t, 3, self.size, self.size)
        motion = torch.diff(x, dim=1, prepend=x[:, :1])
        x = torch.cat([x, motion], dim=2).flatten(0, 1)
        x = self.convs(x)
        # Pool the vertical axis away: panning depends only on the horizontal position.
        x = F.adaptive_avg_pool2d(x, (1, self.columns)).flatten(1)
        return self.project(x).reshape(b, t, -1)


class _ResidualConv(nn.Module):
    def __init__(self, hidden: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)
        self.mix = nn.Conv1d(hidden, hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(F.gelu(self.conv(self.norm(x))))


class Mono2Stereo(Configurable, nn.Module):
    """Predicts per-bin pan ratios from a mono log-mel and (optionally) a video frame stream.

    Args:
        n_mels: mel bands of the codec's front end.
        hidden: channel width of the temporal convolution trunk.
        layers: residual dilated convolution blocks (dilations 1, 2, 4, ... repeat every 4).
        kernel_size: temporal kernel size of the trunk, in mel frames.
        use_video: read the video stream; ``False`` makes a purely audio-driven upmixer.
        video_channels: CNN width of the per-frame video encoder.
        video_size: frames are area-resized to ``video_size``² before the CNN.
        video_columns: horizontal cells kept per frame (the resolution of "where").
    """

    def __init__(
        self,
        n_mels: int = 128,
        hidden: int = 128,
        layers: int = 6,
        kernel_size: int = 5,
        use_video: bool = True,
        video_channels: int = 32,
        video_size: int = 64,
        video_columns: int = 16,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the frame grid centred, got {kernel_size}")
        self.n_mels = n_mels
        self.use_video = use_video
        self.mel_in = nn.Conv1d(n_mels, hidden, 3, padding=1)
        if use_video:
            self.video = _VideoColumns(hidden, video_channels, video_size, video_columns)
            self.no_video = nn.Parameter(torch.zeros(hidden))
        self.trunk = nn.Sequential(*[_ResidualConv(hidden, kernel_size, 2 ** (i % 4)) for i in range(layers)])
        self.out_norm = nn.GroupNorm(1, hidden)
        self.head = nn.Conv1d(hidden, n_mels, 1)
        # Zero head: an untrained network pans nothing (p = 0.5 everywhere).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _video_features(self, frames: Tensor | None, frames_mask: Tensor | None, batch: int, num_frames: int) -> Tensor:
        if frames is None or frames.shape[1] == 0:
            return self.no_video.view(1, -1, 1).expand(batch, -1, num_frames)
        feats = self.video(frames)  # (B, T, hidden)
        if frames_mask is not None:
            keep = frames_mask.to(feats.dtype).unsqueeze(-1)
            feats = feats * keep + self.no_video * (1.0 - keep)
        # Stream frame i covers [i/f, (i+1)/f) and mel frame j covers [j·hop, (j+1)·hop) of
        # the same clip: linear resampling with half-pixel centres maps one grid onto the other.
        return F.interpolate(feats.transpose(1, 2), size=num_frames, mode="linear", align_corners=False)

    def forward(self, mono_mel: Tensor, frames: Tensor | None = None, frames_mask: Tensor | None = None) -> Tensor:
        """Pan logits.

        Args:
            mono_mel: ``(B, n_mels, F)`` natural-log mel of the mono signal.
            frames: uint8 ``(B, T, 3, H, W)`` video stream covering the same time span, or ``None``.
            frames_mask: bool ``(B, T)``, ``True`` on real frames.

        Returns:
            ``(B, n_mels, F)`` logits; ``sigmoid`` of them is the left share ``p``.
        """
        if mono_mel.dim() != 3 or mono_mel.shape[1] != self.n_mels:
            raise ValueError(f"Mono2Stereo expects a (B, {self.n_mels}, F) log-mel, got {tuple(mono_mel.shape)}")
        b, _, num_frames = mono_mel.shape
        # Fixed affine map of the natural-log mel range (about -11.5 … 2) to roughly unit scale.
        x = self.mel_in((mono_mel.float() + 5.0) / 4.0)
        if self.use_video:
            x = x + self._video_features(frames, frames_mask, b, num_frames)
        x = self.trunk(x)
        return self.head(F.gelu(self.out_norm(x)))

    def pan(self, mono_mel: Tensor, frames: Tensor | None = None, frames_mask: Tensor | None = None) -> Tensor:
        """Left share ``p ∈ (0, 1)`` per bin and frame, ``(B, n_mels, F)``."""
        return torch.sigmoid(self(mono_mel, frames, frames_mask))

    def stereo_mel(self, mono_mel: Tensor, frames: Tensor | None = None, frames_mask: Tensor | None = None) -> Tensor:
        """``(B, 2, n_mels, F)`` stereo log-mel whose linear mean is ``mono_mel``."""
        return apply_pan(mono_mel.float(), self.pan(mono_mel, frames, frames_mask))
