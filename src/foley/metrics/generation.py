"""Metrics that score a generated batch against the batch it was generated from.

The validation callback and ``foley test`` only know this interface:
``update(generated, batch, sample_rate)``, ``compute() -> {name: value}``, ``reset()``.
A metric is either itself a torchmetrics ``Metric`` that owns its states and runs its own
models (:class:`~foley.metrics.synthetic.SyntheticWorldMetric`,
:class:`~foley.metrics.ib_score.ImageBindScore`, :class:`~foley.metrics.desync.DeSync`), or,
below, runs an :class:`~foley.metrics.embedders.AudioEmbedder` and feeds torchmetrics
``Metric`` children (FD, KL, IS); either way the states are reduced over processes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from foley.metrics.embedders import AudioEmbedder
from foley.metrics.frechet import FrechetDistance
from foley.metrics.inception import InceptionScore
from foley.metrics.kl import PairedKLDivergence

__all__ = [
    "GenerationMetric",
    "EmbedderScores",
    "EmbeddingFrechetDistance",
    "ClassifierKL",
    "ClassifierInceptionScore",
]


class GenerationMetric(nn.Module, ABC):
    """Scores generated audio ``(B, C, N)`` against a batch dict (architecture §2).

    A metric that owns its states subclasses a torchmetrics ``Metric`` first, e.g.
    ``class DeSync(ClipMean, GenerationMetric)``, which provides ``reset`` and the
    synchronisation of ``compute`` over processes.
    """

    @abstractmethod
    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        """Accumulate one batch."""

    @abstractmethod
    def compute(self) -> dict[str, Tensor]:
        """All scores so far (synchronised over processes)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all accumulated state."""


class _EmbedderMetric(GenerationMetric):
    def __init__(self, embedder: AudioEmbedder, name: str) -> None:
        super().__init__()
        self.embedder = embedder.eval().requires_grad_(False)
        self.name = name

    def _embed(self, wave: Tensor, sample_rate: int) -> tuple[Tensor, Tensor | None]:
        return self.embedder.embed(wave, sample_rate)


class EmbeddingFrechetDistance(_EmbedderMetric):
    """FD between embeddings of ground-truth (``batch["audio"]``) and generated audio.

    Args:
        embedder: the embedding model (PaSST, PANNs, VGGish, ...).
        name: key of the result, e.g. ``fd_panns``.
    """

    def __init__(self, embedder: AudioEmbedder, name: str = "fd") -> None:
        super().__init__(embedder, name)
        self.metric = FrechetDistance(embedder.embedding_dim)

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        self.metric.update(self._embed(batch["audio"], sample_rate)[0], real=True)
        self.metric.update(self._embed(generated, sample_rate)[0], real=False)

    def compute(self) -> dict[str, Tensor]:
        return {self.name: self.metric.compute()}

    def reset(self) -> None:
        self.metric.reset()


def _logits(embedder: AudioEmbedder, pair: tuple[Tensor, Tensor | None]) -> Tensor:
    if pair[1] is None:
        raise ValueError(f"{type(embedder).__name__} has no classifier head; KL and IS need class logits")
    return pair[1]


class ClassifierKL(_EmbedderMetric):
    """Paired KL(ground truth ‖ generated) over the embedder's class logits (KL_PANNs, KL_PaSST).

    Args:
        embedder: a classifier embedder.
        name: key of the result.
    """

    def __init__(self, embedder: AudioEmbedder, name: str = "kl") -> None:
        super().__init__(embedder, name)
        self.metric = PairedKLDivergence()

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        target = _logits(self.embedder, self._embed(batch["audio"], sample_rate))
        self.metric.update(target, _logits(self.embedder, self._embed(generated, sample_rate)))

    def compute(self) -> dict[str, Tensor]:
        return {self.name: self.metric.compute()}

    def reset(self) -> None:
        self.metric.reset()


class ClassifierInceptionScore(_EmbedderMetric):
    """Inception Score of the generated audio's class predictions (IS with PANNs).

    Args:
        embedder: a classifier embedder.
        splits: number of splits.
        name: key of the result.
    """

    def __init__(self, embedder: AudioEmbedder, splits: int = 10, name: str = "is") -> None:
        super().__init__(embedder, name)
        self.metric = InceptionScore(splits=splits, num_classes=embedder.num_classes)

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        self.metric.update(_logits(self.embedder, self._embed(generated, sample_rate)))

    def compute(self) -> dict[str, Tensor]:
        return {self.name: self.metric.compute()}

    def reset(self) -> None:
        self.metric.reset()


class EmbedderScores(_EmbedderMetric):
    """FD, paired KL and IS from one embedder, embedding each clip once.

    Keys are ``fd_<name>``, ``kl_<name>`` and ``is_<name>`` (e.g. ``name: panns`` gives
    FD_PANNs, KL_PANNs and IS as in the published tables).

    Args:
        embedder: the embedding model.
        name: suffix of the result keys.
        fd: compute the Fréchet distance of the embeddings.
        kl: compute the paired KL of the class logits.
        inception: compute the Inception Score of the generated class logits.
        splits: Inception Score splits.
    """

    def __init__(
        self,
        embedder: AudioEmbedder,
        name: str,
        fd: bool = True,
        kl: bool = True,
        inception: bool = True,
        splits: int = 10,
    ) -> None:
        super().__init__(embedder, name)
        if (kl or inception) and embedder.num_classes == 0:
            raise ValueError(f"{type(embedder).__name__} has no classifier head; set kl: false and inception: false")
        self.fd = FrechetDistance(embedder.embedding_dim) if fd else None
        self.kl = PairedKLDivergence() if kl else None
        self.inception = InceptionScore(splits=splits, num_classes=embedder.num_classes) if inception else None

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        real_embedding, real_logits = self._embed(batch["audio"], sample_rate)
        fake_embedding, fake_logits = self._embed(generated, sample_rate)
        if self.fd is not None:
            self.fd.update(real_embedding, real=True)
            self.fd.update(fake_embedding, real=False)
        if self.kl is not None:
            self.kl.update(_logits(self.embedder, (real_embedding, real_logits)), _logits(self.embedder, (fake_embedding, fake_logits)))
        if self.inception is not None:
            self.inception.update(_logits(self.embedder, (fake_embedding, fake_logits)))

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for key, metric in (("fd", self.fd), ("kl", self.kl), ("is", self.inception)):
            if metric is not None:
                out[f"{key}_{self.name}"] = metric.compute()
        return out

    def reset(self) -> None:
        for metric in (self.fd, self.kl, self.inception):
            if metric is not None:
                metric.reset()
