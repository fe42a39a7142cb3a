"""ImageBind score: audio-visual agreement of generated audio."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

__all__ = ["ImageBindScore"]


class ImageBindScore(Metric):
    """Mean cosine similarity × ``scale`` between paired video and audio embeddings (IB-score).

    Published tables use ``scale=100`` (MMAudio: 33.22); HunyuanVideo-Foley's Kling-Audio-Eval
    table reports the raw cosine (0.30), i.e. ``scale=1``.

    Args:
        scale: multiplier of the mean cosine.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, scale: float = 100.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, video_embeddings: Tensor, audio_embeddings: Tensor) -> None:
        """Add ``(B, D)`` video and audio embeddings of the same clips."""
        cosine = F.cosine_similarity(video_embeddings.detach().double(), audio_embeddings.detach().double(), dim=-1)
        self.total = self.total + cosine.sum()
        self.count = self.count + cosine.numel()

    def compute(self) -> Tensor:
        return self.scale * self.total / self.count
