"""Paired KL divergence between classifier predictions on reference and generated audio."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

__all__ = ["paired_kl_divergence", "PairedKLDivergence"]


def paired_kl_divergence(target_logits: Tensor, generated_logits: Tensor) -> Tensor:
    """Per-clip ``KL(softmax(target) ‖ softmax(generated))`` in nats, float64, shape ``(B,)``."""
    if target_logits.shape != generated_logits.shape:
        raise ValueError(
            f"paired KL needs logits of the same shape, got {tuple(target_logits.shape)} and {tuple(generated_logits.shape)}"
        )
    log_p = F.log_softmax(target_logits.double(), dim=-1)
    log_q = F.log_softmax(generated_logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


class PairedKLDivergence(Metric):
    """Mean over clips of KL(ground truth ‖ generated) over softmax of class logits (KL_PANNs,
    KL_PaSST, av-benchmark convention: the ground truth is the reference distribution).

    ``update(target_logits, generated_logits)`` takes ``(B, C)`` logits of the same clips in
    the same order.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target_logits: Tensor, generated_logits: Tensor) -> None:
        kl = paired_kl_divergence(target_logits.detach(), generated_logits.detach())
        self.total = self.total + kl.sum()
        self.count = self.count + kl.numel()

    def compute(self) -> Tensor:
        return self.total / self.count
