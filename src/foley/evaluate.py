"""Benchmark reports: metrics overall and per category, cached generations, re-scoring.

``foley test`` (LightningCLI) runs :class:`foley.callbacks.EvaluationReportCallback`, which
generates every test clip once, caches it as ``<cache_dir>/<key>.wav`` and feeds an
:class:`EvaluationSuite`. :func:`rescore` scores an existing cache against the same test
data (or with other metrics) without a model or a GPU.

Report layout (``<output_dir>/report.json``)::

    {"num_clips": 20935, "overall": {"fd_panns": 7.6, ...},
     "per_category": {"animals": {"fd_panns": ..., "num_clips": 812}, ...},
     "config": {...}, "checkpoint": "...", "sample_rate": 44100}

plus ``report.md``, the same numbers as a markdown table (one row per category).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from torch import Tensor, nn

from foley.io.atomic import atomic_path, atomic_write_json, atomic_write_text
from foley.metrics.generation import GenerationMetric
from foley.metrics.synthetic import SyntheticWorldMetric

__all__ = [
    "EvaluationSuite",
    "cache_path",
    "write_cached_audio",
    "read_cached_audio",
    "format_markdown",
    "write_report",
    "rescore",
    "UNCATEGORISED",
]

logger = logging.getLogger(__name__)

UNCATEGORISED = "uncategorised"
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._=+-]")


def _category(meta: Mapping[str, Any]) -> str:
    value = meta.get("category")
    return str(value) if value not in (None, "") else UNCATEGORISED


def _select(batch: Mapping[str, Any], indices: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    index = torch.tensor(indices, dtype=torch.long)
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            out[key] = value.index_select(0, index.to(value.device))
        elif isinstance(value, (list, tuple)):
            out[key] = [value[i] for i in indices]
        else:
            out[key] = value
    return out


class EvaluationSuite(nn.Module):
    """A set of :class:`~foley.metrics.generation.GenerationMetric` computed over all clips
    and separately for each category (``meta["category"]``).

    Per-category copies share the heavy modules (embedders) of the overall metric; only
    the accumulated states are separate. Under DDP the categories seen anywhere are
    gathered before computing, so every process computes the same metrics.

    Args:
        metrics: metrics to compute; default: the exact synthetic-world evaluator.
        categories: categories to report (others are still counted overall); ``None``:
            every category that occurs.
        per_category: also report per-category values.
    """

    def __init__(
        self,
        metrics: Sequence[GenerationMetric] | None = None,
        categories: Sequence[str] | None = None,
        per_category: bool = True,
    ) -> None:
        super().__init__()
        self.overall = nn.ModuleList(list(metrics) if metrics is not None else [SyntheticWorldMetric()])
        self.categories = None if categories is None else list(categories)
        self.per_category = per_category
        self.by_category = nn.ModuleDict()
        self.clip_counts: dict[str, int] = {}
        self.num_clips = 0

    def _fresh_copies(self) -> nn.ModuleList:
        copies = []
        for metric in self.overall:
            # Share every submodule that is not a torchmetrics state holder (the embedders),
            # deep-copy the rest so states start empty and stay separate.
            memo: dict[int, Any] = {}
            for module in metric.modules():
                if module is not metric and not _holds_metric_state(module):
                    memo[id(module)] = module
            clone = copy.deepcopy(metric, memo)
            clone.reset()
            copies.append(clone)
        return nn.ModuleList(copies)

    def _bucket(self, category: str) -> nn.ModuleList:
        name = _SAFE_KEY.sub("_", category)
        if name not in self.by_category:
            self.by_category[name] = self._fresh_copies().to(_device_of(self.overall))
        return self.by_category[name]

    def reset(self) -> None:
        for metric in self.overall:
            metric.reset()
        self.by_category = nn.ModuleDict()
        self.clip_counts = {}
        self.num_clips = 0

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        """Score generated audio ``(B, C, N)`` against its batch."""
        if generated.dim() == 2:
            generated = generated[:, None]
        for metric in self.overall:
            metric.update(generated, batch, sample_rate)
        metas = batch.get("meta") or [{} for _ in range(generated.shape[0])]
        self.num_clips += generated.shape[0]
        groups: dict[str, list[int]] = {}
        for i, meta in enumerate(metas):
            groups.setdefault(_category(meta), []).append(i)
        for category, indices in groups.items():
            self.clip_counts[category] = self.clip_counts.get(category, 0) + len(indices)
            if not self.per_category or (self.categories is not None and category not in self.categories):
                continue
            index = torch.tensor(indices, device=generated.device)
            part = generated.index_select(0, index)
            sub_batch = _select(batch, indices)
            for metric in self._bucket(category):
                metric.update(part, sub_batch, sample_rate)

    def _all_categories(self) -> list[str]:
        seen = set(self.clip_counts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, sorted(seen))
            seen = set().union(*map(set, gathered))
        if self.categories is not None:
            seen &= set(self.categories)
        return sorted(seen)

    def _global_counts(self) -> tuple[int, dict[str, int]]:
        counts, total = dict(self.clip_counts), self.num_clips
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (total, counts))
            total = sum(t for t, _ in gathered)
            counts = {}
            for _, part in gathered:
                for key, value in part.items():
                    counts[key] = counts.get(key, 0) + value
        return total, counts

    def compute(self) -> dict[str, Any]:
        """``{"num_clips", "overall": {...}, "per_category": {category: {...}}}`` of floats."""
        total, counts = self._global_counts()
        overall = _merge(metric.compute() for metric in self.overall)
        # Per-category rows of the synthetic evaluator's own breakdown are redundant here.
        overall = {k: v for k, v in overall.items() if "/" not in k}
        per_category: dict[str, dict[str, float]] = {}
        if self.per_category:
            for category in self._all_categories():
                scores = _merge(metric.compute() for metric in self._bucket(category))
                scores = {k: v for k, v in scores.items() if "/" not in k}
                scores["num_clips"] = float(counts.get(category, 0))
                per_category[category] = scores
        overall["num_clips"] = float(total)
        return {"num_clips": total, "overall": overall, "per_category": per_category}


def _holds_metric_state(module: nn.Module) -> bool:
    from torchmetrics import Metric

    return isinstance(module, (Metric, GenerationMetric)) or any(isinstance(m, Metric) for m in module.modules())


def _device_of(modules: nn.Module) -> torch.device:
    """Where the metric states live (torchmetrics states are neither parameters nor buffers)."""
    from torchmetrics import Metric

    for module in modules.modules():
        if isinstance(module, Metric):
            return module.device
    for tensor in list(modules.parameters()) + list(modules.buffers()):
        return tensor.device
    return torch.device("cpu")


def _merge(results: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for result in results:
        for key, value in result.items():
            if key in merged:
                raise ValueError(f"two metrics report {key!r}; give them distinct names")
            merged[key] = float(value)
    return merged


def cache_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    """Where the generation of clip ``key`` is cached (``/`` and odd characters replaced)."""
    return Path(cache_dir) / f"{_SAFE_KEY.sub('_', key)}.wav"


def write_cached_audio(cache_dir: str | os.PathLike[str], key: str, wave: Tensor, sample_rate: int) -> Path:
    """Write ``wave`` ``(C, N)`` as 32-bit float WAV (lossless for re-scoring), atomically."""
    path = cache_path(cache_dir, key)
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), wave.detach().float().cpu().T.numpy(), sample_rate, format="WAV", subtype="FLOAT")
    return path


def read_cached_audio(cache_dir: str | os.PathLike[str], keys: Sequence[str], sample_rate: int) -> Tensor:
    """Load cached generations of ``keys`` as one zero-padded ``(B, C, N)`` batch.

    Raises:
        FileNotFoundError: some keys have no cached file (all missing ones are named).
        ValueError: a file has a different sample rate or channel count.
    """
    paths = [cache_path(cache_dir, key) for key in keys]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} generated clips are not in the cache {cache_dir}: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
            + "; run `foley test` with this cache_dir to generate them"
        )
    waves = []
    for path in paths:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        if rate != sample_rate:
            raise ValueError(f"{path}: cached at {rate} Hz, but the evaluation runs at {sample_rate} Hz")
        waves.append(torch.from_numpy(np.ascontiguousarray(data.T)))
    channels = {w.shape[0] for w in waves}
    if len(channels) != 1:
        raise ValueError(f"cached clips in {cache_dir} mix channel counts {sorted(channels)}")
    length = max(w.shape[1] for w in waves)
    return torch.stack([torch.nn.functional.pad(w, (0, length - w.shape[1])) for w in waves])


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4g}"


def format_markdown(report: Mapping[str, Any]) -> str:
    """The report's numbers as a markdown table: an ``overall`` row and one row per category."""
    rows = {"overall": report["overall"], **report.get("per_category", {})}
    columns = sorted({k for scores in rows.values() for k in scores} - {"num_clips"}) + ["num_clips"]
    lines = [
        "| category | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(scores.get(c, math.nan)) for c in columns) + " |")
    header = [f"# Evaluation report", ""]
    if report.get("checkpoint"):
        header += [f"checkpoint: `{report['checkpoint']}`", ""]
    return "\n".join(header + lines) + "\n"


def write_report(report: Mapping[str, Any], output_dir: str | os.PathLike[str], name: str = "report") -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` atomically; NaN is written as ``null``."""
    output_dir = Path(output_dir)
    clean = json.loads(json.dumps(report, default=str).replace("NaN", "null"))
    json_path, md_path = output_dir / f"{name}.json", output_dir / f"{name}.md"
    atomic_write_json(json_path, clean)
    atomic_write_text(md_path, format_markdown(report))
    return json_path, md_path


def rescore(
    cache_dir: str | os.PathLike[str],
    data: Any,
    metrics: Sequence[GenerationMetric] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    sample_rate: int | None = None,
    categories: Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score cached generations against the test data without regenerating.

    Args:
        cache_dir: folder of ``<key>.wav`` written by ``foley test``.
        data: the test data: a LightningDataModule (its ``test_dataloader``) or any
            iterable of batch dicts (architecture §2).
        metrics: metrics to compute (default: synthetic-world evaluator).
        output_dir: where to write the report (``None``: do not write).
        sample_rate: evaluation rate (default: ``data.sample_rate``).
        categories: categories to report (``None``: all).
        config: run configuration stored in the report.

    Returns:
        The report dict.
    """
    rate = sample_rate or getattr(data, "sample_rate", None)
    if rate is None:
        raise ValueError("rescore: pass sample_rate (the data has no sample_rate attribute)")
    if hasattr(data, "test_dataloader"):
        if hasattr(data, "setup"):
            data.setup("test")
        batches: Iterable[Mapping[str, Any]] = data.test_dataloader()
    else:
        batches = data
    suite = EvaluationSuite(metrics, categories)
    for batch in batches:
        generated = read_cached_audio(cache_dir, batch["key"], int(rate))
        suite.update(generated, batch, int(rate))
    report = suite.compute()
    report.update({"sample_rate": int(rate), "cache_dir": str(cache_dir), "config": dict(config or {})})
    if output_dir is not None:
        write_report(report, output_dir)
    return report
