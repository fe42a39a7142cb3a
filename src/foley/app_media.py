"""What ``foley app`` does with files, without the web page: checks, previews, pictures, examples.

Everything here is plain Python on paths and arrays (PyAV through :mod:`foley.io`, matplotlib
without pyplot), so it is tested without a browser and no file name ever reaches a shell.

* :func:`check_upload` turns an uploaded file into a :class:`CheckedVideo` or raises
  :class:`InputError` with the sentence the page shows (too large, not a video, no frames).
* :func:`choose_segment` resolves start and duration against the video and the server's limits.
* :func:`write_output_video` writes the mp4 the page plays: the untouched video stream with the
  new audio when the whole of a browser-playable video was used, else the segment re-encoded
  as H.264 at a preview size.
* :func:`channels_figure` / :func:`draw_channels` draw both channels' waveform and spectrogram,
  with ground-truth onsets of a synthetic clip as markers.
* :class:`SyntheticExamples` renders the built-in synthetic clips and recognises them again by
  content when they come back from the page.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foley.io.atomic import atomic_path
from foley.io.media import write_video
from foley.io.mux import mux_audio
from foley.io.video import VideoError, VideoFile, VideoInfo, probe_video, resize_frames, stream_times

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "AppLimits",
    "InputError",
    "CheckedVideo",
    "check_upload",
    "choose_segment",
    "write_output_video",
    "channels_figure",
    "draw_channels",
    "SyntheticExample",
    "SyntheticExamples",
]

logger = logging.getLogger(__name__)

MB = 1_000_000
PREVIEW_SIDE = 480  # longest side of a re-encoded preview, pixels
PREVIEW_MAX_FPS = 30.0
MIN_SECONDS = 0.1
SPECTROGRAM_RANGE_DB = 90.0  # colours span the loudest bin down to this many dB below it
# (codec, pixel format) pairs every browser plays inside an mp4; other videos are re-encoded.
_PLAYABLE = {("h264", "yuv420p"), ("h264", "yuvj420p")}


@dataclass(frozen=True)
class AppLimits:
    """What one request may ask of the server.

    Args:
        max_upload_mb: largest accepted upload, in MB (10^6 bytes).
        max_seconds: longest segment generated per request, in seconds.
    """

    max_upload_mb: float = 200.0
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0 or not self.max_seconds > 0:
            raise ValueError(f"limits must be positive, got max_upload_mb={self.max_upload_mb}, max_seconds={self.max_seconds}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


class InputError(ValueError):
    """A request the server turns down; the message is written for the person at the page."""


@dataclass(frozen=True)
class CheckedVideo:
    """An upload that holds a readable video.

    Args:
        path: the file on the server.
        name: its name as uploaded (shown in messages).
        info: duration, frame rate, size and frame count.
        codec: video codec name (``h264``, ``vp9``, ...).
        pix_fmt: pixel format of the video stream (``yuv420p``, ...).
    """

    path: Path
    name: str
    info: VideoInfo
    codec: str
    pix_fmt: str

    @property
    def browser_playable(self) -> bool:
        """Whether its video stream can be copied as is into an mp4 that browsers play."""
        return (self.codec, self.pix_fmt) in _PLAYABLE


def _video_stream(path: Path, name: str) -> tuple[str, str]:
    """``(codec, pixel format)`` of the first video stream, or the :class:`InputError` to show."""
    import av

    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        logger.info("rejected upload %s: %s", name, error)
        raise InputError(
            f"{name} is not a video: FFmpeg does not recognise it as a media file. "
            "Upload a video file such as mp4, mov, webm or mkv."
        ) from error
    with container:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams})
            held = f" (it holds {', '.join(kinds)} only)" if kinds else ""
            raise InputError(f"{name} holds no video frames{held}; upload a video with pictures.")
        context = container.streams.video[0].codec_context
        return context.name, str(context.pix_fmt or "")


def check_upload(path: str | os.PathLike[str], limits: AppLimits, name: str | None = None) -> CheckedVideo:
    """Check that ``path`` is a video this server accepts.

    Args:
        path: the uploaded file.
        limits: the server's limits.
        name: the name the person knows the file by (default: the file name).

    Raises:
        InputError: the file is missing, larger than ``limits.max_upload_mb``, not a video, or
            holds no video frames; the message says which and what to do.
    """
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise InputError(f"{name}: the uploaded file is no longer on the server; upload it again.")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise InputError(
            f"{name} is {size / MB:.3g} MB; this server accepts videos up to {limits.max_upload_mb:g} MB "
            "(`foley app --max-upload-mb`). Upload a shorter or smaller video."
        )
    if size == 0:
        raise InputError(f"{name} is empty (0 bytes); upload a video file such as mp4, mov, webm or mkv.")
    codec, pix_fmt = _video_stream(path, name)
    try:
        info = probe_video(path, name=name)
    except VideoError as error:
        logger.info("rejected upload %s: %s", name, error)
        if "no video frames" in str(error) or "no decodable" in str(error):
            raise InputError(f"{name} holds no video frames; upload a video with pictures.") from error
        raise InputError(f"{name}: its {codec} video stream cannot be decoded; re-encode it (e.g. to H.264 mp4) "
                         "and upload it again.") from error
    if info.num_frames == 0 or not info.duration > 0:
        raise InputError(f"{name} holds no video frames; upload a video with pictures.")
    return CheckedVideo(path=path, name=name, info=info, codec=codec, pix_fmt=pix_fmt)


def choose_segment(video: CheckedVideo, start: float | None, duration: float | None, limits: AppLimits) -> tuple[float, float]:
    """The ``(start, duration)`` in seconds to generate for ``video``.

    Args:
        video: the checked upload.
        start: seconds from the first frame (``None``: 0).
        duration: seconds; ``None`` or 0 means to the end of the video.
        limits: the server's limits (``max_seconds``).

    Raises:
        InputError: the start lies outside the video, the duration is negative or too short,
            the segment runs past the end, or it is longer than ``limits.max_seconds``.
    """
    length = float(video.info.duration)
    start = float(start or 0.0)
    if not math.isfinite(start) or start < 0 or start >= length:
        raise InputError(f"Start {start:g} s lies outside {video.name}, which is {length:.2f} s long; choose a start from 0 to {length:.2f} s.")
    rest = length - start
    if duration is None or float(duration) == 0.0:
        duration = rest
    duration = float(duration)
    if not math.isfinite(duration) or duration < MIN_SECONDS:
        raise InputError(f"Duration {duration:g} s is too short; give at least {MIN_SECONDS:g} s, or 0 for the rest of the video.")
    if duration > rest + 1e-3:
        raise InputError(
            f"{start:g} s + {duration:g} s runs past the end of {video.name} ({length:.2f} s); "
            f"give a duration of at most {rest:.2f} s, or 0 for the rest of the video."
        )
    if duration > limits.max_seconds:
        what = "The video" if start == 0 and duration == rest else "The segment"
        raise InputError(
            f"{what} is {duration:.1f} s long; this server generates at most {limits.max_seconds:g} s per request "
            "(`foley app --max-seconds`). Set a shorter duration (and a start) to pick a part of it."
        )
    return start, min(duration, rest)


def _preview_size(height: int, width: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """Even ``(height, width)`` with the aspect ratio kept and the longest side at most ``side``."""
    scale = min(1.0, side / max(height, width))
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


def write_output_video(video: CheckedVideo, start: float, duration: float, audio: np.ndarray, sample_rate: int,
                       out: str | os.PathLike[str]) -> None:
    """Write the mp4 of ``[start, start + duration)`` of ``video`` with ``audio`` (AAC), atomically.

    The whole of a video whose stream browsers play is copied packet for packet
    (:func:`foley.io.mux.mux_audio`). Otherwise the segment's frames are read at their times
    (``start + i / fps``, at most 30 fps), scaled to at most 480 pixels and encoded as H.264,
    so the page can always play the result and audio sample 0 stays on the segment's first frame.

    Args:
        video: the checked upload.
        start: segment start in seconds.
        duration: segment length in seconds.
        audio: float ``(2, N)`` in [-1, 1].
        sample_rate: rate of ``audio``.
        out: the ``.mp4`` to write.
    """
    whole = start == 0.0 and abs(duration - video.info.duration) < 1e-6
    if whole and video.browser_playable:
        mux_audio(video.path, audio, sample_rate, out)
        return
    fps = min(float(video.info.fps), PREVIEW_MAX_FPS)
    times = stream_times(start, duration, fps)
    if len(times) == 0:  # a segment shorter than one frame still shows its first frame
        times = np.array([start])
    size = _preview_size(video.info.height, video.info.width)
    reader = VideoFile(video.path, name=video.name)
    chunks = []
    for first in range(0, len(times), 64):  # full-size frames are only held 64 at a time
        chunk = reader.frames_at(times[first:first + 64])
        chunks.append(resize_frames(chunk, size, "resize").permute(0, 2, 3, 1).numpy())
    write_video(out, np.concatenate(chunks), fps, audio=np.asarray(audio, np.float32), sample_rate=sample_rate)


def channels_figure(audio: np.ndarray, sample_rate: int, start: float = 0.0,
                    events: Sequence[dict[str, Any]] = (), title: str = "") -> Figure:
    """The waveform and the spectrogram of both channels, with ground-truth onsets.

    Four rows share the time axis, in seconds of the video: left and right waveforms, then
    left and right spectrograms (dB, 1024-sample frames, colours over the 90 dB below the
    loudest bin). Ground-truth ``events`` (synthetic clips' ``onset`` times, in seconds of the
    video) inside the segment are dashed lines on every row.

    Args:
        audio: float ``(2, N)``.
        sample_rate: rate of ``audio``.
        start: video time of sample 0.
        events: ground-truth events with an ``onset`` in seconds.
        title: figure title.

    Returns:
        A matplotlib ``Figure`` with an Agg canvas (no pyplot state, safe in server threads).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim != 2 or wave.shape[0] != 2:
        raise ValueError(f"channels_figure needs stereo audio (2, N), got shape {wave.shape}")
    stop = start + wave.shape[1] / sample_rate
    onsets = [float(e["onset"]) for e in events if start <= float(e["onset"]) < stop]
    figure = Figure(figsize=(10, 6.4), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(4, 1, sharex=True)
    t = start + np.arange(wave.shape[1]) / sample_rate
    for row, (channel, name, colour) in enumerate(zip(wave, ("left", "right"), ("tab:blue", "tab:red"))):
        axes[row].plot(t, channel, lw=0.5, color=colour)
        axes[row].set_ylim(-1.0, 1.0)
        axes[row].set_ylabel(f"{name}\nwave")
        with np.errstate(divide="ignore"):  # digital silence has no finite dB value
            spectrum, _, _, image = axes[row + 2].specgram(channel, NFFT=1024, Fs=sample_rate, noverlap=768,
                                                           cmap="magma", xextent=(start, stop))
        peak = 10 * np.log10(max(float(np.max(spectrum)), 1e-20)) if spectrum.size else 0.0
        image.set_clim(peak - SPECTROGRAM_RANGE_DB, peak)
        axes[row + 2].set_ylabel(f"{name}\nHz")
    for onset in onsets:
        for ax in axes:
            ax.axvline(onset, color="cyan", lw=1.0, ls="--")
    axes[-1].set_xlabel("seconds of the video")
    axes[-1].set_xlim(start, stop)
    if onsets:
        title = f"{title}  (dashed: {len(onsets)} ground-truth onsets)" if title else f"dashed: {len(onsets)} ground-truth onsets"
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def draw_channels(audio: np.ndarray, sample_rate: int, out: str | os.PathLike[str], start: float = 0.0,
                  events: Sequence[dict[str, Any]] = (), title: str = "") -> None:
    """Write :func:`channels_figure` of ``audio`` to the PNG ``out``, atomically (same arguments)."""
    figure = channels_figure(audio, sample_rate, start=start, events=events, title=title)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")


@dataclass(frozen=True)
class SyntheticExample:
    """A built-in clip of the synthetic world (:func:`foley.synth.world.render_clip`).

    Args:
        name: what the page calls it.
        path: its mp4 (no audio track).
        caption: the clip's own description, used as the prompt.
        events: ground-truth sound events (``onset``, ``offset``, ``type`` in seconds).
        digest: sha256 of the mp4, to recognise the clip when the page sends it back.
    """

    name: str
    path: Path
    caption: str
    events: list[dict[str, Any]] = field(hash=False)
    digest: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SyntheticExamples:
    """The built-in synthetic clips: written once into a folder, recognised by content.

    The page copies an example into its upload area before it comes back, so a clip is
    recognised by its size and sha256 rather than its path.

    Args:
        folder: where the mp4s go (created).
        categories: one clip per synthetic-world category.
        seconds: clip length.
        size: frame side in pixels.
        fps: frame rate.
        seed: synthetic-world seed.
    """

    def __init__(self, folder: str | os.PathLike[str], categories: Sequence[str] = ("bouncing_ball", "drum", "vehicle"),
                 seconds: float = 4.0, size: int = 128, fps: float = 25.0, seed: int = 0) -> None:
        from foley.synth.world import render_clip

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.examples: list[SyntheticExample] = []
        for index, category in enumerate(categories):
            clip = render_clip(index, seed, seconds=seconds, fps=fps, size=size, category=category)
            path = folder / f"synthetic_{category}.mp4"
            write_video(path, clip.frames, fps)
            self.examples.append(SyntheticExample(name=category.replace("_", " "), path=path, caption=clip.meta["caption"],
                                                  events=list(clip.meta["events"]), digest=_sha256(path)))
        self._sizes = {example.path.stat().st_size for example in self.examples}

    def __iter__(self):
        return iter(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def find(self, path: str | os.PathLike[str]) -> SyntheticExample | None:
        """The example whose bytes ``path`` holds, or ``None``."""
        path = Path(path)
        try:
            if path.stat().st_size not in self._sizes:
                return None
        except OSError:
            return None
        digest = _sha256(path)
        return next((example for example in self.examples if example.digest == digest), None)
