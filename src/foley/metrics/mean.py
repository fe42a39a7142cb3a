"""Per-clip scores averaged over clips, with float64 sum states (exact under DDP)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["ClipMean"]


class ClipMean(Metric):
    """Base of metrics that average one value per clip (KL, IB-score, DeSync)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def accumulate(self, per_clip: Tensor) -> None:
        """Add a ``(B,)`` tensor of per-clip values."""
        per_clip = per_clip.detach().double().reshape(-1)
        self.total = self.total + per_clip.sum()
        self.count = self.count + per_clip.numel()

    def compute(self) -> Tensor:
        return self.total / self.count
