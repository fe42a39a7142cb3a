"""Vectorised anti-aliased 2-D drawing over a whole clip at once.

Geometry is in normalised frame units: x and y in [0, 1], (0, 0) the top-left corner,
y growing downwards. Every primitive takes per-frame parameters as ``(T,)`` arrays (or
scalars) and an optional set of frames, and only touches the rows/columns its shape can
cover, which keeps a 200-frame clip at a few milliseconds per primitive.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Canvas", "hsv_to_rgb"]

Color = np.ndarray | tuple[float, float, float]


def hsv_to_rgb(hue: np.ndarray | float, saturation: float = 1.0, value: float = 1.0) -> np.ndarray:
    """HSV -> RGB for an array of hues in [0, 1); returns ``(..., 3)`` float32."""
    hue = np.asarray(hue, dtype=np.float64)
    channel = np.array([5.0, 3.0, 1.0])
    k = (channel + hue[..., None] * 6.0) % 6.0
    rgb = value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(np.float32)


class Canvas:
    """An RGB float clip ``(T, H, W, 3)`` in [0, 1] with drawing primitives.

    Args:
        frames: Number of frames T.
        size: Width and height in pixels.
    """

    def __init__(self, frames: int, size: int) -> None:
        self.frames = frames
        self.size = size
        self.rgb = np.zeros((frames, size, size, 3), dtype=np.float32)
        self.coords = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)

    # -- helpers ---------------------------------------------------------------
    def _frames(self, frames: np.ndarray | None) -> np.ndarray:
        return np.arange(self.frames) if frames is None else np.asarray(frames, dtype=np.int64)

    def _per_frame(self, value: np.ndarray | float, frames: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype=np.float32)
        if value.ndim == 0:
            return np.full(len(frames), value, dtype=np.float32)
        if value.shape[0] == self.frames and len(frames) != self.frames:
            return value[frames]
        return value

    def _color(self, color: Color, frames: np.ndarray) -> np.ndarray:
        color = np.asarray(color, dtype=np.float32)
        if color.ndim == 1:
            return color[None, None, None, :]
        if color.shape[0] == self.frames and len(frames) != self.frames:
            color = color[frames]
        return color[:, None, None, :]

    def _span(self, low: np.ndarray, high: np.ndarray) -> slice:
        first = int(np.clip(np.floor(float(np.min(low)) * self.size) - 1, 0, self.size))
        last = int(np.clip(np.ceil(float(np.max(high)) * self.size) + 1, 0, self.size))
        return slice(first, max(first, last))

    @staticmethod
    def _index(frames: np.ndarray) -> slice | np.ndarray:
        # Contiguous frame ranges index as slices: views instead of fancy-index copies.
        if len(frames) and frames[-1] - frames[0] == len(frames) - 1 and np.all(np.diff(frames) == 1):
            return slice(int(frames[0]), int(frames[-1]) + 1)
        return frames

    def _region(
        self, frames: np.ndarray, x_low: np.ndarray, x_high: np.ndarray, y_low: np.ndarray, y_high: np.ndarray
    ) -> tuple[tuple, np.ndarray, np.ndarray] | None:
        """Pixels a shape may touch: ``(index into rgb, x coords (F|1, w), y coords (F|1, h))``.

        A shape that moves a lot (a bouncing ball) gets a small per-frame window that
        follows it; a shape that stays put gets one shared box, indexed as a view.
        """
        if len(frames) == 0:
            return None
        rows, cols = self._span(y_low, y_high), self._span(x_low, x_high)
        if rows.start == rows.stop or cols.start == cols.stop:
            return None
        height = min(self.size, int(np.ceil(float(np.max(y_high - y_low)) * self.size)) + 3)
        width = min(self.size, int(np.ceil(float(np.max(x_high - x_low)) * self.size)) + 3)
        union = (rows.stop - rows.start) * (cols.stop - cols.start)
        if len(frames) < 4 or 2 * height * width >= union:
            return (self._index(frames), rows, cols), self.coords[cols][None, :], self.coords[rows][None, :]
        top = np.clip(np.floor(y_low * self.size).astype(np.int64) - 1, 0, self.size - height)
        left = np.clip(np.floor(x_low * self.size).astype(np.int64) - 1, 0, self.size - width)
        row_index = top[:, None] + np.arange(height)
        col_index = left[:, None] + np.arange(width)
        index = (frames[:, None, None], row_index[:, :, None], col_index[:, None, :])
        return index, self.coords[col_index], self.coords[row_index]

    def _params(self, frames: np.ndarray | None, *values: np.ndarray | float) -> tuple[np.ndarray, list[np.ndarray]]:
        """The frames to draw on and every parameter as a per-frame array over them."""
        chosen = self._frames(frames)
        return chosen, [self._per_frame(v, chosen) for v in values]

    def _apply(self, index: tuple, weight: np.ndarray, color: np.ndarray, additive: bool = False) -> None:
        """Blend ``color`` with per-pixel ``weight`` (coverage), or add ``weight * color`` (light)."""
        region = self.rgb[index]
        if additive:
            region += weight[..., None] * color
        else:
            region += weight[..., None] * (color - region)
        if not all(isinstance(i, slice) for i in index):  # fancy indexing gave a copy
            self.rgb[index] = region

    # -- primitives --------------------------------------------------------------
    def vertical_gradient(self, top: Color, bottom: Color, start: float = 0.0, stop: float = 1.0) -> None:
        """Static background band: rows between ``start`` and ``stop`` get a top-to-bottom gradient.

        Drawn on every frame identically, so use it before anything that moves.
        """
        rows = self._span(np.array([start]), np.array([stop]))
        y = self.coords[rows]
        weight = np.clip((y - start) / max(stop - start, 1e-6), 0.0, 1.0)[:, None]
        band = (1 - weight) * np.asarray(top, np.float32) + weight * np.asarray(bottom, np.float32)
        inside = np.clip(np.minimum(y - start, stop - y) * self.size + 0.5, 0.0, 1.0)[:, None]
        frame = self.rgb[0, rows]
        frame = frame * (1 - inside[:, None, :]) + (inside * band)[:, None, :]
        self.rgb[:, rows] = frame[None]

    def ellipse(
        self,
        cx: np.ndarray | float,
        cy: np.ndarray | float,
        rx: np.ndarray | float,
        ry: np.ndarray | float,
        color: Color,
        alpha: np.ndarray | float = 1.0,
        frames: np.ndarray | None = None,
    ) -> None:
        """Filled ellipse with centre (cx, cy) and radii (rx, ry)."""
        frames, (cx, cy, rx, ry, alpha) = self._params(frames, cx, cy, rx, ry, alpha)
        found = self._region(frames, cx - rx, cx + rx, cy - ry, cy + ry)
        if found is None:
            return
        index, xs, ys = found
        dx = (xs[:, None, :] - cx[:, None, None]) / rx[:, None, None]
        dy = (ys[:, :, None] - cy[:, None, None]) / ry[:, None, None]
        distance = np.sqrt(dx * dx + dy * dy)
        edge = (np.minimum(rx, ry) * self.size)[:, None, None]
        coverage = np.clip((1.0 - distance) * edge + 0.5, 0.0, 1.0) * alpha[:, None, None]
        self._apply(index, coverage, self._color(color, frames))

    def rect(
        self,
        x0: np.ndarray | float,
        x1: np.ndarray | float,
        y0: np.ndarray | float,
        y1: np.ndarray | float,
        color: Color,
        alpha: np.ndarray | float = 1.0,
        frames: np.ndarray | None = None,
    ) -> None:
        """Filled axis-aligned rectangle [x0, x1] x [y0, y1]."""
        frames, (x0, x1, y0, y1, alpha) = self._params(frames, x0, x1, y0, y1, alpha)
        found = self._region(frames, x0, x1, y0, y1)
        if found is None:
            return
        index, xs, ys = found
        cover_x = np.clip(np.minimum(xs - x0[:, None], x1[:, None] - xs) * self.size + 0.5, 0.0, 1.0)
        cover_y = np.clip(np.minimum(ys - y0[:, None], y1[:, None] - ys) * self.size + 0.5, 0.0, 1.0)
        coverage = cover_y[:, :, None] * cover_x[:, None, :] * alpha[:, None, None]
        self._apply(index, coverage, self._color(color, frames))

    def glow(
        self,
        cx: np.ndarray | float,
        cy: np.ndarray | float,
        sigma: np.ndarray | float,
        color: Color,
        strength: np.ndarray | float = 1.0,
        frames: np.ndarray | None = None,
    ) -> None:
        """Additive Gaussian light, cut at 3 sigma (separable, so cheap even when large)."""
        frames, (cx, cy, sigma, strength) = self._params(frames, cx, cy, sigma, strength)
        reach = 3.0 * sigma
        found = self._region(frames, cx - reach, cx + reach, cy - reach, cy + reach)
        if found is None:
            return
        index, xs, ys = found
        gx = np.exp(-0.5 * ((xs - cx[:, None]) / sigma[:, None]) ** 2)
        gy = np.exp(-0.5 * ((ys - cy[:, None]) / sigma[:, None]) ** 2)
        light = gy[:, :, None] * gx[:, None, :] * strength[:, None, None]
        self._apply(index, light, self._color(color, frames), additive=True)

    def segment(
        self,
        ax: np.ndarray | float,
        ay: np.ndarray | float,
        bx: np.ndarray | float,
        by: np.ndarray | float,
        width: float,
        color: Color,
        frames: np.ndarray | None = None,
    ) -> None:
        """Thick line segment from A to B with round caps."""
        frames, (ax, ay, bx, by) = self._params(frames, ax, ay, bx, by)
        half = width / 2
        found = self._region(frames, np.minimum(ax, bx) - half, np.maximum(ax, bx) + half,
                             np.minimum(ay, by) - half, np.maximum(ay, by) + half)
        if found is None:
            return
        index, xs, ys = found
        px = xs[:, None, :] - ax[:, None, None]
        py = ys[:, :, None] - ay[:, None, None]
        vx, vy = (bx - ax)[:, None, None], (by - ay)[:, None, None]
        t = np.clip((px * vx + py * vy) / np.maximum(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
        distance = np.sqrt((px - t * vx) ** 2 + (py - t * vy) ** 2)
        coverage = np.clip((half - distance) * self.size + 0.5, 0.0, 1.0)
        self._apply(index, coverage, self._color(color, frames))

    def dots(self, frame: np.ndarray, y: np.ndarray, x: np.ndarray, color: Color, alpha: np.ndarray | float = 1.0) -> None:
        """Blend single pixels at (frame, y, x) positions (coverage accumulates, capped at 1)."""
        frame = np.asarray(frame, dtype=np.int64)
        row = np.floor(np.asarray(y) * self.size).astype(np.int64)
        col = np.floor(np.asarray(x) * self.size).astype(np.int64)
        keep = (row >= 0) & (row < self.size) & (col >= 0) & (col < self.size) & (frame >= 0) & (frame < self.frames)
        if not np.any(keep):
            return
        weights = np.broadcast_to(np.asarray(alpha, dtype=np.float32), frame.shape)[keep]
        flat = (frame[keep] * self.size + row[keep]) * self.size + col[keep]
        pixels, inverse = np.unique(flat, return_inverse=True)
        coverage = np.minimum(np.bincount(inverse, weights=weights), 1.0).astype(np.float32)[:, None]
        view = self.rgb.reshape(-1, 3)
        view[pixels] += coverage * (np.asarray(color, np.float32) - view[pixels])

    def to_uint8(self) -> np.ndarray:
        """The clip as uint8 ``(T, H, W, 3)`` (consumes the float buffer)."""
        rgb = np.clip(self.rgb, 0.0, 1.0, out=self.rgb)
        rgb *= 255.0
        rgb += 0.5
        return rgb.astype(np.uint8)
