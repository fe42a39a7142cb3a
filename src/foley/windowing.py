"""Long-video generation: window planning and click-free joining.

The generator is trained on windows of ``W`` seconds (8 s by default). A longer segment
is cut into overlapping windows of exactly ``W`` seconds that step by ``W − overlap``;
the last window is moved back so that it ends exactly at the segment's end (it then
overlaps its neighbour by more than ``overlap``). Every window is generated from *its
own* video frames, read at the window's own start time, so each window's audio is aligned
to its frames by construction: timing cannot drift with the length of the video, unlike
generating one long sequence past the trained length (where the paper reports drift after
~20 s). Every window also gets the same seed and the same text, so its sound character
does not jump from window to window.

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

Not done yet: conditioning continuity across windows (drawing the initial noise per
absolute latent position so overlaps share it, or inpainting window k+1's overlap toward
window k's latent during sampling). Both need ``FlowModule.generate`` to accept an initial
noise / known-latent argument; the crossfade alone already keeps joins click- and
jump-free, and timing is exact per window either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Window", "plan_windows", "crossfade_gains", "join_windows", "CrossfadeKind"]

CrossfadeKind = Literal["adaptive", "linear", "equal_power"]


@dataclass(frozen=True)
class Window:
    """A window of ``length`` samples starting ``start`` samples into the segment."""

    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


def plan_windows(total: int, window: int, overlap: int) -> list[Window]:
    """Cover ``[0, total)`` with windows of ``window`` samples overlapping by at least ``overlap``.

    A segment no longer than ``window`` is one window of exactly ``total`` samples.

    Args:
        total: samples to cover (> 0).
        window: window length in samples.
        overlap: minimum overlap of neighbours, ``0 <= overlap < window``.

    Returns:
        Windows in time order; the first starts at 0 and the last ends at ``total``.
    """
    if total <= 0:
        raise ValueError(f"nothing to cover: total = {total} samples")
    if not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < window, got overlap={overlap}, window={window}")
    if total <= window:
        return [Window(0, total)]
    hop = window - overlap
    count = math.ceil((total - window) / hop) + 1
    starts = [k * hop for k in range(count - 1)] + [total - window]
    return [Window(start, window) for start in starts]


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
