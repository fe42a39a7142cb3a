"""Window planning covers every sample; joins are click-free and level-continuous."""
from __future__ import annotations

import math

import pytest
import torch

from foley.windowing import (
    Window,
    crossfade_gains,
    join_windows,
    latent_frames,
    overlap_known,
    plan_windows,
    segment_noise,
    window_noise,
)


@pytest.mark.parametrize("total", [1, 999, 1000, 1001, 1750, 2500, 60 * 441])
def test_plan_covers_every_sample_and_ends_at_the_end(total: int) -> None:
    windows = plan_windows(total, window=1000, overlap=250)
    assert windows[0].start == 0 and windows[-1].stop == total
    covered = torch.zeros(total, dtype=torch.int32)
    for w in windows:
        assert w.length == min(1000, total)
        covered[w.start : w.stop] += 1
    assert bool((covered >= 1).all())
    for prev, nxt in zip(windows, windows[1:]):
        assert prev.stop - nxt.start >= 250  # at least the requested overlap
        assert nxt.start > prev.start


@pytest.mark.parametrize("total", [1000, 1001, 1750, 2500, 4097, 60 * 441])
def test_grid_plan_starts_on_the_latent_grid_and_ends_at_the_end(total: int) -> None:
    grid = 64
    windows = plan_windows(total, window=1000, overlap=250, grid=grid)
    assert windows[0].start == 0 and windows[-1].stop == total
    assert all(w.start % grid == 0 for w in windows)
    assert all(w.length == min(1000, total) for w in windows[:-1])
    assert 1000 - grid < windows[-1].length <= 1000 or total <= 1000
    for prev, nxt in zip(windows, windows[1:]):
        assert prev.stop - nxt.start >= 250 and nxt.start > prev.start
    if len(windows) > 2:
        assert windows[1].start == (1000 - 250) // grid * grid  # the hop, rounded down to the grid


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        plan_windows(0, 100, 10)
    with pytest.raises(ValueError):
        plan_windows(500, 100, 100)
    with pytest.raises(ValueError, match="latent frame"):
        plan_windows(5000, 1000, 990, grid=64)


def test_crossfade_laws() -> None:
    a, b = crossfade_gains(100, correlation=1.0)
    torch.testing.assert_close(a + b, torch.ones(100, dtype=torch.float64))  # correlated: amplitude sums to 1
    a, b = crossfade_gains(100, correlation=0.0)
    torch.testing.assert_close(a**2 + b**2, torch.ones(100, dtype=torch.float64))  # uncorrelated: power sums to 1
    a, b = crossfade_gains(100, kind="equal_power")
    torch.testing.assert_close(a**2 + b**2, torch.ones(100, dtype=torch.float64))
    assert a[0] > 0.99 and b[-1] > 0.99


def _cut(signal: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
    return [signal[..., w.start : w.stop].clone() for w in windows]


def test_join_of_matching_windows_reproduces_the_signal() -> None:
    sr = 8000
    t = torch.arange(5 * sr, dtype=torch.float64) / sr
    signal = torch.stack([torch.sin(2 * math.pi * 220 * t), 0.5 * torch.sin(2 * math.pi * 330 * t + 1)]).float()
    windows = plan_windows(signal.shape[-1], window=2 * sr, overlap=sr // 2)
    joined = join_windows(_cut(signal, windows), windows)
    assert joined.shape == signal.shape
    torch.testing.assert_close(joined, signal, atol=1e-5, rtol=0)
    # No click: the largest sample-to-sample step is that of the sine itself.
    step = joined.diff(dim=-1).abs().max()
    assert float(step) <= float(signal.diff(dim=-1).abs().max()) + 1e-5


def test_join_of_independent_windows_keeps_the_level() -> None:
    gen = torch.Generator().manual_seed(0)
    sr, seconds = 8000, 12
    windows = plan_windows(seconds * sr, window=4 * sr, overlap=sr)
    chunks = [0.3 * torch.randn(2, w.length, generator=gen) for w in windows]  # unrelated noise per window
    joined = join_windows(chunks, windows)
    frame = sr // 20
    rms_db = 20 * torch.log10(joined[:, : joined.shape[-1] // frame * frame].reshape(2, -1, frame).pow(2).mean(-1).sqrt())
    # Every 50 ms frame, inside and across the joins, stays at the windows' level (−10.5 dB) within 1 dB.
    target = 20 * math.log10(0.3)
    assert float((rms_db - target).abs().max()) < 1.0
    # And the joins produce no click: no step larger than what the noise itself produces.
    assert float(joined.diff(dim=-1).abs().max()) < float(max(c.diff(dim=-1).abs().max() for c in chunks)) * 1.05


def test_join_validates_its_inputs() -> None:
    windows = plan_windows(300, 200, 50)
    with pytest.raises(ValueError, match="chunk of"):
        join_windows([torch.zeros(200), torch.zeros(199)], windows)
    with pytest.raises(ValueError, match="chunks"):
        join_windows([torch.zeros(200)], windows)


def test_window_noise_is_the_slice_of_the_segment_noise_at_the_absolute_offset() -> None:
    grid, channels = 64, 3
    windows = plan_windows(10_000, window=1000, overlap=300, grid=grid)
    noise = segment_noise(windows, grid, channels, seed=7)
    # One frame per absolute latent position of the segment (the last window may pad one frame).
    assert noise.shape == (math.ceil(10_000 / grid), channels)
    torch.testing.assert_close(segment_noise(windows, grid, channels, seed=7), noise, rtol=0, atol=0)
    for window in windows:
        first, count = latent_frames(window, grid)
        assert first == window.start // grid and count == math.ceil(window.length / grid)
        torch.testing.assert_close(window_noise(noise, window, grid), noise[first : first + count], rtol=0, atol=0)
    # Neighbours share their noise on every common latent frame.
    for prev, nxt in zip(windows, windows[1:]):
        shift = (nxt.start - prev.start) // grid
        common = prev.length // grid - shift
        assert common > 0
        torch.testing.assert_close(window_noise(noise, prev, grid)[shift : shift + common],
                                   window_noise(noise, nxt, grid)[:common], rtol=0, atol=0)
    with pytest.raises(ValueError, match="grid"):
        latent_frames(Window(10, 100), grid)


def test_overlap_known_takes_the_previous_windows_whole_frames() -> None:
    grid = 10
    previous, window = Window(0, 95), Window(60, 95)  # frames 0-9 (frame 9 half padding) and 6-15
    latent = torch.arange(10, dtype=torch.float32)[:, None].expand(10, 2)
    known, mask = overlap_known(previous, latent, window, grid)
    assert mask.tolist() == [True, True, True] + [False] * 7  # frames 6, 7, 8; frame 9 is partly padding
    torch.testing.assert_close(known[:3, 0], torch.tensor([6.0, 7.0, 8.0]))
    assert (known[3:] == 0).all()
    _, none = overlap_known(previous, latent, Window(100, 95), grid)
    assert not none.any()
