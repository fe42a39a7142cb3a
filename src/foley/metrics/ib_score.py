"""ImageBind score (IB-score): audio-visual agreement of generated audio."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from foley.metrics.embedders import check_weights_file
from foley.metrics.generation import GenerationMetric
from foley.metrics.imagebind import (
    IMAGEBIND_FILE,
    IMAGEBIND_URL,
    ImageBind,
    ImageBindAudioEmbedder,
    ImageBindVideoEmbedder,
    imagebind_from_file,
)
from foley.metrics.mean import ClipMean

__all__ = ["ImageBindScore"]


class ImageBindScore(ClipMean, GenerationMetric):
    """IB-score of generated audio against the batch's video (av-benchmark convention).

    The video embedding is taken from ``batch[frames_key]`` (uint8 or [0, 1] frames
    ``(B, T, 3, H, W)`` at ``frames_fps``), subsampled to 0.5 fps, with consecutive frames
    embedded as 2-frame clips and averaged; the audio embedding from the generated audio's
    three 2 s windows at 16 kHz. The score is ``scale`` × the mean over clips of the cosine
    between the two. The per-clip cosines are summed in float64 states, so the value is exact
    under DDP.

    Published tables use ``scale=100`` (MMAudio: 33.22); HunyuanVideo-Foley's Kling-Audio-Eval
    table reports the raw cosine (0.30), i.e. ``scale=1``.

    Args:
        weights_path: local ``imagebind_huge.pth`` (not needed when ``model`` is given).
        seconds: cut/pad length of the generated audio (16 kHz) before windowing.
        frames_key: batch key of the frame stream (the data module's CLIP stream).
        frames_fps: rate of that stream; must be a multiple of 0.5.
        scale: multiplier of the mean cosine.
        name: key of the result.
        model: use this (e.g. tiny, random) ImageBind instead of the official one; for tests.
        kwargs: torchmetrics ``Metric`` options (e.g. ``sync_on_compute``).
    """

    higher_is_better = True

    def __init__(
        self,
        weights_path: str | None = None,
        seconds: float | None = 8.0,
        frames_key: str = "clip_frames",
        frames_fps: float = 8.0,
        scale: float = 100.0,
        name: str = "ib_score",
        model: ImageBind | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        step = frames_fps / 0.5
        if abs(step - round(step)) > 1e-9 or step < 1:
            raise ValueError(f"IB-score samples frames at 0.5 fps; frames_fps must be a multiple of 0.5, got {frames_fps}")
        if model is None:
            path = check_weights_file(weights_path, "ImageBind (huge)", IMAGEBIND_FILE, IMAGEBIND_URL)
            model = imagebind_from_file(path)
        # One network serves both branches: the audio and video embedders share it.
        self.audio = ImageBindAudioEmbedder(seconds=seconds, model=model)
        self.video = ImageBindVideoEmbedder(model=model)
        self.step = round(step)
        self.frames_key = frames_key
        self.scale = float(scale)
        self.name = name

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        """Embed generated audio ``(B, C, N)`` at ``sample_rate`` and the batch's frames, and
        add the clips' cosines."""
        frames = batch.get(self.frames_key)
        if frames is None or frames.dim() != 5:
            raise ValueError(
                f"IB-score needs batch[{self.frames_key!r}] frames (B, T, 3, H, W); got "
                f"{None if frames is None else tuple(frames.shape)}"
            )
        frames = frames[:, :: self.step]
        frames = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        audio_embedding, _ = self.audio.embed(generated, sample_rate)
        video_embedding = self.video(frames.to(audio_embedding.device))
        self.accumulate(F.cosine_similarity(video_embedding.double(), audio_embedding.double(), dim=-1))

    def compute(self) -> dict[str, Tensor]:
        """``{name: scale × mean cosine}`` over all clips so far."""
        return {self.name: self.scale * super().compute()}
