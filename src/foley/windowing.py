"""Long-video generation: window planning and click-free joining.

The generator is trained on windows of ``W`` seconds (8 s by default). A longer segment
is cut into overlapping windows of ``W`` seconds that step by ``W − overlap`` (rounded down
to the generator's latent grid); the last window starts on the grid point from which it
ends exactly at the segment's end (it then overlaps its neighbour by more than
``overlap``). Every window is generated from *its own* video frames, read at the window's
own start time, so each window's audio is aligned to its frames by construction: timing
cannot drift with the length of the video, unlike generating one long sequence past the
trained length (where the paper reports drift after ~20 s). Every window also gets the
same text and noise drawn from the same seed, so its sound character does not jump from
window to window.

Neighbouring windows are joined by a crossfade over their whole overlap. The fade gains
``a(t)`` (outgoing) and ``b(t)`` (incoming) are *correlation-adaptive constant-power*:
starting from the linear ramp ``1 − t, t``, both are divided by
``sqrt(a² + b² + 2ρ·a·b)`` where ``ρ ∈ [0, 1]`` is the normalised correlation of the two
windows' overlapping audio. For identical overlaps (``ρ = 1``) this is exactly the linear
crossfade, which reproduces the signal; for unrelated overlaps (``ρ = 0``) it is the
equal-power fade, whose expected level is flat across the join. A plain linear fade dips
by 3 dB in the middle of an uncorrelated join, and an equal-power fade bumps by 3 dB on a
correlated one; the adaptive gain avoids both level jumps. All operations are pure
functions of tensors.

Continuity across windows. The generator works on a latent grid (``grid`` samples per latent
frame); window starts are placed on that grid (:func:`plan_windows` with ``grid``), so a
latent frame of one window and a latent frame of its neighbour either cover exactly the
same samples or none in common. Two mechanisms then tie neighbours together before the
crossfade has to:

* **Shared noise.** The initial noise is drawn once per *absolute* latent frame of the whole
  segment from the seed (:func:`segment_noise`); each window takes its slice
  (:func:`window_noise`), so overlapping windows start from the same noise on their
  overlap. Windows can still be generated in parallel.
* **Overlap inpainting.** Windows are generated in order, and window ``k + 1`` is sampled
  with window ``k``'s latents as known data on their common frames
  (:func:`overlap_known`; RePaint-style replacement of the state on those frames by the
  noised known latent at every sampler step, see :meth:`foley.flow.FlowMatching.sample`).
  The overlap of ``k + 1`` then *is* ``k``'s latent, and its new part is generated as a
  continuation of it. This costs parallelism: windows run one after another.

Measured with tiny random stages (tests/test_window_continuity.py, 1 s windows, 0.25 s
overlap): relative RMS difference of neighbours' overlap latents 1.84 with independent
noise, 0.063 with shared noise, 0 with inpainting. Window starts on the latent grid are in
general not on the video's frame grid; each window reads the frames on screen at its own
times ``start + i / fps``, as training crops do.

What remains approximate: the overlap's audio still differs slightly between neighbours
(each window's vocoder sees different context at the window edges), which the adaptive
crossfade absorbs; and inpainting only looks one window back, so there is no control of
slow drifts in sound character beyond what the shared prompt and seed give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Window", "plan_windows", "crossfade_gains", "join_windows", "CrossfadeKind",
    "latent_frames", "segment_noise", "window_noise", "overlap_known",
]

CrossfadeKind = Literal["adaptive", "linear", "equal_power"]


@dataclass(frozen=True)
class Window:
    """A window of ``length`` samples starting ``start`` samples into the segment."""

    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


def plan_windows(total: int, window: int, overlap: int, grid: int = 1) -> list[Window]:
    """Cover ``[0, total)`` with windows of ``window`` samples overlapping by at least ``overlap``.

    A segment no longer than ``window`` is one window of exactly ``total`` samples. Every
    window starts on a multiple of ``grid`` (the generator's samples per latent frame); the
    hop is ``window − overlap`` rounded down to the grid, and the last window starts on the
    first grid point from which it reaches ``total`` (so it ends exactly at ``total`` and may
    be up to ``grid − 1`` samples shorter than ``window``). ``grid = 1`` gives windows of
    exactly ``window`` samples, the last one moved back to end at ``total``.

    Args:
        total: samples to cover (> 0).
        window: window length in samples.
        overlap: minimum overlap of neighbours, ``0 <= overlap < window``.
        grid: window starts are multiples of this (>= 1, with ``window − overlap >= grid``).

    Returns:
        Windows in time order; the first starts at 0 and the last ends at ``total``.
    """
    if total <= 0:
        raise ValueError(f"nothing to cover: total = {total} samples")
    if not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < window, got overlap={overlap}, window={window}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1 sample, got {grid}")
    if total <= window:
        return [Window(0, total)]
    hop = (window - overlap) // grid * grid
    if hop < grid:
        raise ValueError(
            f"window - overlap = {window - overlap} samples is less than one latent frame ({grid} samples); "
            "use a smaller overlap"
        )
    count = math.ceil((total - window) / hop) + 1
    # Between the second-to-last start (< total - window) and (count - 1)·hop (>= total - window).
    last = math.ceil((total - window) / grid) * grid
    return [Window(k * hop, window) for k in range(count - 1)] + [Window(last, total - last)]


def latent_frames(window: Window, grid: int) -> tuple[int, int]:
    """``(first, count)``: the absolute latent frames ``[first, first + count)`` a grid-aligned window spans.

    ``count = ceil(length / grid)``, as the generator pads a window to whole latent frames.
    """
    if window.start % grid:
        raise ValueError(f"window {window} does not start on the latent grid of {grid} samples")
    return window.start // grid, math.ceil(window.length / grid)


def segment_noise(windows: Sequence[Window], grid: int, channels: int, seed: int) -> Tensor:
    """Initial noise ``(frames, channels)`` for every absolute latent frame the windows span.

    Drawn on the CPU from ``seed`` in one piece, so it depends only on the seed and the
    segment length, not on how the segment is cut into windows.
    """
    frames = max(sum(latent_frames(w, grid)) for w in windows)
    return torch.randn(frames, channels, generator=torch.Generator().manual_seed(int(seed)))


def window_noise(noise: Tensor, window: Window, grid: int) -> Tensor:
    """The window's slice ``(count, channels)`` of :func:`segment_noise`."""
    first, count = latent_frames(window, grid)
    if first + count > noise.shape[0]:
        raise ValueError(f"window {window} reaches latent frame {first + count}, the noise has {noise.shape[0]}")
    return noise[first : first + count]


def overlap_known(previous: Window, previous_latent: Tensor, window: Window, grid: int) -> tuple[Tensor, Tensor]:
    """Known latents and mask for ``window`` from its predecessor's generated latents.

    Args:
        previous: the preceding window.
        previous_latent: its generated latents ``(count, channels)`` (:func:`latent_frames`).
        window: the window about to be generated.
        grid: samples per latent frame.

    Returns:
        ``known`` ``(count, channels)`` and ``mask`` ``(count,)`` (bool) for ``window``: the
        predecessor's latent frames that lie wholly inside it. A last frame that covers audio
        past the predecessor's end (padding) is not used.
    """
    first, count = latent_frames(window, grid)
    prev_first, _ = latent_frames(previous, grid)
    usable = previous.length // grid  # whole frames only
    known = torch.zeros(count, previous_latent.shape[-1], dtype=previous_latent.dtype)
    mask = torch.zeros(count, dtype=torch.bool)
    lo, hi = max(first, prev_first), min(first + count, prev_first + usable)
    if hi > lo:
        known[lo - first : hi - first] = previous_latent[lo - prev_first : hi - prev_first].to(known.device)
        mask[lo - first : hi - first] = True
    return known, mask


def crossfade_gains(length: int, correlation: float = 0.0, kind: CrossfadeKind = "adaptive") -> tuple[Tensor, Tensor]:
    """Fade-out and fade-in gains ``(a, b)`` of ``length`` samples (float64).

    Args:
        length: overlap in samples.
        correlation: normalised correlation of the two overlapping signals (used by ``"adaptive"``).
        kind: ``"adaptive"`` (see module docstring), ``"linear"`` or ``"equal_power"``.
    """
    t = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    if kind == "equal_power":
        return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)
    fade_out, fade_in = 1.0 - t, t
    if kind == "linear":
        return fade_out, fade_in
    if kind != "adaptive":
        raise ValueError(f"unknown crossfade kind {kind!r}; use 'adaptive', 'linear' or 'equal_power'")
    rho = min(max(float(correlation), 0.0), 1.0)
    norm = torch.sqrt(fade_out**2 + fade_in**2 + 2.0 * rho * fade_out * fade_in)
    return fade_out / norm, fade_in / norm


