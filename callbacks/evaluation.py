"""``foley test``: generate every test clip, cache it, score it and write the report."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from foley.callbacks.generation_metrics import resolve_sample_rate
from foley.evaluate import EvaluationSuite, cache_path, read_cached_audio, write_cached_audio, write_report
from foley.metrics.generation import GenerationMetric

__all__ = ["EvaluationReportCallback"]

logger = logging.getLogger(__name__)


def _run_config(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """The saved LightningCLI config of this run if there is one, else the module's hparams."""
    import yaml

    config: dict[str, Any] = {}
    for folder in {trainer.log_dir, trainer.default_root_dir}:
        path = Path(folder) / "config.yaml" if folder else None
        if path is not None and path.is_file():
            config = yaml.safe_load(path.read_text()) or {}
            break
    if not config:
        config = {"model": {"class_path": type(pl_module).__module__ + "." + type(pl_module).__qualname__,
                            "hparams": {k: repr(v) for k, v in dict(pl_module.hparams).items()}}}
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and "data" not in config:
        config["data"] = {"class_path": type(datamodule).__module__ + "." + type(datamodule).__qualname__,
                          "hparams": {k: repr(v) for k, v in dict(getattr(datamodule, "hparams", {})).items()}}
    return config


class EvaluationReportCallback(Callback):
    """Benchmark a model in ``trainer.test``: generate with ``pl_module.generate(batch)``,
    cache each clip as ``<cache_dir>/<key>.wav`` (float WAV), score with an
    :class:`~foley.evaluate.EvaluationSuite` and write ``report.json`` / ``report.md``
    (every metric overall and per category, plus the run configuration).

    With ``reuse_cache`` a batch whose clips are all cached is scored from the cache
    instead of regenerated, so rerunning ``foley test`` with new metrics re-scores only.
    The LightningModule's own ``test_step`` still runs (e.g. a test loss).

    Args:
        output_dir: report folder (default: ``<log_dir>/evaluation``).
        metrics: metrics (default: the exact synthetic-world evaluator).
        categories: categories to report (``None``: all that occur).
        cache_dir: generated-audio cache (default: ``<output_dir>/generated``); ``None``
            together with ``cache_audio=False`` disables caching.
        cache_audio: write generations to the cache.
        reuse_cache: score cached clips instead of regenerating them.
        seed: generation seed (RNG state outside the callback is untouched).
        sample_rate: rate of the generated audio (default: datamodule's or module's).
        log_prefix: logged scalars are ``<log_prefix>/<metric>``.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        metrics: Sequence[GenerationMetric] | None = None,
        categories: Sequence[str] | None = None,
        cache_dir: str | None = None,
        cache_audio: bool = True,
        reuse_cache: bool = False,
        seed: int = 0,
        sample_rate: int | None = None,
        log_prefix: str = "test",
    ) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.suite = EvaluationSuite(metrics, categories)
        self.cache_dir = cache_dir
        self.cache_audio = cache_audio
        self.reuse_cache = reuse_cache
        self.seed = seed
        self.sample_rate = sample_rate
        self.log_prefix = log_prefix
        self.report: dict[str, Any] | None = None
        self._generated = 0
        self._reused = 0

    def _output_dir(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "evaluation"

    def _cache_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else self._output_dir(trainer) / "generated"

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.suite.to(pl_module.device)
        self.suite.reset()
        self._generated = self._reused = 0

    @torch.no_grad()
    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        sample_rate = resolve_sample_rate(self.sample_rate, trainer, pl_module)
        keys = list(batch["key"])
        cache = self._cache_dir(trainer)
        if self.reuse_cache and all(cache_path(cache, key).is_file() for key in keys):
            generated = read_cached_audio(cache, keys, sample_rate).to(pl_module.device)
            self._reused += len(keys)
        else:
            devices = [pl_module.device] if pl_module.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                # Seeded per clip position, so results do not depend on the batch split.
                torch.manual_seed(self.seed + 1_000_003 * batch_idx + trainer.global_rank)
                generated = pl_module.generate(batch)
            if generated.dim() == 2:
                generated = generated[:, None]
            self._generated += len(keys)
            if self.cache_audio:
                seconds = batch.get("seconds_total")
                for i, key in enumerate(keys):
                    length = generated.shape[-1] if seconds is None else min(generated.shape[-1], round(float(seconds[i]) * sample_rate))
                    write_cached_audio(cache, key, generated[i, :, :length], sample_rate)
        self.suite.update(generated, batch, sample_rate)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = self.suite.compute()
        report.update(
            {
                "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                "sample_rate": resolve_sample_rate(self.sample_rate, trainer, pl_module),
                "generated_clips": self._generated,
                "cached_clips_reused": self._reused,
                "cache_dir": str(self._cache_dir(trainer)) if self.cache_audio or self.reuse_cache else None,
                "world_size": trainer.world_size,
                "config": _run_config(trainer, pl_module),
            }
        )
        self.report = report
        for name, value in report["overall"].items():
            if not math.isnan(value):
                pl_module.log(f"{self.log_prefix}/{name}", value, sync_dist=True)
        if trainer.is_global_zero:
            json_path, md_path = write_report(report, self._output_dir(trainer))
            logger.info("evaluation report written to %s and %s", json_path, md_path)
