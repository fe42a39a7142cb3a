"""Inception Score of generated audio from classifier (PANNs) logits."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["inception_score", "InceptionScore"]


def inception_score(logits: Tensor, splits: int = 10) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over ``splits`` consecutive chunks of
    ``exp(E_x KL(p(y|x) ‖ p(y)))``, with ``p(y)`` the chunk's mean prediction."""
    if logits.shape[0] < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} clips, got {logits.shape[0]}")
    log_p = F.log_softmax(logits.double(), dim=-1)
    scores = []
    for chunk in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(chunk, dim=0) - torch.log(torch.tensor(float(chunk.shape[0]), dtype=chunk.dtype))
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=-1).mean()
        scores.append(kl.exp())
    stacked = torch.stack(scores)
    return stacked.mean(), stacked.std(unbiased=False) if splits > 1 else torch.zeros((), dtype=stacked.dtype)


class InceptionScore(Metric):
    """Inception Score over all generated clips (IS, PANNs logits, 10 splits).

    Clips are split in the order they were added; under DDP that order is rank-major after
    gathering, so per-split values (not the statistic's meaning) depend on the world size.

    Args:
        splits: number of chunks the clips are split into.
        num_classes: number of classes; lets a process that saw no clips take part in the
            DDP gather with an empty ``(0, num_classes)`` tensor (give it under DDP).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, splits: int = 10, num_classes: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.splits = int(splits)
        self.num_classes = num_classes
        self.add_state("logits", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor) -> None:
        """Add ``(B, C)`` class logits of generated clips."""
        self.logits.append(logits.detach().double())

    def sync(self, *args, **kwargs) -> None:
        # torchmetrics gathers an empty list state as a 1-D tensor, which does not match the
        # (n, C) tensors of the other processes; send a correctly shaped empty one instead.
        if isinstance(self.logits, list) and not self.logits and self.num_classes:
            self.logits.append(torch.zeros(0, self.num_classes, dtype=torch.float64, device=self.device))
        super().sync(*args, **kwargs)

    def compute(self) -> Tensor:
        """The mean over splits; NaN (with a warning) when there are fewer clips than splits."""
        logits = dim_zero_cat(self.logits)
        if logits.shape[0] < self.splits:
            warnings.warn(f"InceptionScore: {logits.shape[0]} clips for {self.splits} splits; returning NaN", stacklevel=2)
            return torch.tensor(float("nan"), dtype=torch.float64)
        mean, _ = inception_score(logits, self.splits)
        return mean
