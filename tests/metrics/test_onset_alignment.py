"""onset_alignment_by_time: per-span onset offsets recover a known drift exactly."""
from __future__ import annotations

import math

import pytest
import torch

from foley.metrics.synthetic import onset_alignment_by_time

SR = 16000


def _bursts(onsets: list[float], seconds: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    wave = torch.zeros(round(seconds * SR))
    decay = torch.exp(-torch.arange(SR // 10) / (0.01 * SR))
    for t in onsets:
        start = round(t * SR)
        burst = 0.5 * torch.randn(decay.numel(), generator=gen) * decay
        wave[start : start + burst.numel()] += burst[: wave.numel() - start]
    return wave


def test_a_linear_drift_shows_as_growing_offsets() -> None:
    seconds = 60.0
    reference = [0.5 + 0.7 * k for k in range(84)]  # a hit every 0.7 s
    drift = 0.03  # the generation lags by 0 ms at the start, 30 ms at the end
    generated = _bursts([t + drift * t / seconds for t in reference], seconds)
    first, last = onset_alignment_by_time(generated, reference, SR, spans=[(0, 10), (50, 60)])
    early, late = [t for t in reference if t < 10], [t for t in reference if t >= 50]
    assert (first.references, last.references) == (len(early), len(late)) == (14, 13)
    assert first.matched == first.references and last.matched == last.references
    assert first.false_positives == 0 and last.false_positives == 0 and first.f1 == 1.0
    # Mean lag of the span = drift at the span's mean reference time (within 1 ms of detector refinement).
    expected_first = drift * sum(early) / len(early) / seconds
    expected_last = drift * sum(late) / len(late) / seconds
    assert first.mean_offset == pytest.approx(expected_first, abs=1e-3)
    assert last.mean_offset == pytest.approx(expected_last, abs=1e-3)
    assert last.mean_abs_offset - first.mean_abs_offset == pytest.approx(expected_last - expected_first, abs=1e-3)


def test_missing_and_extra_onsets_are_counted_per_span() -> None:
    reference = [1.0, 2.0, 3.0, 12.0, 13.0]
    generated = _bursts([1.0, 2.0, 12.0, 13.0, 14.5], 16.0)  # 3.0 missing in span 1, 14.5 extra in span 2
    first, second = onset_alignment_by_time(generated, reference, SR, spans=[(0, 10), (10, 16)])
    assert (first.references, first.matched, first.false_positives) == (3, 2, 0)
    assert (second.references, second.matched, second.false_positives) == (2, 2, 1)
    assert first.f1 == pytest.approx(0.8) and second.f1 == pytest.approx(0.8)
    empty = onset_alignment_by_time(torch.zeros(SR), [0.5], SR, spans=[(0, 1)])[0]
    assert empty.matched == 0 and math.isnan(empty.mean_offset)
