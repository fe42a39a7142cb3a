"""Exponential moving average of network weights (stage 2 validates and generates with it)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_decay", "update_ema"]


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """The decay at optimiser ``step``: ``min(decay, (1 + step) / (10 + step))`` with ``warmup``,
    so early averages are not dominated by the random initialisation."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema_network: nn.Module, network: nn.Module, decay: float, only_trainable: bool = False) -> None:
    """Fold ``network``'s parameters into ``ema_network``'s (``ema ← decay·ema + (1 − decay)·w``);
    buffers are copied, as they are statistics rather than trained weights. ``only_trainable``
    skips frozen parameters (a LoRA adapter's base, which the two networks share)."""
    pairs = [(e, p) for e, p in zip(ema_network.parameters(), network.parameters()) if p.requires_grad or not only_trainable]
    ema_params = [e for e, _ in pairs]
    params = [p.detach().to(e.dtype) for e, p in pairs]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema_network.buffers(), network.buffers()):
        ema_buffer.copy_(buffer)
