"""Exact, weight-free evaluation against the synthetic world's ground truth.

The synthetic world (``foley.synth``) knows when every sound event starts and where its
source is on screen, so a generated waveform can be scored without any learned model:

* **Onsets.** Onsets are detected on the generated waveform with a log-energy novelty
  function (a rise of ``rise_db`` over the level one analysis window earlier), peak-picked
  and refined to the sample on a 1 ms trailing energy envelope. Detected onsets are matched
  one-to-one to the ground-truth event onsets within ``±tolerance`` (maximum-cardinality
  matching, ties broken by the smallest total offset), giving precision / recall / F1 and
  the mean absolute offset of matched pairs (the "sync offset").
* **Stereo.** The inter-channel level difference (ILD, dB per frame) of the generated and
  the true stereo signal are correlated over time (Pearson), on frames where both carry
  signal; the mean absolute ILD error is reported as well.

Everything is accumulated in sum states per category (plus an overall row), so the metric
is exact under DDP: ``tp/fp/fn`` etc. are summed over processes before ``compute``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric

from foley.metrics.generation import GenerationMetric

__all__ = [
    "OnsetDetector",
    "OnsetMatch",
    "match_onsets",
    "interchannel_level_difference",
    "pan_correlation",
    "SyntheticWorldMetric",
    "SpanAlignment",
    "onset_alignment_by_time",
]

logger = logging.getLogger(__name__)

_EPS_POWER = 1e-12  # -120 dB: below any 16/24-bit signal, keeps log finite on digital silence


def _as_mono(wave: Tensor) -> Tensor:
    """(N,) or (C, N) -> float64 (N,) mixdown."""
    if wave.dim() == 1:
        return wave.double()
    if wave.dim() == 2:
        return wave.double().mean(dim=0)
    raise ValueError(f"expected a waveform of shape (N,) or (C, N), got {tuple(wave.shape)}")


def _band_power_db(mono: Tensor, win: int, hop: int, sample_rate: int, bands: int, fmin: float = 100.0) -> Tensor:
    """Mean power in dB of Hann-windowed frames in ``bands`` log-spaced bands, ``(T, bands)``.

    Band edges are ``0, fmin·r, fmin·r², ..., sr/2`` (geometric from ``fmin``); one band is
    the plain broadband frame power.
    """
    n = mono.numel()
    n_frames = max(1, math.ceil(max(n - win, 0) / hop) + 1)
    padded = torch.nn.functional.pad(mono, (0, (n_frames - 1) * hop + win - n))
    if bands == 1:
        return _frame_power_db(mono, win, hop)[:, None]
    window = torch.hann_window(win, periodic=False, dtype=mono.dtype)
    spectrum = torch.fft.rfft(padded.unfold(0, win, hop) * window, dim=-1).abs().pow(2)
    freqs = torch.fft.rfftfreq(win, 1.0 / sample_rate, dtype=mono.dtype)
    edges = torch.logspace(math.log10(fmin), math.log10(sample_rate / 2), bands, dtype=mono.dtype)
    band = torch.bucketize(freqs, edges, right=True).clamp(max=bands - 1)
    power = torch.zeros(spectrum.shape[0], bands, dtype=mono.dtype).index_add_(1, band, spectrum)
    # Parseval: sum over rFFT bins / (win · Σw²/win) ~ mean power of the frame's band part.
    power = power * (2.0 / (win * window.pow(2).sum()))
    return 10.0 * torch.log10(power + _EPS_POWER)


def _frame_power_db(mono: Tensor, win: int, hop: int) -> Tensor:
    """Mean power in dB of frames ``[t*hop, t*hop + win)``; the tail is zero-padded.

    Computed from a float64 running sum of the squared signal (O(N) instead of O(N·win)).
    """
    n = mono.numel()
    n_frames = max(1, math.ceil(max(n - win, 0) / hop) + 1)
    squared = torch.nn.functional.pad(mono.double().pow(2), (0, (n_frames - 1) * hop + win - n))
    running = torch.cat([squared.new_zeros(1), squared.cumsum(0)])
    starts = torch.arange(n_frames, device=mono.device) * hop
    power = ((running[starts + win] - running[starts]) / win).clamp(min=0.0)
    return 10.0 * torch.log10(power + _EPS_POWER)


@dataclass
class OnsetDetector:
    """Energy-novelty onset detector tuned for impact-like sounds.

    Args:
        window: analysis window in seconds.
        hop: hop between windows in seconds.
        rise_db: minimal rise of a band's level over its level one window earlier.
        min_separation: two onsets closer than this are merged (the stronger one is kept).
        dynamic_range_db: frames quieter than the clip's loudest frame minus this are ignored.
        floor_db: frames quieter than this absolute level (dBFS power) are ignored.
        envelope: length in seconds of the trailing energy envelope used to refine onsets.
        onset_at_start: report sound present from the first sample as an onset at 0.
        bands: log-spaced frequency bands whose novelties are combined by maximum
            (1: broadband energy novelty).
        band_range_db: with several bands, bands quieter than the loudest band anywhere
            minus this are ignored (narrow bands near the noise floor fluctuate strongly).
        band_fmin: upper edge of the lowest band in Hz.
    """

    window: float = 0.010
    hop: float = 0.0025
    rise_db: float = 9.0
    min_separation: float = 0.050
    dynamic_range_db: float = 50.0
    floor_db: float = -70.0
    envelope: float = 0.001
    onset_at_start: bool = False
    bands: int = 4
    band_range_db: float = 30.0
    band_fmin: float = 1000.0

    def __call__(self, wave: Tensor, sample_rate: int) -> Tensor:
        """Return the onset times in seconds (float64, sorted) of a (N,) or (C, N) waveform."""
        mono = _as_mono(wave.detach().cpu())
        win = max(1, round(self.window * sample_rate))
        hop = max(1, round(self.hop * sample_rate))
        if mono.numel() < win:
            return torch.zeros(0, dtype=torch.float64)
        level = _band_power_db(mono, win, hop, sample_rate, self.bands, self.band_fmin)  # (T, bands)
        lag = max(1, round(win / hop))
        # Reference level one full window earlier, so the reference never overlaps the frame
        # under test. Clips are crops of longer scenes: sound already present at the first
        # sample is not an onset unless ``onset_at_start`` asks for it.
        before = torch.full((lag, level.shape[1]), 10.0 * math.log10(_EPS_POWER), dtype=level.dtype)
        if not self.onset_at_start:
            before = level[:lag].max(dim=0, keepdim=True).values.expand(lag, -1)
        shifted = torch.cat([before, level[:-lag]])  # level one window earlier
        # The loudest of the ``lag`` frames before that: band levels of noisy sounds flicker
        # from frame to frame, a new source stays above all of them.
        padded = torch.cat([before[:1].expand(lag - 1, -1), shifted]) if lag > 1 else shifted
        reference = torch.nn.functional.max_pool1d(padded.T[None], lag, stride=1)[0].T
        # A band counts where it is within the dynamic range of the loudest band anywhere:
        # a new source shows up in the bands it dominates even under a louder, older sound.
        gate = max(float(level.max()) - (self.dynamic_range_db if self.bands == 1 else self.band_range_db), self.floor_db)
        band_novelty = torch.where(level >= gate, level - reference, torch.full_like(level, -math.inf))
        novelty = band_novelty.max(dim=1).values
        candidate = novelty >= self.rise_db
        if not bool(candidate.any()):
            return torch.zeros(0, dtype=torch.float64)
        # A step in energy gives a plateau of novelty ``lag`` frames long; keep the frame of
        # maximal novelty within ``±min_separation`` (first of equal maxima).
        radius = max(1, round(self.min_separation / self.hop))
        scores = torch.where(candidate, novelty, torch.full_like(novelty, -math.inf))
        padded = torch.nn.functional.pad(scores[None, None], (radius, radius), value=-math.inf)
        local_max = torch.nn.functional.max_pool1d(padded, 2 * radius + 1, stride=1)[0, 0]
        peaks = torch.nonzero(candidate & (scores >= local_max)).flatten().tolist()
        onsets: list[int] = []
        for frame in peaks:
            sample = self._refine(mono, frame * hop, win, sample_rate)
            if onsets and sample - onsets[-1] < self.min_separation * sample_rate:
                continue
            onsets.append(sample)
        return torch.tensor(onsets, dtype=torch.float64) / sample_rate

    def _refine(self, mono: Tensor, frame_start: int, win: int, sample_rate: int) -> int:
        """Place the onset on the first sample whose trailing 1 ms energy reaches -20 dB of
        the burst's peak (or halfway, in dB, between background and peak)."""
        env_len = max(1, round(self.envelope * sample_rate))
        lo = max(0, frame_start - win)
        hi = min(mono.numel(), frame_start + 2 * win)
        pre_lo = max(0, lo - 2 * win)
        segment = mono[pre_lo:hi].pow(2)
        csum = torch.cat([torch.zeros(1, dtype=segment.dtype), segment.cumsum(0)])
        idx = torch.arange(1, segment.numel() + 1)
        envelope = (csum[idx] - csum[(idx - env_len).clamp(min=0)]) / env_len
        background = float(envelope[: lo - pre_lo].median()) if lo > pre_lo else 0.0
        search = envelope[lo - pre_lo :]
        peak = float(search.max())
        if peak <= 0.0:
            return frame_start
        threshold = max(math.sqrt(max(background, peak * 1e-8) * peak), peak * 1e-2)
        above = torch.nonzero(search >= threshold).flatten()
        return lo + int(above[0]) if above.numel() else frame_start


