"""The exact synthetic-world evaluator on hand-made signals with known onsets and pans."""

from __future__ import annotations

import math

import pytest
import torch

from foley.metrics.synthetic import (
    OnsetDetector,
    SyntheticWorldMetric,
    interchannel_level_difference,
    match_onsets,
    pan_correlation,
)

SR = 22050
ONSETS = [0.25, 0.61, 0.9, 1.4, 1.75, 2.3]


def _clicks(times: list[float], seconds: float = 3.0, noise_db: float | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    wave = torch.zeros(n)
    if noise_db is not None:
        wave += 10 ** (noise_db / 20) * torch.randn(n, generator=g)
    for t in times:
        wave[round(t * SR)] += 0.8
    return wave


def _impacts(times: list[float], seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Impact-like sounds: decaying noise bursts and damped modes over a quiet noise floor."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    wave = 0.003 * torch.randn(n, generator=g)
    for k, t in enumerate(times):
        start = round(t * SR)
        length = min(n - start, int(0.25 * SR))
        tt = torch.arange(length) / SR
        decay = torch.exp(-tt / 0.04)
        if k % 2:
            burst = torch.randn(length, generator=g) * decay
        else:
            burst = torch.sin(2 * math.pi * 440 * tt) * decay + 0.5 * torch.sin(2 * math.pi * 1250 * tt) * decay
        wave[start : start + length] += 0.4 * burst
    return wave


@pytest.mark.parametrize("make", [_clicks, _impacts, lambda t: _clicks(t, noise_db=-45.0)])
def test_detector_finds_known_onsets_to_the_millisecond(make) -> None:
    detected = OnsetDetector()(make(ONSETS), SR)
    match = match_onsets(ONSETS, detected, tolerance=0.05)
    assert (match.true_positives, match.false_positives, match.false_negatives) == (len(ONSETS), 0, 0)
    assert match.offsets.abs().max() < 0.002


def test_detector_stays_quiet_on_silence_and_stationary_noise() -> None:
    assert OnsetDetector()(torch.zeros(SR), SR).numel() == 0
    noise = 0.1 * torch.randn(2 * SR)
    # Sound present from the first sample is a crop boundary, not an onset, unless asked.
    assert OnsetDetector()(noise, SR).numel() == 0
    assert OnsetDetector(onset_at_start=True)(noise, SR).tolist() == [0.0]
    late = torch.cat([torch.zeros(SR // 2), noise])
    assert OnsetDetector()(late, SR).tolist() == pytest.approx([0.5], abs=1e-3)


def test_matching_is_one_to_one_and_maximal() -> None:
    # Two detections around one reference: one is a false positive.
    m = match_onsets([1.0], [0.99, 1.02], 0.05)
    assert (m.true_positives, m.false_positives, m.false_negatives) == (1, 1, 0)
    assert m.offsets.tolist() == pytest.approx([-0.01])
    # Greedy closest-first would pair 0.04 with 0.08 (ties) and lose a match.
    m = match_onsets([0.0, 0.08], [0.04, 0.12], 0.05)
    assert m.true_positives == 2
    assert sorted(m.offsets.tolist()) == pytest.approx([0.04, 0.04])
    # Outside the tolerance nothing matches; empty sides count fully as misses.
    assert match_onsets([1.0], [1.06], 0.05).true_positives == 0
    m = match_onsets([], [0.5], 0.05)
    assert (m.true_positives, m.false_positives, m.false_negatives) == (0, 1, 0)


def _metric_scores(pred: torch.Tensor, events: list[float], category: str = "impacts") -> dict[str, float]:
    metric = SyntheticWorldMetric(categories=["impacts", "rolling"])
    meta = [{"category": category, "events": [{"onset": t, "type": "impact"} for t in events]}]
    metric.update(pred[None, None], {"meta": meta}, SR)
    return {k: float(v) for k, v in metric.compute().items()}


def test_f1_is_one_for_truth_zero_when_shifted_and_recall_half_when_half_missing() -> None:
    assert _metric_scores(_impacts(ONSETS), ONSETS)["onset_f1"] == pytest.approx(1.0)
    shifted = _metric_scores(_impacts([t + 0.1 for t in ONSETS]), ONSETS)
    assert shifted["onset_f1"] == 0.0 and math.isnan(shifted["sync_offset"])
    half = _metric_scores(_impacts(ONSETS[::2]), ONSETS)
    assert half["onset_recall"] == pytest.approx(0.5)
    assert half["onset_precision"] == pytest.approx(1.0)
    assert half["onset_f1"] == pytest.approx(2 * 0.5 / 1.5)
    silent = _metric_scores(torch.zeros(3 * SR), ONSETS)
    assert silent["onset_f1"] == 0.0 and silent["onset_recall"] == 0.0


def test_sync_offset_measures_a_constant_delay() -> None:
    scores = _metric_scores(_clicks([t + 0.03 for t in ONSETS]), ONSETS)
    assert scores["onset_f1"] == pytest.approx(1.0)
    assert scores["sync_offset"] == pytest.approx(0.03, abs=0.001)


def test_per_category_rows_and_other_bucket() -> None:
    metric = SyntheticWorldMetric(categories=["impacts", "rolling"])
    events = [{"onset": t, "type": "impact"} for t in ONSETS]
    truth = _clicks(ONSETS)
    metric.update(truth[None, None], {"meta": [{"category": "impacts", "events": events}]}, SR)
    metric.update(torch.zeros(1, 1, truth.numel()), {"meta": [{"category": "unknown", "events": events}]}, SR)
    scores = metric.compute()
    assert float(scores["onset_f1/impacts"]) == pytest.approx(1.0)
    assert float(scores["onset_recall/other"]) == 0.0
    assert float(scores["onset_recall"]) == pytest.approx(0.5)
    assert "onset_f1/rolling" not in scores  # no clips, no row
    assert float(scores["num_clips"]) == 2


def test_event_type_filter_and_duration_crop() -> None:
    metric = SyntheticWorldMetric(event_types=["impact"])
    meta = {"events": [{"onset": 0.5, "type": "impact"}, {"onset": 1.0, "type": "ambience"}, {"onset": 9.0, "type": "impact"}]}
    assert metric.reference_onsets(meta, duration=3.0).tolist() == [0.5]


def test_defaults_follow_the_synthetic_world_and_seconds_total_cuts_padding() -> None:
    metric = SyntheticWorldMetric()
    kinds = ((0.5, "impact"), (1.0, "hit"), (1.5, "tone"), (2.0, "ambience"))
    assert metric.reference_onsets({"events": [{"onset": t, "type": k} for t, k in kinds]}, 3.0).tolist() == [0.5, 1.0, 1.5]
    assert not metric.scores_onsets({"events": [{"onset": 0.5, "type": "engine"}]})
    assert not metric.scores_onsets({"events": [{"onset": 0.5, "type": "rain"}]})
    # A click in the padding after seconds_total (1 s) is not a detection: precision stays 1
    # (it would be 1/2 on the whole 2 s).
    wave = _clicks([0.5, 1.5], seconds=2.0)
    batch = {"meta": [{"events": [{"onset": 0.5, "type": "impact"}]}], "seconds_total": torch.tensor([1.0])}
    metric.update(wave[None, None], batch, SR)
    scores = metric.compute()
    assert float(scores["onset_precision"]) == 1.0 and float(scores["onset_f1"]) == 1.0
    whole = SyntheticWorldMetric()
    whole.update(wave[None, None], {"meta": batch["meta"]}, SR)
    assert float(whole.compute()["onset_precision"]) == 0.5


def test_ild_matches_closed_form_for_constant_gains() -> None:
    noise = torch.randn(SR)
    stereo = torch.stack([0.5 * noise, 0.125 * noise])
    ild, _ = interchannel_level_difference(stereo, SR)
    assert torch.allclose(ild, torch.full_like(ild, 20 * math.log10(4.0)), atol=1e-6)


def _panned(seed: int, reverse: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(2 * SR) / SR
    angle = (math.pi / 4) * (1 + 0.9 * torch.sin(2 * math.pi * 0.7 * t))  # pan sweeps left <-> right
    if reverse:
        angle = math.pi / 2 - angle
    noise = torch.randn(t.numel(), generator=g)
    return torch.stack([noise * torch.cos(angle), noise * torch.sin(angle)])


def test_pan_correlation_follows_the_ild_trajectory() -> None:
    truth = _panned(0)
    same, err_same = pan_correlation(_panned(1), truth, SR)
    mirrored, err_mirror = pan_correlation(_panned(1, reverse=True), truth, SR)
    assert same > 0.97 and mirrored < -0.97
    assert err_same < 1.0 < err_mirror
    flat = torch.randn(2 * SR).repeat(2, 1)
    corr, err = pan_correlation(flat, truth, SR)  # centred prediction tracks nothing
    assert corr == 0.0 and err > 1.0
    corr, _ = pan_correlation(truth, flat, SR)  # centred truth: nothing to track
    assert math.isnan(corr)
    # A fixed source written to a 24-bit file: its ILD only moves by rounding noise, which
    # must not be scored as movement (a correlation with noise is a coin toss).
    source = torch.randn(2 * SR, generator=torch.Generator().manual_seed(5)) * 0.3
    fixed = torch.stack([0.8 * source, 0.6 * source])
    fixed = torch.round(fixed * 2**23) / 2**23
    corr, err = pan_correlation(_panned(1), fixed, SR)
    assert math.isnan(corr) and err > 1.0
    # ... while a slow movement of a few dB is scored.
    slow = torch.stack([source * (0.8 + 0.1 * torch.linspace(-1, 1, 2 * SR)), source * 0.6])
    corr, _ = pan_correlation(slow, slow, SR)
    assert corr > 0.99


def test_metric_reports_pan_only_for_stereo_predictions() -> None:
    truth = _panned(0)
    meta = [{"category": "x", "events": []}]
    metric = SyntheticWorldMetric()
    metric.update(_panned(3)[None], {"audio": truth[None], "meta": meta}, SR)
    assert float(metric.compute()["pan_corr"]) > 0.97
    mono = SyntheticWorldMetric()
    mono.update(truth.mean(0)[None, None], {"audio": truth[None], "meta": meta}, SR)
    assert math.isnan(float(mono.compute()["pan_corr"]))


def test_textured_clips_are_left_out_of_onset_scores() -> None:
    metric = SyntheticWorldMetric(textured_event_types=["rain"])
    metric.update(torch.zeros(1, 1, SR), {"meta": [{"category": "rain", "events": [{"onset": 0.5, "type": "rain"}]}]}, SR)
    scores = metric.compute()
    assert math.isnan(float(scores["onset_f1"])) and float(scores["num_clips"]) == 1
    metric.update(_clicks([0.5], seconds=1.0)[None, None], {"meta": [{"events": [{"onset": 0.5, "type": "impact"}]}]}, SR)
    assert float(metric.compute()["onset_f1"]) == 1.0


def test_coincident_reference_onsets_merge_and_clip_start_is_ignored() -> None:
    metric = SyntheticWorldMetric(event_types=None)  # events without a type count
    meta = {"events": [{"onset": 0.0}, {"onset": 1.0}, {"onset": 1.02}, {"onset": 1.5}]}
    assert metric.reference_onsets(meta, duration=3.0).tolist() == [1.0, 1.5]


def test_synthetic_world_ground_truth_scores_high_and_other_seed_low() -> None:
    world = pytest.importorskip("foley.synth.world")
    truth, other = SyntheticWorldMetric(categories=world.CATEGORIES), SyntheticWorldMetric(categories=world.CATEGORIES)
    for index in range(12):
        clip = world.render_clip(index, seed=0, seconds=3.0, fps=8, size=32, sample_rate=SR)
        wrong = world.render_clip(index, seed=1, seconds=3.0, fps=8, size=32, sample_rate=SR)
        batch = {"audio": torch.from_numpy(clip.audio)[None], "meta": [clip.meta]}
        truth.update(batch["audio"], batch, SR)
        other.update(torch.from_numpy(wrong.audio)[None], batch, SR)
    good, bad = truth.compute(), other.compute()
    assert float(good["onset_f1"]) > 0.95 and float(good["sync_offset"]) < 0.005
    assert float(good["pan_corr"]) == pytest.approx(1.0)
    assert float(bad["onset_f1"]) < 0.5 and float(bad["pan_corr"]) < 0.5
