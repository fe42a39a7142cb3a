"""Training recipe for :class:`foley.models.probe.MotionLoudnessNet`."""
from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable

from foley.models.probe import MotionLoudnessNet


def loudness_envelope(audio: torch.Tensor, audio_mask: torch.Tensor, frames: int, eps: float = 1e-4) -> torch.Tensor:
    """Log RMS of ``audio`` ``(B, N)`` in ``frames`` equal windows; padding is excluded.

    Returns:
        ``(B, frames)`` log RMS, one value per video frame interval.
    """
    b, n = audio.shape
    hop = n // frames
    power = (audio[:, : hop * frames] ** 2 * audio_mask[:, : hop * frames]).reshape(b, frames, hop)
    count = audio_mask[:, : hop * frames].reshape(b, frames, hop).sum(-1).clamp_min(1)
    return torch.log(power.sum(-1) / count + eps)


class LoudnessProbeModule(LightningModule):
    """Regresses the audio loudness envelope from the sync frame stream.

    Args:
        network: the motion-to-loudness network.
        optimizer: optimiser factory, called with the network's parameters.
    """

    def __init__(self, network: MotionLoudnessNet, optimizer: OptimizerCallable = torch.optim.Adam) -> None:
        super().__init__()
        self.network = network
        self.optimizer = optimizer

    def _loss(self, batch: dict) -> torch.Tensor:
        frames = batch["sync_frames"]
        target = loudness_envelope(batch["audio_mono"], batch["audio_mask"], frames.shape[1])
        mask = batch["sync_mask"].float()
        err = (self.network(frames) - target) ** 2
        return (err * mask).sum() / mask.sum().clamp_min(1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["audio"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), sync_dist=True, batch_size=batch["audio"].shape[0])

    def configure_optimizers(self):
        return self.optimizer(self.network.parameters())