@dataclass
class OnsetMatch:
    """Result of one-to-one onset matching.

    Args:
        true_positives: matched pairs.
        false_positives: detected onsets without a reference.
        false_negatives: reference onsets without a detection.
        offsets: signed offsets ``estimated - reference`` of the matched pairs (seconds).
    """

    true_positives: int
    false_positives: int
    false_negatives: int
    offsets: Tensor


def match_onsets(reference: Tensor | Sequence[float], estimated: Tensor | Sequence[float], tolerance: float = 0.05) -> OnsetMatch:
    """Match estimated onsets to reference onsets one-to-one within ``±tolerance`` seconds.

    The matching has maximum cardinality; among those, the total absolute offset is minimal.
    """
    ref = np.asarray(torch.as_tensor(reference, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    est = np.asarray(torch.as_tensor(estimated, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if ref.size == 0 or est.size == 0:
        return OnsetMatch(0, int(est.size), int(ref.size), torch.zeros(0, dtype=torch.float64))
    distance = np.abs(est[None, :] - ref[:, None])
    allowed = distance <= tolerance + 1e-9
    # A pair outside the tolerance costs more than all allowed pairs together, so the
    # assignment first maximises the number of allowed pairs, then minimises their offsets.
    forbidden_cost = 1.0 + float(distance[allowed].sum()) if allowed.any() else 1.0
    cost = np.where(allowed, distance, forbidden_cost)
    rows, cols = linear_sum_assignment(cost)
    keep = allowed[rows, cols]
    rows, cols = rows[keep], cols[keep]
    tp = int(keep.sum())
    offsets = torch.from_numpy(est[cols] - ref[rows])
    return OnsetMatch(tp, int(est.size) - tp, int(ref.size) - tp, offsets)


def interchannel_level_difference(
    wave: Tensor, sample_rate: int, window: float = 0.02, hop: float = 0.01
) -> tuple[Tensor, Tensor]:
    """Per-frame ILD ``10·log10(P_left / P_right)`` in dB and frame power (dB, both channels).

    Args:
        wave: (2, N) stereo waveform.
        sample_rate: its sample rate.
        window: frame length in seconds.
        hop: hop in seconds.
    """
    if wave.dim() != 2 or wave.shape[0] != 2:
        raise ValueError(f"ILD needs a stereo waveform (2, N), got {tuple(wave.shape)}")
    win = max(1, round(window * sample_rate))
    step = max(1, round(hop * sample_rate))
    left = _frame_power_db(wave[0].double(), win, step)
    right = _frame_power_db(wave[1].double(), win, step)
    power = 10.0 * torch.log10((10.0 ** (left / 10.0) + 10.0 ** (right / 10.0)) / 2.0)
    return left - right, power


def pan_correlation(
    predicted: Tensor,
    target: Tensor,
    sample_rate: int,
    dynamic_range_db: float = 40.0,
    floor_db: float = -70.0,
    static_db: float = 0.1,
) -> tuple[float, float]:
    """Pearson correlation over time between predicted and true ILD, and the mean |ILD error|.

    Only frames where both signals are within ``dynamic_range_db`` of their loudest frame
    (and above ``floor_db``) count. Returns ``(nan, nan)`` when fewer than 3 frames qualify.
    The correlation is ``nan`` when the true ILD does not move (standard deviation below
    ``static_db`` over those frames: a fixed source, whose ILD only carries rounding noise
    of the 24-bit files, so a correlation would score that noise) and 0 when only the
    predicted one does not move (a fixed pan tracks none of the movement). ``static_db``
    (0.1 dB) is an order of magnitude below the smallest audible ILD change (~1 dB).
    """
    n = min(predicted.shape[-1], target.shape[-1])
    ild_pred, power_pred = interchannel_level_difference(predicted[..., :n], sample_rate)
    ild_true, power_true = interchannel_level_difference(target[..., :n], sample_rate)
    gate_pred = max(float(power_pred.max()) - dynamic_range_db, floor_db)
    gate_true = max(float(power_true.max()) - dynamic_range_db, floor_db)
    valid = (power_pred >= gate_pred) & (power_true >= gate_true)
    if int(valid.sum()) < 3:
        return math.nan, math.nan
    x, y = ild_pred[valid], ild_true[valid]
    mae = float((x - y).abs().mean())
    xc, yc = x - x.mean(), y - y.mean()
    if float(yc.square().mean().sqrt()) < static_db:  # the true pan never moves: correlation is undefined
        return math.nan, mae
    if float(xc.square().mean().sqrt()) < static_db:  # a fixed predicted pan follows none of the true movement
        return 0.0, mae
    return float((xc * yc).sum()) / float(xc.norm() * yc.norm()), mae


_COUNTERS = ("tp", "fp", "fn", "offset_sum", "clips", "onset_clips", "pan_corr_sum", "pan_clips", "ild_err_sum", "ild_clips")


@dataclass
class SpanAlignment:
    """Onset scores of one time span of a long generation (see :func:`onset_alignment_by_time`).

    Args:
        start: span start in seconds.
        stop: span end in seconds.
        references: ground-truth onsets in the span.
        matched: of those, matched to a detected onset within the tolerance.
        false_positives: detected onsets in the span without a reference.
        mean_offset: mean signed offset ``detected − reference`` of the matches (seconds; nan if none).
        mean_abs_offset: mean absolute offset of the matches (seconds; nan if none).
    """

    start: float
    stop: float
    references: int
    matched: int
    false_positives: int
    mean_offset: float
    mean_abs_offset: float

    @property
    def f1(self) -> float:
        denominator = 2 * self.matched + self.false_positives + (self.references - self.matched)
        return 2 * self.matched / denominator if denominator else math.nan


def onset_alignment_by_time(
    generated: Tensor,
    reference_onsets: Sequence[float] | Tensor,
    sample_rate: int,
    spans: Sequence[tuple[float, float]],
    tolerance: float = 0.05,
    detector: OnsetDetector | None = None,
) -> list[SpanAlignment]:
    """Onset alignment of a long generated waveform, per time span (e.g. first vs last 10 s).

    Onsets are detected once on the whole waveform (so a span edge does not invent onsets),
    matched one-to-one to the references within ``±tolerance`` over the whole clip, and each
    match is reported in the span its reference falls in. Drift shows as a mean offset (or a
    loss of matches) that grows from the early spans to the late ones.

    Args:
        generated: ``(N,)`` or ``(C, N)`` waveform.
        reference_onsets: ground-truth onset times in seconds (e.g. ``meta["events"][i]["onset"]``).
        sample_rate: rate of ``generated``.
        spans: ``(start, stop)`` seconds; a reference at ``t`` belongs to spans with ``start <= t < stop``.
        tolerance: matching tolerance in seconds.
        detector: onset detector (default :class:`OnsetDetector`).
    """
    detected = (detector or OnsetDetector())(generated, sample_rate)
    reference = torch.as_tensor(reference_onsets, dtype=torch.float64).reshape(-1).sort().values
    ref_np, est_np = reference.numpy(), detected.numpy()
    offsets_of: dict[int, float] = {}
    matched_estimates: set[int] = set()
    if ref_np.size and est_np.size:
        distance = np.abs(est_np[None, :] - ref_np[:, None])
        allowed = distance <= tolerance + 1e-9
        # Same assignment as match_onsets, keeping the indices to place each match in its span.
        cost = np.where(allowed, distance, 1.0 + float(distance[allowed].sum()) if allowed.any() else 1.0)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if allowed[r, c]:
                offsets_of[int(r)] = float(est_np[c] - ref_np[r])
                matched_estimates.add(int(c))
    out: list[SpanAlignment] = []
    for start, stop in spans:
        refs = [i for i, t in enumerate(ref_np) if start <= t < stop]
        offsets = [offsets_of[i] for i in refs if i in offsets_of]
        unmatched = sum(1 for j, t in enumerate(est_np) if start <= t < stop and j not in matched_estimates)
        out.append(SpanAlignment(
            float(start), float(stop), len(refs), len(offsets), unmatched,
            float(np.mean(offsets)) if offsets else math.nan,
            float(np.mean(np.abs(offsets))) if offsets else math.nan,
        ))
    return out


class SyntheticWorldMetric(Metric, GenerationMetric):
    """Onset F1, sync offset and stereo-pan agreement against synthetic-world ground truth.

    ``update(generated, batch, sample_rate)`` scores generated audio against the events in
    ``batch["meta"]`` and, for the stereo scores, against ``batch["audio"]`` (when present);
    ``batch["seconds_total"]`` (when present) cuts off padding. Rows of every state are
    ``[overall, *categories, other]``; a clip whose category is not listed goes to ``other``.
    All states are sums, so DDP reduction is exact.

    The defaults match the event types of ``foley.synth``: impacts (bouncing ball), hits
    (drum) and tones (lamp switching on) have onsets; clips with an engine or rain are
    textures and only get the stereo scores.

    Args:
        categories: category names reported separately (``meta["category"]``), as
            ``<metric>/<category>``.
        tolerance: onset matching tolerance in seconds (±).
        event_types: event ``type`` values whose onsets count (``None``: all events).
        textured_event_types: event types of continuous textures (engines, rain) whose
            amplitude fluctuations make onset detection ill-posed: clips containing one are
            left out of the onset scores (they still count for the stereo scores).
        ignore_start: reference and detected onsets earlier than this (seconds) are ignored:
            a sound already playing when the clip starts has no audible onset.
        detector: onset detector; the default is tuned on impact sounds.
        kwargs: torchmetrics ``Metric`` options (e.g. ``sync_on_compute``).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        categories: Sequence[str] = (),
        tolerance: float = 0.05,
        event_types: Sequence[str] | None = ("impact", "hit", "tone"),
        textured_event_types: Sequence[str] = ("engine", "rain"),
        ignore_start: float = 0.02,
        detector: OnsetDetector | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.categories = list(categories)
        self.tolerance = float(tolerance)
        self.event_types = None if event_types is None else set(event_types)
        self.textured_event_types = set(textured_event_types)
        self.ignore_start = float(ignore_start)
        self.detector = detector or OnsetDetector()
        rows = len(self.categories) + 2
        for name in _COUNTERS:
            self.add_state(name, default=torch.zeros(rows, dtype=torch.float64), dist_reduce_fx="sum")

    def _row(self, category: str | None) -> int:
        if category in self.categories:
            return 1 + self.categories.index(category)
        return len(self.categories) + 1

    def reference_onsets(self, meta: Mapping[str, Any], duration: float | None) -> Tensor:
        """Ground-truth onsets (seconds) of one clip's metadata, inside ``[ignore_start, duration)``,
        with onsets closer than the detector's ``min_separation`` merged."""
        onsets = [
            float(event["onset"])
            for event in meta.get("events", [])
            if self.event_types is None or event.get("type") in self.event_types
        ]
        times = torch.tensor(sorted(onsets), dtype=torch.float64)
        times = times[times >= self.ignore_start]
        if duration is not None:
            times = times[times < duration]
        # Onsets closer than the detector can separate (two objects hit together) are one
        # audible onset: keep the first of each such group.
        keep = [i for i in range(times.numel()) if i == 0 or times[i] - times[i - 1] >= self.detector.min_separation]
        return times[keep]

    def scores_onsets(self, meta: Mapping[str, Any]) -> bool:
        """Whether a clip's onsets are scored (it holds no textured event)."""
        return not any(event.get("type") in self.textured_event_types for event in meta.get("events", []))

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        """Score a batch.

        Args:
            generated: generated audio (B, C, N) or (B, N), C = 1 or 2.
            batch: the batch it was generated from: ``meta`` (per-clip metadata with
                ``events`` and ``category``), optionally ``audio`` (ground truth (B, 2, N')
                for the stereo scores; absent: no stereo scores) and ``seconds_total``
                (unpadded clip durations; audio beyond them is ignored).
            sample_rate: sample rate of ``generated`` and ``batch["audio"]``.
        """
        sr = int(sample_rate)
        meta = batch["meta"]
        target = batch.get("audio")
        seconds_total = batch.get("seconds_total")
        preds = generated
        if preds.dim() == 2:
            preds = preds[:, None]
        if preds.dim() != 3 or preds.shape[0] != len(meta):
            raise ValueError(f"generated must be (B, C, N) with B = len(meta) = {len(meta)}, got {tuple(preds.shape)}")
        preds = preds.detach().float().cpu()
        target = None if target is None else target.detach().float().cpu()
        for i, clip_meta in enumerate(meta):
            duration = None if seconds_total is None else float(seconds_total[i])
            n = preds.shape[-1] if duration is None else min(preds.shape[-1], round(duration * sr))
            pred = preds[i, :, :n]
            values = {"clips": 1.0}
            if self.scores_onsets(clip_meta):
                reference = self.reference_onsets(clip_meta, n / sr)
                estimated = self.detector(pred, sr)
                match = match_onsets(reference, estimated[estimated >= self.ignore_start], self.tolerance)
                values.update(
                    tp=match.true_positives,
                    fp=match.false_positives,
                    fn=match.false_negatives,
                    offset_sum=float(match.offsets.abs().sum()),
                    onset_clips=1.0,
                )
            if target is not None and pred.shape[0] == 2 and target.shape[1] == 2:
                corr, ild_err = pan_correlation(pred, target[i, :, :n], sr)
                if not math.isnan(corr):
                    values["pan_corr_sum"], values["pan_clips"] = corr, 1.0
                if not math.isnan(ild_err):
                    values["ild_err_sum"], values["ild_clips"] = ild_err, 1.0
            for row in (0, self._row(clip_meta.get("category"))):
                for name, value in values.items():
                    getattr(self, name)[row] += value

    def compute(self) -> dict[str, Tensor]:
        """Overall scores under plain names, per-category ones as ``name/<category>``.

        Keys: ``onset_precision``, ``onset_recall``, ``onset_f1``, ``sync_offset`` (mean
        absolute offset of matched onsets, seconds), ``pan_corr``, ``ild_mae_db``,
        ``num_clips``. Undefined values (no matches, no stereo, only textured clips) are NaN.
        """
        names = ["", *(f"/{c}" for c in self.categories), "/other"]
        results: dict[str, Tensor] = {}
        nan = torch.tensor(math.nan, dtype=torch.float64)
        for row, suffix in enumerate(names):
            clips = self.clips[row]
            if row > 0 and clips == 0:
                continue
            tp, fp, fn = self.tp[row], self.fp[row], self.fn[row]
            if self.onset_clips[row] == 0:  # only textured clips: onsets are undefined
                precision = recall = f1 = nan
            else:
                # Empty sides follow mir_eval: nothing to find and nothing found is perfect,
                # otherwise an empty side scores 0.
                precision = tp / (tp + fp) if tp + fp > 0 else (torch.ones_like(tp) if fn == 0 else torch.zeros_like(tp))
                recall = tp / (tp + fn) if tp + fn > 0 else (torch.ones_like(tp) if fp == 0 else torch.zeros_like(tp))
                f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else torch.ones_like(tp)
            results[f"onset_precision{suffix}"] = precision
            results[f"onset_recall{suffix}"] = recall
            results[f"onset_f1{suffix}"] = f1
            results[f"sync_offset{suffix}"] = self.offset_sum[row] / tp if tp > 0 else nan
            pan = self.pan_clips[row]
            results[f"pan_corr{suffix}"] = self.pan_corr_sum[row] / pan if pan > 0 else nan
            ild = self.ild_clips[row]
            results[f"ild_mae_db{suffix}"] = self.ild_err_sum[row] / ild if ild > 0 else nan
            results[f"num_clips{suffix}"] = clips
        return results
