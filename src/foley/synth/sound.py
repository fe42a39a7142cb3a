"""Audio building blocks for the synthetic world: causal sources, envelopes and panning.

Everything here is causal (nothing sounds before the sample it is placed at), which is
what makes the event onsets in the metadata exact to the sample.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

__all__ = [
    "pan_gains",
    "place",
    "place_panned",
    "decay",
    "lowpass",
    "bandpass",
    "gate",
    "taper_end",
    "impact_modes",
    "membrane_hit",
    "harmonic_tone",
    "bell_strike",
]


def pan_gains(x: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power pan law: x = 0 is hard left, 1 hard right, 0.5 centre (-3 dB each)."""
    theta = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * (np.pi / 2)
    return np.cos(theta), np.sin(theta)


def place(out: np.ndarray, start: int, mono: np.ndarray, gain_left: float, gain_right: float) -> None:
    """Add ``mono`` into stereo ``out`` from sample ``start`` (truncated at the end)."""
    if start >= out.shape[1]:
        return
    stop = min(out.shape[1], start + len(mono))
    piece = mono[: stop - start]
    out[0, start:stop] += gain_left * piece
    out[1, start:stop] += gain_right * piece


def place_panned(out: np.ndarray, start: int, mono: np.ndarray, x: np.ndarray | float) -> None:
    """Add ``mono`` from ``start`` panned by a constant or per-sample position ``x``."""
    if start >= out.shape[1]:
        return
    stop = min(out.shape[1], start + len(mono))
    piece = mono[: stop - start]
    x = np.asarray(x)
    if x.ndim:
        x = x[: stop - start]
    left, right = pan_gains(x)
    out[0, start:stop] += left * piece
    out[1, start:stop] += right * piece


def decay(length: int, tau_samples: float) -> np.ndarray:
    """Exponential decay exp(-n / tau), starting at exactly 1."""
    return np.exp(-np.arange(length) / max(tau_samples, 1e-9))


def lowpass(signal: np.ndarray, cutoff_hz: float, sample_rate: int) -> np.ndarray:
    """One-pole causal low-pass."""
    a = float(np.exp(-2 * np.pi * cutoff_hz / sample_rate))
    return lfilter([1 - a], [1, -a], signal, axis=-1)


def bandpass(signal: np.ndarray, centre_hz: float, q: float, sample_rate: int) -> np.ndarray:
    """Causal two-pole resonator (RBJ band-pass, constant 0 dB peak gain)."""
    w0 = 2 * np.pi * centre_hz / sample_rate
    alpha = np.sin(w0) / (2 * q)
    b = np.array([alpha, 0.0, -alpha])
    a = np.array([1 + alpha, -2 * np.cos(w0), 1 - alpha])
    return lfilter(b / a[0], a / a[0], signal, axis=-1)


