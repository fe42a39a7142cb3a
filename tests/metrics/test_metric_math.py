"""Closed-form checks of FD, paired KL, IS and DeSync (the IB-score's: tests/metrics/test_imagebind.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from foley.metrics.desync import DeSync, offsets_from_logits
from foley.metrics.frechet import FrechetDistance, frechet_distance
from foley.metrics.inception import InceptionScore, inception_score
from foley.metrics.kl import PairedKLDivergence, paired_kl_divergence


def _random_covariance(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_fd_of_shifted_gaussians_is_the_squared_mean_distance() -> None:
    sigma = _random_covariance(16, 0)
    mu = torch.zeros(16, dtype=torch.float64)
    shift = torch.arange(16, dtype=torch.float64) / 10
    assert float(frechet_distance(mu, sigma, mu + shift, sigma)) == pytest.approx(float(shift.pow(2).sum()), abs=1e-8)


def test_fd_trace_term_on_hand_computed_covariances() -> None:
    mu1, mu2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    # diag(1,4) vs diag(4,9): tr sqrt(S1 S2) = 2 + 6 = 8 -> 5 + (5 + 13 - 16)
    assert float(frechet_distance(mu1, torch.diag(torch.tensor([1.0, 4.0])), mu2, torch.diag(torch.tensor([4.0, 9.0])))) == pytest.approx(7.0)
    # I vs R diag(4,9) R^T: tr sqrt = 2 + 3 -> 5 + (2 + 13 - 10)
    c, s = math.cos(0.3), math.sin(0.3)
    rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    sigma2 = rotation @ torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64)) @ rotation.T
    assert float(frechet_distance(mu1, torch.eye(2), mu2, sigma2)) == pytest.approx(10.0)


def test_fd_matches_scipy_sqrtm_on_full_rank_covariances() -> None:
    s1, s2 = _random_covariance(32, 1), _random_covariance(32, 2)
    mu1, mu2 = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float((mu1 - mu2).pow(2).sum()) + float(np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean))
    assert float(frechet_distance(mu1, s1, mu2, s2)) == pytest.approx(expected, rel=1e-9)


def test_fd_metric_accumulates_exact_moments_and_identical_sets_give_zero() -> None:
    x = torch.randn(300, 12) * torch.linspace(0.5, 2, 12) + 3
    y = torch.randn(200, 12)
    metric = FrechetDistance(12)
    for chunk in x.split(64):
        metric.update(chunk, real=True)
    metric.update(y.reshape(50, 4, 12), real=False)  # frame-level embeddings are flattened
    expected = frechet_distance(x.double().mean(0), torch.cov(x.double().T), y.double().mean(0), torch.cov(y.double().T))
    assert float(metric.compute()) == pytest.approx(float(expected), rel=1e-9)
    same = FrechetDistance(12)
    same.update(x, real=True)
    same.update(x, real=False)
    assert abs(float(same.compute())) < 1e-9


def test_fd_with_fewer_samples_than_features_warns_and_stays_finite() -> None:
    x = torch.randn(20, 64)
    metric = FrechetDistance(64)
    metric.update(x, real=True)
    metric.update(x + 1.0, real=False)
    with pytest.warns(UserWarning, match="rank-deficient"):
        value = float(metric.compute())
    # Same covariance, every mean shifted by 1. The 45 null-space eigenvalues of the rank-19
    # covariances come out at ~eps64 * lambda_max^2 instead of 0, and their square roots add
    # ~2 * 45 * sqrt(eps64) * lambda_max = 1e-5 (lambda_max = 7.5); measured 2.3e-6. rel 1e-6 = 6.4e-5.
    assert value == pytest.approx(64.0, rel=1e-6)
    with pytest.raises(ValueError, match="features"):
        metric.update(torch.randn(2, 65), real=True)
    single = FrechetDistance(4)
    single.update(torch.randn(1, 4), real=True)
    single.update(torch.randn(5, 4), real=False)
    with pytest.warns(UserWarning, match="at least 2"):
        assert math.isnan(float(single.compute()))


def test_paired_kl_direction_and_mean_over_clips() -> None:
    p = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    q = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    kl = paired_kl_divergence(p.log(), q.log())
    hand = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl.tolist() == pytest.approx([hand, 0.0], abs=1e-7)
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert float(paired_kl_divergence(q.log(), p.log())[0]) == pytest.approx(reverse)
    metric = PairedKLDivergence()
    metric.update(p[:1].log() + 3.0, q[:1].log())  # logits are shift-invariant
    metric.update(p[1:].log(), q[1:].log())
    assert float(metric.compute()) == pytest.approx(hand / 2)


def test_inception_score_uniform_is_one_and_balanced_one_hot_is_n_classes() -> None:
    assert float(inception_score(torch.zeros(100, 7))[0]) == pytest.approx(1.0)
    classes = torch.arange(100) % 5
    one_hot = torch.nn.functional.one_hot(classes, 5).double() * 50.0
    mean, std = inception_score(one_hot, splits=10)
    assert float(mean) == pytest.approx(5.0, rel=1e-6) and float(std) < 1e-6
    metric = InceptionScore(splits=10)
    for chunk in one_hot.split(30):
        metric.update(chunk)
    assert float(metric.compute()) == pytest.approx(5.0, rel=1e-6)
    with pytest.raises(ValueError, match="10 splits"):
        inception_score(torch.zeros(5, 3))


class _ScriptedClasses(torch.nn.Module):
    """Stands in for the Synchformer AV classifier: returns the given offset classes, one per
    call (one 4.8 s window of 14 segments)."""

    crop_size = 8

    def __init__(self, classes: list[int]) -> None:
        super().__init__()
        self.classes = list(classes)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        assert video.shape[:3] == (1, 14, 16) and audio.shape[:2] == (1, 14)
        logits = torch.full((1, 21), -5.0)
        logits[0, self.classes.pop(0)] = 5.0
        return logits


def test_desync_from_logits_is_mean_absolute_offset() -> None:
    logits = torch.full((2, 2, 21), -5.0)
    logits[0, 0, 10] = logits[0, 1, 12] = 5.0  # 0.0 s and +0.4 s
    logits[1, 0, 0] = logits[1, 1, 20] = 5.0  # -2.0 s and +2.0 s
    offsets = offsets_from_logits(logits)
    assert offsets.flatten().tolist() == pytest.approx([0.0, 0.4, -2.0, 2.0])
    # The metric on a classifier that returns these classes window by window: clip 1 gets
    # 0.0 s and +0.4 s (first and last 4.8 s of 8 s), clip 2 -2.0 s and +2.0 s.
    metric = DeSync(model=_ScriptedClasses([10, 12, 0, 20, 15]))
    sr = 16000
    frames = torch.zeros(2, 200, 3, 8, 8, dtype=torch.uint8)  # 8 s at 25 fps
    metric.update(torch.zeros(2, 1, 8 * sr), {"sync_frames": frames, "seconds_total": torch.tensor([8.0, 8.0])}, sr)
    assert float(metric.compute()["desync"]) == pytest.approx((0.2 + 2.0) / 2, rel=1e-12)
    # A 4.8 s clip has one window (+1.0 s); the mean is over clips, not windows.
    metric.update(torch.zeros(1, 1, round(4.8 * sr)), {"sync_frames": frames[:1, :120]}, sr)
    assert float(metric.compute()["desync"]) == pytest.approx((0.2 + 2.0 + 1.0) / 3, rel=1e-12)
    assert metric.model.classes == [] and metric.higher_is_better is False
