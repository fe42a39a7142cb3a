"""Video and audio encoding/decoding used by shards, ``foley prepare`` and ``foley generate``.

Conventions:
    * Audio arrays are ``(channels, samples)`` float32 in [-1, 1].
    * Video arrays are ``(frames, height, width, 3)`` uint8 RGB.
    * Frame ``i`` of a video written here is displayed at exactly ``i / fps`` seconds:
      the stream time base is ``1 / fps`` (as a fraction, so NTSC rates such as
      30000/1001 stay exact) and frame ``i`` gets ``pts = i``.
"""

from __future__ import annotations

import io
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import soundfile as sf

from foley.io.atomic import atomic_path

__all__ = [
    "MediaError",
    "as_fraction",
    "write_video",
    "encode_video_bytes",
    "write_audio",
    "encode_audio_bytes",
    "read_audio",
    "decode_audio_track",
    "resample",
    "frame_times",
]

log = logging.getLogger(__name__)

_AUDIO_FORMATS = {".flac": "FLAC", ".wav": "WAV"}
_VIDEO_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_AUDIO_CHUNK = 1024  # AAC frame size; chunks of this size avoid re-buffering inside PyAV


class MediaError(ValueError):
    """A media file or array cannot be read or written as requested."""


def as_fraction(fps: float | Fraction | str) -> Fraction:
    """Convert a frame rate to an exact fraction.

    Floats are snapped to the nearest fraction with a small denominator, so that
    ``30000 / 1001`` (29.97002997...) becomes exactly ``Fraction(30000, 1001)`` and
    ``25.0`` becomes ``Fraction(25)``.

    Args:
        fps: Frame rate as a number, a Fraction or a string such as ``"30000/1001"``.
    """
    rate = Fraction(fps) if isinstance(fps, (str, Fraction, int)) else Fraction(float(fps)).limit_denominator(100_000)
    if rate <= 0:
        raise MediaError(f"frame rate must be positive, got {fps!r}")
    return rate


def _check_wave(wave: np.ndarray, what: str = "audio") -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim == 1:
        wave = wave[None, :]
    if wave.ndim != 2 or wave.shape[0] > 16:
        raise MediaError(
            f"{what}: expected an array of shape (channels, samples), got {wave.shape}; "
            "transpose (samples, channels) arrays with .T"
        )
    if not np.issubdtype(wave.dtype, np.floating):
        raise MediaError(f"{what}: expected float samples in [-1, 1], got dtype {wave.dtype}")
    if not np.all(np.isfinite(wave)):
        raise MediaError(f"{what}: contains NaN or infinite samples")
    return wave.astype(np.float32, copy=False)


def _clip_for_pcm(wave: np.ndarray, what: str) -> np.ndarray:
    # libsndfile wraps around (rather than saturating) on out-of-range floats
    # when writing integer PCM, so clip explicitly and say so.
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 1.0:
        log.warning("%s: peak %.3f exceeds 1.0; clipping to [-1, 1]", what, peak)
        wave = np.clip(wave, -1.0, 1.0)
    return wave


def _check_frames(frames: np.ndarray, pad_odd: bool) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"video: expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise MediaError(f"video: expected uint8 frames, got dtype {frames.dtype}; convert with (x * 255).round().astype(np.uint8)")
    if frames.shape[0] == 0:
        raise MediaError("video: no frames to write")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        if not pad_odd:
            raise MediaError(
                f"video: H.264 yuv420p needs even width and height, got {width}x{height}; "
                "crop or resize the frames, or pass pad_odd=True to repeat the last row/column"
            )
        frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def _layout_for(channels: int) -> str:
    layouts = {1: "mono", 2: "stereo", 6: "5.1"}
    if channels not in layouts:
        raise MediaError(f"audio: {channels} channels are not supported for AAC muxing; use 1, 2 or 6")
    return layouts[channels]