def gate(length: int, start: int, stop: int, fade: int) -> np.ndarray:
    """0/1 envelope over ``[start, stop)`` with linear fades *inside* the interval.

    The fade-in begins at ``start`` (the first sample is already non-zero) and the
    fade-out ends at ``stop``, so no energy leaks outside the interval.
    """
    envelope = np.zeros(length)
    start, stop = max(start, 0), min(stop, length)
    if stop <= start:
        return envelope
    envelope[start:stop] = 1.0
    ramp = min(fade, (stop - start) // 2)
    if ramp > 0:
        envelope[start : start + ramp] = np.arange(1, ramp + 1) / ramp
        if stop < length:  # a source cut by the clip end is not faded out
            envelope[stop - ramp : stop] = np.minimum(envelope[stop - ramp : stop], np.arange(ramp, 0, -1) / ramp)
    return envelope


def taper_end(signal: np.ndarray, sample_rate: int, seconds: float = 0.01) -> np.ndarray:
    """Fade the last ``seconds`` to zero so a truncated decay does not end in a click."""
    length = min(len(signal), int(seconds * sample_rate))
    if length:
        signal[-length:] *= 0.5 * (1 + np.cos(np.pi * np.arange(1, length + 1) / length))
    return signal


def impact_modes(
    rng: np.random.Generator,
    fundamental_hz: float,
    sample_rate: int,
    seconds: float = 0.25,
    ratios: tuple[float, ...] = (1.0, 2.71, 5.2),
    weights: tuple[float, ...] = (1.0, 0.45, 0.2),
    taus: tuple[float, ...] = (0.07, 0.04, 0.02),
    click: float = 0.35,
) -> np.ndarray:
    """A struck object: decaying inharmonic modes plus a 2 ms contact click, peak ~1."""
    length = int(seconds * sample_rate)
    t = np.arange(length) / sample_rate
    out = np.zeros(length)
    for ratio, weight, tau in zip(ratios, weights, taus):
        out += weight * np.sin(2 * np.pi * fundamental_hz * ratio * t) * np.exp(-t / tau)
    noise = rng.standard_normal(length)
    out += click * noise * np.exp(-t / 0.002)
    return taper_end(out / max(np.max(np.abs(out)), 1e-9), sample_rate)


def membrane_hit(
    rng: np.random.Generator,
    low_hz: float,
    sample_rate: int,
    seconds: float = 0.6,
    body_tau: float = 0.22,
    snare: float = 0.35,
) -> np.ndarray:
    """A drum stroke: a tone gliding down from 2x to ``low_hz`` plus a band-passed noise burst."""
    length = int(seconds * sample_rate)
    t = np.arange(length) / sample_rate
    frequency = low_hz * (1.0 + np.exp(-t / 0.035))
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate
    body = np.cos(phase - phase[0]) * np.exp(-t / body_tau)
    burst = bandpass(rng.standard_normal(length), 2200.0, 0.8, sample_rate) * np.exp(-t / 0.05)
    burst /= max(np.max(np.abs(burst)), 1e-9)
    out = body + snare * burst
    return taper_end(out / max(np.max(np.abs(out)), 1e-9), sample_rate)


def harmonic_tone(frequency: np.ndarray, sample_rate: int, weights: tuple[float, ...] = (1.0, 0.3, 0.15)) -> np.ndarray:
    """A tone following a per-sample frequency track, with harmonics, peak <= 1."""
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate
    out = np.zeros_like(phase)
    for harmonic, weight in enumerate(weights, start=1):
        out += weight * np.sin(harmonic * phase)
    return out / sum(weights)


# Partials of a tuned bell relative to its prime (hum, prime, tierce, quint, nominal and
# upper partials), with their weights and decay times in seconds: the low ones ring longest.
BELL_PARTIALS = ((0.5, 0.5, 1.1), (1.0, 1.0, 0.9), (1.19, 0.6, 0.7), (1.5, 0.35, 0.55), (2.0, 0.7, 0.5),
                 (2.51, 0.3, 0.3), (2.66, 0.25, 0.25), (3.01, 0.2, 0.2), (4.1, 0.12, 0.12))


def bell_strike(
    rng: np.random.Generator,
    prime_hz: float,
    sample_rate: int,
    seconds: float = 1.2,
    click: float = 0.5,
) -> np.ndarray:
    """A struck bell: decaying inharmonic partials (:data:`BELL_PARTIALS`, slightly detuned at
    random) plus a 3 ms metallic strike click band-passed around 5 kHz, peak ~1."""
    length = int(seconds * sample_rate)
    t = np.arange(length) / sample_rate
    out = np.zeros(length)
    for ratio, weight, tau in BELL_PARTIALS:
        detune = 1.0 + 0.004 * rng.standard_normal()
        out += weight * np.sin(2 * np.pi * prime_hz * ratio * detune * t) * np.exp(-t / tau)
    strike = bandpass(rng.standard_normal(length), 5000.0, 1.5, sample_rate) * np.exp(-t / 0.003)
    strike /= max(np.max(np.abs(strike)), 1e-9)
    out = out / max(np.max(np.abs(out)), 1e-9) + click * strike
    return taper_end(out / max(np.max(np.abs(out)), 1e-9), sample_rate)
