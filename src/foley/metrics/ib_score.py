"""ImageBind score: audio-visual agreement of generated audio."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from foley.metrics.mean import ClipMean

__all__ = ["ImageBindScore"]


class ImageBindScore(ClipMean):
    """Mean cosine similarity × ``scale`` between paired video and audio embeddings (IB-score).

    Published tables use ``scale=100`` (MMAudio: 33.22); HunyuanVideo-Foley's Kling-Audio-Eval
    table reports the raw cosine (0.30), i.e. ``scale=1``.

    Args:
        scale: multiplier of the mean cosine.
    """

    higher_is_better = True

    def __init__(self, scale: float = 100.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)

    def update(self, video_embeddings: Tensor, audio_embeddings: Tensor) -> None:
        """Add ``(B, D)`` video and audio embeddings of the same clips."""
        self.accumulate(F.cosine_similarity(video_embeddings.detach().double(), audio_embeddings.detach().double(), dim=-1))

    def compute(self) -> Tensor:
        return self.scale * super().compute()