def _mux_video(
    target: str | BinaryIO,
    frames: np.ndarray,
    fps: Fraction,
    audio: np.ndarray | None,
    sample_rate: int | None,
    crf: int,
    preset: str,
    threads: int,
    gop_size: int | None,
    audio_bitrate: int,
    container_format: str,
) -> None:
    with av.open(target, mode="w", format=container_format) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = frames.shape[2]
        video.height = frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.time_base = 1 / fps
        video.codec_context.time_base = 1 / fps
        video.codec_context.options = {"crf": str(crf), "preset": preset}
        video.codec_context.thread_count = threads
        if gop_size is not None:
            video.codec_context.gop_size = gop_size

        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = _layout_for(audio.shape[0])
            audio_stream.bit_rate = audio_bitrate
            audio_stream.time_base = Fraction(1, sample_rate)
        audio_written = 0

        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            # The muxer rewrites the stream time base when the header is written, so
            # time frames in the codec's 1/fps base, not the stream's.
            frame.time_base = 1 / fps
            container.mux(video.encode(frame))
            if audio_stream is not None:
                # Interleave: feed audio up to the end of this frame so the muxer never buffers much.
                audio_until = audio.shape[1] if index == len(frames) - 1 else min(audio.shape[1], round((index + 1) / fps * sample_rate))
                audio_written = _encode_audio_until(container, audio_stream, audio, audio_written, audio_until, sample_rate)
        container.mux(video.encode(None))
        if audio_stream is not None:
            _encode_audio_until(container, audio_stream, audio, audio_written, audio.shape[1], sample_rate)
            container.mux(audio_stream.encode(None))


def _encode_audio_until(container, stream, audio: np.ndarray, start: int, stop: int, sample_rate: int) -> int:
    layout = stream.layout.name
    while stop - start >= _AUDIO_CHUNK or (stop == audio.shape[1] and start < stop):
        end = min(start + _AUDIO_CHUNK, stop)
        chunk = np.ascontiguousarray(audio[:, start:end])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
        start = end
    return start


