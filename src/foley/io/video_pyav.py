"""PyAV frame decoding in presentation order: the fallback of :class:`foley.io.video.VideoFile`.

decord refuses some valid files, e.g. every H.264 video 16 pixels wide ("Check failed:
from_size == to_size (1536 vs. 768)": its frame copy assumes rows without padding).
:class:`PyAVFrames` reads the same files with PyAV and numbers frames the way decord
does, so a caller's frame indices and times mean the same thing on either path:

* frames are the packets of the first video stream, sorted by presentation timestamp;
* frame ``i`` starts at ``pts_i · time_base`` and ends at ``(pts_i + duration_i) · time_base``
  (decord computes the same numbers in float32; here they are exact float64).

Decoding is sequential from the nearest keyframe, and continues from where the previous
call stopped when the next request lies ahead (the usual case: windows of a long video,
or the CLIP and sync streams of one training crop).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

from foley.io.video import VideoError

__all__ = ["PyAVFrames"]

log = logging.getLogger(__name__)


class PyAVFrames:
    """Frames of one video decoded with PyAV, indexed in presentation order.

    Args:
        source: A file path or the encoded file's bytes.
        name: How to call the video in error messages.
        num_threads: Decoder threads (0 lets FFmpeg decide).

    Raises:
        VideoError: The container cannot be opened, has no video stream,
            or its frames carry no timestamps.
    """

    def __init__(self, source: str | bytes, name: str, num_threads: int = 1) -> None:
        self._container: av.container.InputContainer | None = None  # set first: __del__ closes it
        self.name = name
        self._source = source
        self._threads = num_threads
        pts: list[int] = []
        durations: list[int] = []
        keyframe_pts: list[int] = []
        try:
            with self._open() as container:
                if not container.streams.video:
                    raise VideoError(f"{name}: the file has no video stream")
                stream = container.streams.video[0]
                time_base = stream.time_base
                for packet in container.demux(stream):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    if packet.pts is None:
                        raise VideoError(f"{name}: video frames carry no timestamps; remux the file (ffmpeg -i IN -c copy OUT.mp4)")
                    pts.append(int(packet.pts))
                    durations.append(int(packet.duration or 0))
                    if packet.is_keyframe:
                        keyframe_pts.append(int(packet.pts))
        except VideoError:
            raise
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{name}: cannot open video with PyAV ({type(exc).__name__}: {exc})") from exc
        if not pts or time_base is None:
            raise VideoError(f"{name}: no video frames found")
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        self.pts = np.asarray(pts, dtype=np.int64)[order]
        ends = self.pts + np.asarray(durations, dtype=np.int64)[order]
        self.time_base = Fraction(time_base)
        # Seconds from integer ticks: the product is exact, only the division rounds (once).
        num, den = self.time_base.numerator, self.time_base.denominator
        self.timestamps = np.stack([self.pts * num / den, ends * num / den], axis=1).astype(np.float64)
        self._position = {int(p): i for i, p in enumerate(self.pts)}
        self._keyframe_pts = np.sort(np.asarray(keyframe_pts, dtype=np.int64))
        self._decoded: Iterator[tuple[int, av.VideoFrame]] | None = None
        self._last = -1  # position of the last frame the running decoder produced

    def __len__(self) -> int:
        return len(self.pts)

    def _open(self) -> av.container.InputContainer:
        handle = io.BytesIO(self._source) if isinstance(self._source, bytes) else self._source
        return av.open(handle, mode="r")

    def close(self) -> None:
        """Close the open decoder (a later :meth:`frames` call reopens the file)."""
        if self._container is not None:
            self._container.close()
        self._container, self._decoded, self._last = None, None, -1

    def __del__(self) -> None:
        self.close()

    def _restart(self, position: int, seek: bool) -> None:
        """Start decoding at the keyframe at or before frame ``position`` (or at the start)."""
        self.close()
        container = self._open()
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self._threads
        target = int(self.pts[position])
        earlier = self._keyframe_pts[self._keyframe_pts <= target]
        if seek and len(earlier) and earlier[-1] > self.pts[0]:
            container.seek(int(earlier[-1]), stream=stream, backward=True, any_frame=False)
        self._container = container
        self._decoded = self._positions(container.decode(stream))

    def _positions(self, frames: Iterator[av.VideoFrame]) -> Iterator[tuple[int, av.VideoFrame]]:
        for frame in frames:
            position = self._position.get(frame.pts) if frame.pts is not None else None
            if position is None:
                log.debug("%s: skipping a decoded frame with unknown pts %s", self.name, frame.pts)
                continue
            yield position, frame

    def frames(self, positions: np.ndarray) -> np.ndarray:
        """Decode frames by position; ``positions`` must be unique and ascending.

        Returns:
            uint8 ``(K, H, W, 3)`` RGB frames, in the order of ``positions``.

        Raises:
            VideoError: A requested frame cannot be decoded.
        """
        wanted = [int(p) for p in positions]
        if not wanted:
            raise ValueError("PyAVFrames.frames needs at least one position")
        found: dict[int, np.ndarray] = {}
        # Continue the running decoder when the request lies ahead of it with no keyframe in
        # between, else seek to the keyframe before the first wanted frame; if frames are
        # still missing (a seek that lands after them, e.g. in an open GOP), decode from the start.
        attempts = ["seek", "start"]
        if self._decoded is not None and wanted[0] > self._last:
            between = (self._keyframe_pts > self.pts[self._last]) & (self._keyframe_pts <= self.pts[wanted[0]])
            if not between.any():
                attempts.insert(0, "continue")
        for attempt in attempts:
            if attempt != "continue":
                self._restart(wanted[0], seek=attempt == "seek")
            try:
                self._decode_into(found, wanted)
            except av.FFmpegError as exc:
                self.close()
                raise VideoError(f"{self.name}: PyAV cannot decode the video ({type(exc).__name__}: {exc})") from exc
            if len(found) == len(wanted):
                break
        missing = [p for p in wanted if p not in found]
        if missing:
            raise VideoError(
                f"{self.name}: frame {missing[0]} (at {self.timestamps[missing[0], 0] - self.timestamps[0, 0]:.3f} s) "
                "cannot be decoded; the file is damaged, re-encode it"
            )
        return np.stack([found[p] for p in wanted])

    def _decode_into(self, found: dict[int, np.ndarray], wanted: list[int]) -> None:
        assert self._decoded is not None
        wanted_set = set(wanted)
        for position, frame in self._decoded:
            self._last = position
            if position in wanted_set:
                found[position] = frame.to_ndarray(format="rgb24")
            if position >= wanted[-1]:
                return
        self.close()  # end of stream: the next request starts afresh
