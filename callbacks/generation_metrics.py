"""Validation-time generation metrics: generate for a fixed subset, score it, log examples."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from foley.metrics.generation import GenerationMetric
from foley.metrics.synthetic import SyntheticWorldMetric

__all__ = ["GenerationMetricsCallback", "slice_batch", "resolve_sample_rate", "write_examples"]

logger = logging.getLogger(__name__)


def slice_batch(batch: Mapping[str, Any], count: int) -> dict[str, Any]:
    """The first ``count`` samples of a batch dict (tensors and lists along dim 0)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            out[key] = value[:count]
        elif isinstance(value, (list, tuple)):
            out[key] = type(value)(value[:count])
        else:
            out[key] = value
    return out


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Number of samples in a batch dict (from ``audio``, ``key`` or ``meta``)."""
    for key in ("audio", "audio_mono", "key", "meta"):
        if key in batch:
            return len(batch[key])
    raise ValueError(f"cannot tell the batch size of a batch with keys {sorted(batch)}")


def resolve_sample_rate(explicit: int | None, trainer: pl.Trainer | None, pl_module: nn.Module) -> int:
    """The generated audio's rate: the explicit value, else the datamodule's, else the module's."""
    if explicit is not None:
        return int(explicit)
    for owner in (getattr(trainer, "datamodule", None), pl_module):
        rate = getattr(owner, "sample_rate", None)
        if isinstance(rate, (int, float)) and rate > 0:
            return int(rate)
    raise ValueError(
        "GenerationMetricsCallback: set sample_rate, or give the datamodule or the LightningModule a sample_rate attribute"
    )


def _spectrogram_figure(wave: Tensor, sample_rate: int, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    channels = wave.shape[0]
    fig, axes = plt.subplots(channels, 1, figsize=(8, 2.2 * channels), squeeze=False)
    n_fft = 1024
    for c in range(channels):
        spec = torch.stft(wave[c].float(), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
        db = 20 * torch.log10(spec.abs() + 1e-5)
        seconds = wave.shape[-1] / sample_rate
        axes[c, 0].imshow(db.numpy(), origin="lower", aspect="auto", extent=(0, seconds, 0, sample_rate / 2000), vmin=-100, vmax=20)
        axes[c, 0].set_ylabel("kHz" if channels == 1 else ("L kHz" if c == 0 else "R kHz"))
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("s")
    fig.tight_layout()
    return fig


def write_examples(folder: Path, name: str, generated: Tensor, reference: Tensor | None, sample_rate: int) -> list[Path]:
    """Write ``<name>_generated.wav``/``.png`` (and the reference) atomically; return the paths."""
    import soundfile

    from foley.io.atomic import atomic_path

    written = []
    pairs = [("generated", generated)] + ([("reference", reference)] if reference is not None else [])
    for kind, wave in pairs:
        wav = folder / f"{name}_{kind}.wav"
        with atomic_path(wav) as tmp:
            soundfile.write(str(tmp), wave.clamp(-1, 1).T.numpy(), sample_rate, format="WAV", subtype="PCM_16")
        png = folder / f"{name}_{kind}.png"
        fig = _spectrogram_figure(wave, sample_rate, f"{name} {kind}")
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        import matplotlib.pyplot as plt

        plt.close(fig)
        written += [wav, png]
    return written


class GenerationMetricsCallback(Callback):
    """Every ``every_n_epochs`` validation epochs, generate audio for the first ``num_samples``
    validation samples of this process (the validation loader is not shuffled, and generation
    runs under a fixed seed, so the subset and the noise are the same every time), score it
    with ``metrics`` and log ``<prefix>/<name>`` with ``sync_dist=True``.

    Only ``pl_module.generate(batch) -> (B, C, N)`` is used. The first ``log_audio_examples``
    clips are logged as audio and spectrogram images to TensorBoard when it is the logger,
    and always written as wav/png under ``<log_dir>/generation_examples/epoch=<E>/``.

    Args:
        every_n_epochs: run on validation epochs ``0, N, 2N, ...``.
        num_samples: clips generated per process.
        seed: RNG seed for generation (RNG state outside the callback is untouched).
        metrics: what to compute; default: the exact synthetic-world evaluator.
        log_audio_examples: clips written/logged as examples.
        sample_rate: rate of the generated audio (default: datamodule's or module's).
        prefix: namespace of the logged keys.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 8,
        seed: int = 0,
        metrics: Sequence[GenerationMetric] | None = None,
        log_audio_examples: int = 2,
        sample_rate: int | None = None,
        prefix: str = "gen",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.metrics = nn.ModuleList(list(metrics) if metrics is not None else [SyntheticWorldMetric()])
        self.log_audio_examples = log_audio_examples
        self.sample_rate = sample_rate
        self.prefix = prefix
        self._active = False
        self._seen = 0
        self._examples = 0

    def _due(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = self._due(trainer)
        self._seen = 0
        self._examples = 0
        if self._active:
            self.metrics.to(pl_module.device)
            for metric in self.metrics:
                metric.reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or self._seen >= self.num_samples or dataloader_idx != 0:
            return
        count = min(batch_size_of(batch), self.num_samples - self._seen)
        subset = slice_batch(batch, count)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + 7919 * self._seen)
            generated = pl_module.generate(subset)
        if generated.dim() == 2:
            generated = generated[:, None]
        sample_rate = resolve_sample_rate(self.sample_rate, trainer, pl_module)
        for metric in self.metrics:
            metric.update(generated, subset, sample_rate)
        self._log_examples(trainer, generated, subset, sample_rate)
        self._seen += count

    def _log_examples(self, trainer: pl.Trainer, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        if not trainer.is_global_zero:
            return
        keys = batch.get("key") or [f"sample{self._seen + i}" for i in range(generated.shape[0])]
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "generation_examples" / f"epoch={trainer.current_epoch:04d}"
        for i in range(generated.shape[0]):
            if self._examples >= self.log_audio_examples:
                return
            length = generated.shape[-1]
            if "seconds_total" in batch:
                length = min(length, round(float(batch["seconds_total"][i]) * sample_rate))
            wave = generated[i, :, :length].detach().float().cpu()
            reference = batch["audio"][i, :, :length].detach().float().cpu() if "audio" in batch else None
            name = f"{self._examples:02d}_{keys[i]}"
            write_examples(folder, name, wave, reference, sample_rate)
            for log in trainer.loggers:
                if isinstance(log, TensorBoardLogger):
                    tag = f"{self.prefix}_examples/{name}"
                    log.experiment.add_audio(tag, wave.mean(0).clamp(-1, 1), trainer.global_step, sample_rate)
                    log.experiment.add_figure(f"{tag}_spectrogram", _spectrogram_figure(wave, sample_rate, name), trainer.global_step)
            self._examples += 1

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        for metric in self.metrics:
            for name, value in metric.compute().items():
                value = float(value)
                # Metric states are already reduced over processes, so every rank sees the
                # same NaN pattern and skipping NaNs keeps the logged keys identical.
                if math.isnan(value):
                    continue
                pl_module.log(f"{self.prefix}/{name}", value, sync_dist=True)
