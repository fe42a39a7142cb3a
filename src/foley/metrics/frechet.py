"""Fréchet distance between Gaussians fitted to two embedding sets (FD_PaSST, FD_PANNs, FD_VGG)."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["frechet_distance", "FrechetDistance"]

logger = logging.getLogger(__name__)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clamped)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½`` in float64.

    ``tr (Σ1 Σ2)^½`` equals the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix ``Σ1^½ Σ2 Σ1^½``, which two symmetric eigendecompositions give stably for any
    dimension, including the rank-deficient covariances of small sets (where a general
    ``sqrtm`` of the non-symmetric product returns complex noise).
    """
    mu1, mu2, sigma1, sigma2 = (x.double() for x in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    # The distance is a squared norm; rank-deficient covariances leave ~1e-5 of round-off
    # (square roots of ~1e-10 null-space eigenvalues), which must not show as negative.
    return distance.clamp(min=0.0)


class FrechetDistance(Metric):
    """Fréchet distance between the embedding distributions of reference and generated audio.

    First and second moments are accumulated as float64 sums, so DDP reduction is a sum and
    the sets need not be the same size or paired. Frame-level embeddings ``(B, T, D)`` are
    flattened to ``B·T`` samples (av-benchmark's FD_VGG uses every VGGish frame).

    Args:
        num_features: embedding size ``D``.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(self.num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer", torch.zeros(self.num_features, self.num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, embeddings: Tensor, real: bool) -> None:
        """Add embeddings ``(..., D)`` to the reference (``real=True``) or generated set."""
        if embeddings.shape[-1] != self.num_features:
            raise ValueError(f"expected embeddings with {self.num_features} features, got shape {tuple(embeddings.shape)}")
        x = embeddings.detach().reshape(-1, self.num_features).double()
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + x.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + x.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + x.T @ x)

    def _moments(self, side: str) -> tuple[Tensor, Tensor] | None:
        n = getattr(self, f"{side}_n")
        if n < 2:
            warnings.warn(f"FrechetDistance: {int(n)} {side} embeddings; at least 2 are needed, returning NaN", stacklevel=3)
            return None
        if n < self.num_features:
            warnings.warn(
                f"FrechetDistance: {int(n)} {side} embeddings for {self.num_features} features; the covariance is "
                "rank-deficient and the distance is biased upwards, so it is only comparable between runs with the "
                "same number of samples",
                stacklevel=3,
            )
        mean = getattr(self, f"{side}_sum") / n
        covariance = (getattr(self, f"{side}_outer") - n * torch.outer(mean, mean)) / (n - 1)
        return mean, covariance

    def compute(self) -> Tensor:
        """The distance; NaN (with a warning) when either set has fewer than 2 embeddings."""
        real, fake = self._moments("real"), self._moments("fake")
        if real is None or fake is None:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return frechet_distance(*real, *fake)
