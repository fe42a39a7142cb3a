"""Timed video frame reading (decord, with PyAV where decord fails).

Every frame stream in foley is defined by *times*, not by frame indices: stream frame
``i`` of a stream at rate ``f`` starting at ``s`` shows the source frame that is on
screen at time ``s + i / f`` (docs/architecture.md §2). The source frame on screen at
time ``t`` is the last frame whose presentation timestamp is ``<= t``. Timestamps are
read per frame from the container, so 29.97, 30 and 60 fps sources and variable frame
rate files give correctly timed frames. Time 0 is the first video frame's timestamp.

The ``"mmaudio"`` frame rule reproduces MMAudio's ``read_frames`` instead (see
:func:`mmaudio_stream_times` and :meth:`VideoFile.indices_at`): stream instants are
accumulated by repeated addition of ``1 / f``, times are the container's own
(``pts · time_base``, as PyAV's ``frame.time``), and each instant takes the first frame
whose time is at or after it.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

if TYPE_CHECKING:
    from foley.io.video_pyav import PyAVFrames

__all__ = [
    "VideoError",
    "VideoInfo",
    "VideoFile",
    "CropMode",
    "FrameRule",
    "VideoBackend",
    "stream_times",
    "stream_length",
    "mmaudio_stream_times",
    "mmaudio_duration",
    "frame_indices",
    "resize_frames",
    "read_frames_at",
    "probe_video",
]

log = logging.getLogger(__name__)

CropMode = Literal["resize", "center"]
FrameRule = Literal["on_screen", "mmaudio"]
"""Which source frame a stream instant ``t`` takes. ``"on_screen"``: the frame on screen at
``t`` (last frame starting at or before it), ``t`` counted from the first frame.
``"mmaudio"``: MMAudio's ``read_frames``: the first frame starting at or after ``t``, ``t``
on the container's clock (``pts · time_base`` computed as PyAV's ``frame.time``; frames
before time 0 are never taken)."""

# decord reports timestamps as float32 seconds; a frame whose pts lies within this many
# seconds after the requested time still counts as "on screen", so that rounding of e.g.
# 1001/30000 s never selects the previous frame. It must stay below the smallest real gap
# between a stream time and a frame start (1/30000 s for 25 fps against 29.97 fps).
DEFAULT_PTS_TOLERANCE = 1e-5

VideoSource = str | os.PathLike[str] | bytes | bytearray | memoryview


class VideoError(ValueError):
    """A video cannot be opened or decoded; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` reports about a file.

    Args:
        duration: Seconds from the first frame's timestamp to the end of the last frame.
        fps: Average frame rate (frames / duration).
        width: Frame width in pixels.
        height: Frame height in pixels.
        num_frames: Number of decodable frames.
        has_audio: Whether the container holds at least one audio stream.
    """

    duration: float
    fps: float
    width: int
    height: int
    num_frames: int
    has_audio: bool


def _describe(source: VideoSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes in memory>"
    return str(source)


def stream_length(duration: float, fps: float) -> int:
    """Number of frames of a stream at ``fps`` covering ``duration`` seconds (architecture §2)."""
    return int(math.floor(duration * fps + 1e-6))


def stream_times(start: float, duration: float, fps: float) -> np.ndarray:
    """Times ``start + i / fps`` of the frames of a stream covering ``[start, start + duration)``."""
    return start + np.arange(stream_length(duration, fps), dtype=np.float64) / fps


def mmaudio_stream_times(start: float, duration: float, fps: float) -> np.ndarray:
    """The instants MMAudio's ``read_frames`` samples a stream at, ``stream_length(duration, fps)`` of them.

    The first is ``start``, each next one the previous plus ``1 / fps`` in float64, as its loop
    computes them (``0.04 + 0.04 + 0.04`` is ``0.12000000000000001``, not ``3 / 25``); which
    frame an instant takes at a frame boundary depends on that last bit.
    """
    times = np.empty(stream_length(duration, fps), dtype=np.float64)
    step, current = 1 / fps, float(start)
    for i in range(len(times)):
        times[i] = current
        current += step
    return times


def frame_indices(starts: np.ndarray, times: np.ndarray, rule: FrameRule = "on_screen",
                  tolerance: float = DEFAULT_PTS_TOLERANCE) -> np.ndarray:
    """Index of the frame each time takes among frames starting at ``starts`` (ascending), clamped to them.

    Args:
        starts: Frame start times, on the clock ``rule`` reads.
        times: The stream instants.
        rule: ``"on_screen"``: the last frame starting at or before ``t + tolerance``;
            ``"mmaudio"``: the first frame starting at or after ``t`` (see :data:`FrameRule`).
        tolerance: ``"on_screen"`` only: seconds a frame may start after ``t`` and still count.
    """
    times = np.asarray(times, dtype=np.float64)
    if rule == "mmaudio":
        index = np.searchsorted(starts, times, side="left")
    elif rule == "on_screen":
        index = np.searchsorted(starts, times + tolerance, side="right") - 1
    else:
        raise ValueError(f"rule must be 'on_screen' or 'mmaudio', got {rule!r}")
    return np.clip(index, 0, len(starts) - 1)


def mmaudio_duration(frame_times: np.ndarray, duration: float, rates: Sequence[float] = (8.0, 25.0)) -> float:
    """The duration MMAudio's ``load_video(path, duration)`` keeps for a video with these frame times.

    Its ``read_frames`` gives each stream one frame per instant (:func:`mmaudio_stream_times`
    from 0) up to the last frame timed at or before ``duration``; when a stream gets fewer than
    ``duration`` seconds of frames, the duration shrinks to what it got (e.g. 7.96 s for an 8 s
    video at 24 fps, whose last frame starts at 7.958 s, short of the 200th 25-fps instant).

    Args:
        frame_times: Frame start times on the container's clock (:attr:`VideoFile.pts_times`).
        duration: The requested duration in seconds.
        rates: The stream rates (MMAudio: CLIP 8, sync 25).
    """
    times = np.asarray(frame_times, dtype=np.float64)
    kept = times[(times >= 0.0) & (times <= duration)]
    if len(kept) == 0:
        return 0.0
    last = float(kept.max())
    for fps in rates:
        count, current, step = 0, 0.0, 1 / fps
        while current <= last:
            count += 1
            current += step
        duration = min(duration, count / fps)
    return duration


VideoBackend = Literal["auto", "decord", "pyav"]


class VideoFile:
    """An opened video whose frames are looked up by time.

    decord decodes; where it fails on a file that PyAV can decode (decord refuses e.g.
    every H.264 video 16 pixels wide), PyAV takes over (:mod:`foley.io.video_pyav`). Both
    number the frames by presentation timestamp from the same packet timestamps, so the
    same times select the same frames on either path.

    Args:
        source: A file path or the encoded file's bytes.
        name: How to call the video in error messages (defaults to the path).
        num_threads: Decoding threads (0 lets FFmpeg decide).
        backend: ``"auto"`` (decord, PyAV where decord fails), or one of them only.

    Raises:
        VideoError: If the file is missing, empty or has no decodable video stream.
    """

    def __init__(self, source: VideoSource, name: str | None = None, num_threads: int = 1, backend: VideoBackend = "auto") -> None:
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
        self.name = _describe(source, name)
        self._threads = num_threads
        self._allow_pyav = backend != "decord"
        self._source: str | bytes
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise VideoError(f"{self.name}: empty video data (0 bytes)")
            self._source = source if isinstance(source, bytes) else bytes(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise VideoError(f"{self.name}: video file does not exist")
            if path.stat().st_size == 0:
                raise VideoError(f"{self.name}: video file is empty (0 bytes)")
            self._source = str(path)
        self._reader: Any = None  # decord.VideoReader while decord decodes
        self._pyav: PyAVFrames | None = None  # once PyAV decodes
        decord_error: Exception | None = None
        if backend != "pyav":
            try:
                stamps = self._open_decord()
            except Exception as exc:  # decord raises DECORDError / RuntimeError / AssertionError
                if backend == "decord":
                    raise VideoError(f"{self.name}: cannot decode video ({type(exc).__name__}: {exc})") from exc
                decord_error = exc
        if self._reader is None:
            try:
                stamps = self._open_pyav().timestamps
            except VideoError as exc:
                if decord_error is None:
                    raise
                raise VideoError(
                    f"{self.name}: cannot decode video (decord: {type(decord_error).__name__}: {decord_error}; PyAV: {exc})"
                ) from exc
            if decord_error is not None:
                log.debug("%s: decord cannot open the video (%s); decoding with PyAV", self.name, decord_error)
        if stamps.ndim != 2 or len(stamps) == 0:
            raise VideoError(f"{self.name}: no video frames found")
        self._origin = float(stamps[0, 0])
        self._pts_times: np.ndarray | None = stamps[:, 0].copy() if self._reader is None else None
        self.starts = stamps[:, 0] - self._origin
        ends = stamps[:, 1] - self._origin
        if not np.all(np.diff(self.starts) >= 0):
            # Timestamps out of presentation order would make "last frame before t" ill-defined.
            raise VideoError(f"{self.name}: frame timestamps are not monotonic; re-encode the file")
        last_len = ends[-1] - self.starts[-1]
        if not last_len > 0:
            last_len = float(np.median(np.diff(self.starts))) if len(self.starts) > 1 else 0.0
        self.duration = float(self.starts[-1] + last_len)
        self._shape: tuple[int, int] | None = None

    def _open_decord(self) -> np.ndarray:
        """Open with decord; returns its ``(N, 2)`` frame start/end timestamps in seconds."""
        import decord

        handle = io.BytesIO(self._source) if isinstance(self._source, bytes) else self._source
        reader = decord.VideoReader(handle, num_threads=self._threads)
        stamps = np.asarray(reader.get_frame_timestamp(range(len(reader))), dtype=np.float64)
        self._reader = reader
        return stamps

    def _open_pyav(self) -> PyAVFrames:
        from foley.io.video_pyav import PyAVFrames  # imports this module: load on demand

        self._pyav = PyAVFrames(self._source, self.name, num_threads=self._threads)
        return self._pyav

    def _fall_back_to_pyav(self, error: Exception) -> None:
        """decord failed to decode frames: let PyAV decode from now on, on decord's frame timing."""
        if not self._allow_pyav:
            raise VideoError(f"{self.name}: decoding frames failed ({type(error).__name__}: {error})") from error
        try:
            pyav = self._open_pyav()
        except VideoError as exc:
            raise VideoError(f"{self.name}: decoding frames failed (decord: {type(error).__name__}: {error}; PyAV: {exc})") from exc
        starts = pyav.timestamps[:, 0] - pyav.timestamps[0, 0]
        # Indices handed out so far came from decord's table; PyAV must number frames alike.
        if len(starts) != len(self.starts) or not np.allclose(starts, self.starts, rtol=0.0, atol=1e-4 + 1e-6 * self.duration):
            raise VideoError(
                f"{self.name}: decord cannot decode this video ({error}) and PyAV finds other frames "
                f"({len(starts)} vs {len(self.starts)}); re-encode the file"
            )
        log.debug("%s: decord cannot decode frames (%s); decoding with PyAV", self.name, error)
        self._reader = None

    @property
    def backend(self) -> str:
        """Which library decodes the frames: ``"decord"`` or ``"pyav"``."""
        return "decord" if self._reader is not None else "pyav"

    def __len__(self) -> int:
        return len(self.starts)

    def _frame_shape(self) -> tuple[int, int]:
        if self._shape is None:
            first = self.frames([0])
            self._shape = (int(first.shape[1]), int(first.shape[2]))
        return self._shape

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return self._frame_shape()[0]

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return self._frame_shape()[1]

    @property
    def fps(self) -> float:
        """Average frame rate over the whole file."""
        return len(self) / self.duration if self.duration > 0 else 0.0

    @property
    def pts_times(self) -> np.ndarray:
        """Frame start times on the container's clock, ``pts · time_base`` exactly as PyAV's ``frame.time``.

        Not shifted to the first frame. Read with PyAV (packet timestamps, no decoding) also
        when decord decodes: decord's float32 timestamps are not exact.
        """
        if self._pts_times is None:
            pyav = self._pyav if self._pyav is not None else self._open_pyav_timing()
            self._pts_times = pyav.timestamps[:, 0].copy()
        return self._pts_times

    def _open_pyav_timing(self) -> PyAVFrames:
        from foley.io.video_pyav import PyAVFrames

        timing = PyAVFrames(self._source, self.name, num_threads=self._threads)
        if len(timing) != len(self):
            raise VideoError(f"{self.name}: PyAV finds {len(timing)} frames, decord {len(self)}; re-encode the file")
        return timing

    def indices_at(self, times: np.ndarray, tolerance: float = DEFAULT_PTS_TOLERANCE, rule: FrameRule = "on_screen") -> np.ndarray:
        """Index of the frame each time takes (clamped to the first and last frame).

        Args:
            times: Seconds; from the first frame for ``"on_screen"``, on the container's clock
                for ``"mmaudio"``.
            tolerance: ``"on_screen"`` only: seconds a frame may start after ``t`` and still count.
            rule: ``"on_screen"`` or ``"mmaudio"`` (see :data:`FrameRule`).
        """
        return frame_indices(self.pts_times if rule == "mmaudio" else self.starts, times, rule, tolerance)

    def frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode frames by index; returns uint8 ``(K, H, W, 3)`` in the order given."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros((0, self.height, self.width, 3), dtype=np.uint8)
        unique, inverse = np.unique(indices, return_inverse=True)
        if unique[0] < 0 or unique[-1] >= len(self):
            raise IndexError(f"{self.name}: frame indices must lie in [0, {len(self)}), got {unique[0]}..{unique[-1]}")
        decoded = None
        if self._reader is not None:
            try:
                decoded = self._reader.get_batch(unique.tolist()).asnumpy()
            except Exception as exc:  # noqa: BLE001 - any decord failure: PyAV decides
                self._fall_back_to_pyav(exc)
        if decoded is None:
            assert self._pyav is not None
            decoded = self._pyav.frames(unique)
        if self._shape is None:
            self._shape = (int(decoded.shape[1]), int(decoded.shape[2]))
        return decoded[inverse.reshape(-1)]

    def frames_at(self, times: np.ndarray, tolerance: float = DEFAULT_PTS_TOLERANCE, rule: FrameRule = "on_screen") -> np.ndarray:
        """Frames at ``times`` (on screen, or by ``rule``; see :meth:`indices_at`) as uint8 ``(T, H, W, 3)``."""
        return self.frames(self.indices_at(times, tolerance, rule))


def _target_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def resize_frames(frames: np.ndarray | torch.Tensor, size: int | tuple[int, int] | None, crop: CropMode = "center") -> torch.Tensor:
    """Resize uint8 frames ``(T, H, W, 3)`` to a model input size; returns uint8 ``(T, 3, h, w)``.

    Bicubic with antialiasing (torchvision's ``Resize`` on uint8 tensors).

    Args:
        frames: uint8 frames, channels last.
        size: Output ``(height, width)``, or one int for a square; ``None`` keeps the size.
        crop: ``"resize"`` stretches to ``size``; ``"center"`` scales the image so that it
            covers ``size`` (for a square: short side to ``size``) and crops the centre.
    """
    video = torch.as_tensor(frames)
    if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"resize_frames expects uint8 (T, H, W, 3) frames, got {tuple(video.shape)} {video.dtype}")
    video = video.permute(0, 3, 1, 2)
    if size is None or video.shape[0] == 0:
        if size is not None:
            out_h, out_w = _target_size(size)
            return torch.zeros((0, 3, out_h, out_w), dtype=torch.uint8)
        return video.contiguous()
    out_h, out_w = _target_size(size)
    in_h, in_w = video.shape[-2:]
    if crop == "resize":
        new_h, new_w = out_h, out_w
    elif crop == "center" and out_h == out_w:
        # torchvision's Resize(int) (CLIP, Synchformer and MMAudio preprocessing): the short side
        # to the size, the long side int(size * long / short).
        short, long = min(in_h, in_w), max(in_h, in_w)
        new_long = int(out_h * long / short)
        new_h, new_w = (out_h, new_long) if in_h <= in_w else (new_long, out_h)
    elif crop == "center":
        scale = max(out_h / in_h, out_w / in_w)
        new_h, new_w = max(out_h, int(in_h * scale)), max(out_w, int(in_w * scale))
    else:
        raise ValueError(f"crop must be 'resize' or 'center', got {crop!r}")
    if (new_h, new_w) != (in_h, in_w):
        # torchvision's uint8 kernel is ~15x faster than float interpolation on CPU.
        video = TF.resize(video, [new_h, new_w], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    if (new_h, new_w) != (out_h, out_w):
        top = int(round((new_h - out_h) / 2.0))
        left = int(round((new_w - out_w) / 2.0))
        video = video[:, :, top : top + out_h, left : left + out_w]
    return video.contiguous()


def read_frames_at(
    source: VideoSource | VideoFile,
    times: np.ndarray | Sequence[float],
    size: int | tuple[int, int] | None = None,
    crop: CropMode = "center",
    tolerance: float = DEFAULT_PTS_TOLERANCE,
    name: str | None = None,
) -> np.ndarray:
    """Read the frames on screen at ``times`` (seconds from the first frame).

    Args:
        source: Path, encoded bytes, or an already opened :class:`VideoFile`.
        times: Times in seconds.
        size: Output size (see :func:`resize_frames`); ``None`` keeps the source size.
        crop: ``"resize"`` or ``"center"`` (see :func:`resize_frames`).
        tolerance: Seconds a frame's timestamp may lie after ``t`` and still count as on screen.
        name: Name used in error messages.

    Returns:
        uint8 array ``(T, H, W, 3)``.

    Raises:
        VideoError: The video cannot be opened or decoded.
    """
    video = source if isinstance(source, VideoFile) else VideoFile(source, name=name)
    frames = video.frames_at(np.asarray(times, dtype=np.float64), tolerance)
    if size is None:
        return frames
    return resize_frames(frames, size, crop).permute(0, 2, 3, 1).numpy()


def probe_video(source: VideoSource, name: str | None = None) -> VideoInfo:
    """Report duration, frame rate, size and whether there is an audio track.

    Raises:
        VideoError: The file is missing, empty, or holds no decodable video.
    """
    import av

    label = _describe(source, name)
    video = VideoFile(source, name=label)
    try:
        handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
        with av.open(handle) as container:
            has_audio = len(container.streams.audio) > 0
    except Exception as exc:
        raise VideoError(f"{label}: cannot read the container ({type(exc).__name__}: {exc})") from exc
    return VideoInfo(
        duration=video.duration,
        fps=video.fps,
        width=video.width,
        height=video.height,
        num_frames=len(video),
        has_audio=has_audio,
    )
