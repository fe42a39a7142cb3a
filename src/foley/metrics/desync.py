"""DeSync: audio-visual offset predicted by the Synchformer AV classifier."""

from __future__ import annotations

import torch
from torch import Tensor

from foley.metrics.mean import ClipMean

__all__ = ["SYNCHFORMER_OFFSETS", "offsets_from_logits", "DeSync"]

# The 21 offset classes of the AV Synchformer (seconds), -2 s .. +2 s in 0.2 s steps.
SYNCHFORMER_OFFSETS = torch.linspace(-2.0, 2.0, 21, dtype=torch.float64)


def offsets_from_logits(logits: Tensor, offsets: Tensor = SYNCHFORMER_OFFSETS) -> Tensor:
    """Offset in seconds of the arg-max class, ``(..., K) -> (...)``."""
    if logits.shape[-1] != offsets.numel():
        raise ValueError(f"expected {offsets.numel()} offset classes, got logits of shape {tuple(logits.shape)}")
    return offsets.to(logits.device)[logits.argmax(dim=-1)]


class DeSync(ClipMean):
    """Mean absolute predicted audio-visual offset in seconds (lower is better).

    ``update(offsets)`` takes ``(B, W)`` predicted offsets per clip and window (av-benchmark:
    W = 2, the first and the last 4.8 s); each clip contributes the mean over its windows.
    """

    higher_is_better = False

    def update(self, offsets: Tensor) -> None:
        if offsets.dim() == 1:
            offsets = offsets[:, None]
        self.accumulate(offsets.detach().double().abs().mean(dim=-1))