def _correlation(x: Tensor, y: Tensor) -> float:
    x, y = x.double().flatten(), y.double().flatten()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0


def join_windows(
    chunks: Sequence[Tensor], windows: Sequence[Window], kind: CrossfadeKind = "adaptive"
) -> Tensor:
    """Overlap-add generated windows into one signal with crossfades over every overlap.

    Args:
        chunks: one ``(..., length)`` tensor per window (e.g. ``(2, L)`` stereo).
        windows: the plan the chunks were generated for (:func:`plan_windows`).
        kind: crossfade law (see :func:`crossfade_gains`).

    Returns:
        ``(..., windows[-1].stop)`` tensor in the chunks' dtype.
    """
    if len(chunks) != len(windows) or not chunks:
        raise ValueError(f"got {len(chunks)} chunks for {len(windows)} windows")
    for chunk, window in zip(chunks, windows):
        if chunk.shape[-1] != window.length:
            raise ValueError(f"chunk of {chunk.shape[-1]} samples for a window of {window.length}")
    out = chunks[0].clone()
    for prev, window, chunk in zip(windows[:-1], windows[1:], chunks[1:]):
        overlap = prev.stop - window.start
        if overlap < 0:
            raise ValueError(f"windows {prev} and {window} leave a gap")
        if overlap > min(window.length, out.shape[-1]):
            raise ValueError(f"window {window} starts before the previous window {prev}")
        tail = out[..., window.start :]
        head = chunk[..., :overlap]
        fade_out, fade_in = crossfade_gains(overlap, _correlation(tail, head), kind)
        mixed = tail.double() * fade_out + head.double() * fade_in
        out = torch.cat([out[..., : window.start], mixed.to(out.dtype), chunk[..., overlap:]], dim=-1)
    return out
