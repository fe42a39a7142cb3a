"""Paired KL divergence between classifier predictions on reference and generated audio."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from foley.metrics.mean import ClipMean

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


class PairedKLDivergence(ClipMean):
    """Mean over clips of KL(ground truth ‖ generated) over softmax of class logits (KL_PANNs,
    KL_PaSST, av-benchmark convention: the ground truth is the reference distribution).

    ``update(target_logits, generated_logits)`` takes ``(B, C)`` logits of the same clips in
    the same order.
    """

    higher_is_better = False

    def update(self, target_logits: Tensor, generated_logits: Tensor) -> None:
        self.accumulate(paired_kl_divergence(target_logits.detach(), generated_logits.detach()))