def encode_video_bytes(
    frames: np.ndarray,
    fps: float | Fraction | str,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 0,
    gop_size: int | None = None,
    pad_odd: bool = False,
    audio_bitrate: int = 192_000,
    container_format: str = "mp4",
) -> bytes:
    """Encode frames (and optional audio) to an in-memory H.264/AAC mp4.

    Args:
        frames: uint8 RGB frames ``(T, H, W, 3)``; H and W must be even unless ``pad_odd``.
        fps: Frame rate; frame ``i`` is timed at ``i / fps``.
        audio: Optional float32 audio ``(C, N)`` in [-1, 1], muxed as AAC.
        sample_rate: Sample rate of ``audio`` (required with audio).
        crf: x264 constant rate factor (lower is better quality; 18 is visually lossless).
        preset: x264 speed preset.
        threads: Encoder threads (0 lets x264 decide; use 1 inside worker processes).
        gop_size: Keyframe interval in frames (None keeps the x264 default).
        pad_odd: Pad odd heights/widths by repeating the last row/column instead of failing.
        audio_bitrate: AAC bit rate in bits per second.
        container_format: FFmpeg muxer name (``mp4``, ``mov``, ``matroska``).

    Returns:
        The file content.
    """
    rate = as_fraction(fps)
    frames = _check_frames(frames, pad_odd)
    if audio is not None:
        if sample_rate is None or sample_rate <= 0:
            raise MediaError("video: sample_rate is required (and must be positive) when audio is given")
        audio = _check_wave(audio, "video audio track")
        audio = np.clip(audio, -1.0, 1.0)
    buffer = io.BytesIO()
    _mux_video(buffer, frames, rate, audio, sample_rate, crf, preset, threads, gop_size, audio_bitrate, container_format)
    return buffer.getvalue()


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: float | Fraction | str,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
    **options: Any,
) -> None:
    """Write an H.264 (yuv420p) mp4 with optional AAC audio, atomically.

    Args:
        path: Destination; the container follows the suffix (``.mp4``, ``.m4v``, ``.mov``, ``.mkv``).
        frames: uint8 RGB frames ``(T, H, W, 3)``.
        fps: Frame rate; frame ``i`` is timed at ``i / fps``.
        audio: Optional float32 audio ``(C, N)``.
        sample_rate: Sample rate of ``audio``.
        crf: x264 constant rate factor.
        preset: x264 speed preset.
        **options: Further keyword arguments of :func:`encode_video_bytes`
            (``threads``, ``gop_size``, ``pad_odd``, ``audio_bitrate``).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _VIDEO_CONTAINERS:
        raise MediaError(f"{path}: cannot infer the video container from suffix {suffix!r}; use one of {', '.join(_VIDEO_CONTAINERS)}")
    data = encode_video_bytes(frames, fps, audio, sample_rate, crf=crf, preset=preset, container_format=_VIDEO_CONTAINERS[suffix], **options)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def encode_audio_bytes(wave: np.ndarray, sample_rate: int, format: str = "FLAC", subtype: str | None = None) -> bytes:
    """Encode audio to FLAC or WAV bytes.

    FLAC and WAV default to 24-bit PCM so that quiet material (e.g. a -60 dB noise
    floor) keeps its shape instead of being quantised to a few 16-bit steps.

    Args:
        wave: float audio ``(C, N)`` (or ``(N,)`` for mono) in [-1, 1]; louder samples are clipped.
        sample_rate: Sample rate in Hz.
        format: ``"FLAC"`` or ``"WAV"``.
        subtype: libsndfile subtype; default ``PCM_24``.
    """
    format = format.upper()
    if format not in {"FLAC", "WAV"}:
        raise MediaError(f"audio: unsupported format {format!r}; use 'FLAC' or 'WAV'")
    wave = _clip_for_pcm(_check_wave(wave), f"{format} encode")
    buffer = io.BytesIO()
    sf.write(buffer, wave.T, int(sample_rate), format=format, subtype=subtype or "PCM_24")
    return buffer.getvalue()


def write_audio(path: str | os.PathLike[str], wave: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write audio atomically; the format (FLAC or WAV) follows the file suffix.

    Args:
        path: Destination ending in ``.flac`` or ``.wav``.
        wave: float audio ``(C, N)``.
        sample_rate: Sample rate in Hz.
        subtype: libsndfile subtype (default ``PCM_24``).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _AUDIO_FORMATS:
        raise MediaError(f"{path}: cannot infer the audio format from suffix {suffix!r}; use .flac or .wav")
    data = encode_audio_bytes(wave, sample_rate, _AUDIO_FORMATS[suffix], subtype)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def read_audio(source: str | os.PathLike[str] | bytes | BinaryIO) -> tuple[np.ndarray, int]:
    """Read a FLAC/WAV/OGG file with soundfile.

    Args:
        source: A path, the file content as bytes, or a binary file object.

    Returns:
        ``(wave, sample_rate)`` with ``wave`` float32 of shape ``(C, N)``.
    """
    name = source if isinstance(source, (str, os.PathLike)) else "<audio bytes>"
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        data, sample_rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise MediaError(f"{name}: cannot read audio ({error})") from error
    return np.ascontiguousarray(data.T), int(sample_rate)


def decode_audio_track(path: str | os.PathLike[str] | BinaryIO, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of a media container (mp4, mkv, webm, ...).

    Samples are returned from the first decoded sample of the stream, keeping the
    source channels. With ``sample_rate`` the result is resampled (band-limited
    sinc, torchaudio) when the source rate differs.

    Args:
        path: Media file path or binary file object.
        sample_rate: Target sample rate, or None to keep the source rate.

    Returns:
        ``(wave, sample_rate)`` with ``wave`` float32 ``(C, N)``.

    Raises:
        MediaError: The file cannot be opened or decoded, or it has no audio track.
    """
    name = str(path) if isinstance(path, (str, os.PathLike)) else "<media stream>"
    try:
        container = av.open(str(path) if isinstance(path, os.PathLike) else path, mode="r")
    except (av.FFmpegError, OSError) as error:
        raise MediaError(f"{name}: cannot open media file ({error})") from error
    with container:
        if not container.streams.audio:
            raise MediaError(f"{name}: the file has no audio track")
        stream = container.streams.audio[0]
        source_rate = stream.codec_context.sample_rate or stream.rate
        chunks: list[np.ndarray] = []
        resampler = None
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    # Decode to planar float with the source layout: (C, n) arrays.
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.sample_rate)
                    source_rate = frame.sample_rate
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray())
            if resampler is not None:
                for converted in resampler.resample(None):
                    chunks.append(converted.to_ndarray())
        except av.FFmpegError as error:
            if not chunks:
                raise MediaError(f"{name}: cannot decode the audio track ({error})") from error
            log.warning("%s: audio decoding stopped early (%s); keeping %d decoded chunks", name, error, len(chunks))
    if not chunks:
        raise MediaError(f"{name}: the audio track holds no decodable samples")
    wave = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if sample_rate is not None and int(sample_rate) != int(source_rate):
        wave = resample(wave, int(source_rate), int(sample_rate))
        source_rate = int(sample_rate)
    return wave, int(source_rate)


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of ``(C, N)`` audio with torchaudio."""
    import torch
    import torchaudio.functional

    if orig_rate == new_rate:
        return wave
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return torchaudio.functional.resample(tensor, orig_rate, new_rate).numpy()


def frame_times(num_frames: int, fps: float | Fraction | str) -> np.ndarray:
    """Display time in seconds of each frame written by :func:`write_video`."""
    rate = as_fraction(fps)
    return np.array([float(Fraction(i) / rate) for i in range(num_frames)])
