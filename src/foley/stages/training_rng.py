"""Random draws of a training step that a resumed run repeats exactly.

A stage's training randomness (flow-matching times and noise, condition dropout, posterior
samples, random crops) comes from one ``torch.Generator`` seeded afresh for every batch
from ``(seed, DDP rank, epoch, batch index)``. Lightning restores the epoch and batch index
of a mid-epoch checkpoint, so a run killed at any step and resumed draws exactly what the
uninterrupted run drew, on every rank, without saving (or gathering across ranks) any
generator state; only the seed travels in the checkpoint. Global RNGs are never used by
the training step: other consumers (DataLoader base seeds, callbacks) draw from them a
different number of times after a restart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule

__all__ = ["StepGenerator"]


class StepGenerator:
    """Per-batch training generator of a LightningModule.

    The seed is ``torch.initial_seed()`` at the first training batch (what
    ``seed_everything`` set) unless a checkpoint restored one.
    """

    CHECKPOINT_KEY = "foley_training_seed"

    def __init__(self) -> None:
        self.seed: int | None = None
        self._generator: torch.Generator | None = None

    def __call__(self, module: LightningModule, batch_idx: int) -> torch.Generator:
        """The generator for training batch ``batch_idx`` of the module's current epoch, on its device."""
        if self.seed is None:
            self.seed = int(torch.initial_seed())
        device = module.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        values = [self.seed, module.global_rank, module.current_epoch, batch_idx]
        self._generator.manual_seed(int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0]))
        return self._generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the seed (a resumed run must not depend on being given the same seed again)."""
        if self.seed is not None:
            checkpoint[self.CHECKPOINT_KEY] = self.seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adopt the seed of the run that wrote ``checkpoint`` (checkpoints without one keep ours)."""
        if self.CHECKPOINT_KEY in checkpoint:
            self.seed = int(checkpoint[self.CHECKPOINT_KEY])
