"""Turn one raw webdataset sample (bytes per member) into one training example.

The timing rules are those of docs/architecture.md §2: a crop starting at ``s`` with
duration ``D`` holds audio samples ``[round(s*sr), round(s*sr) + round(D*sr))`` and, for a
stream at rate ``f``, ``floor(D*f + 1e-6)`` frames where frame ``i`` is the source frame on
screen at ``s + i/f``.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import random
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from foley.io.media import MediaError, read_audio, resample
from foley.io.video import CropMode, VideoError, VideoFile, resize_frames, stream_length, stream_times

__all__ = [
    "SampleError", "StreamSpec", "CropPolicy", "decode_sample", "shift_events", "is_data_error", "AUDIO_MEMBERS",
    "VIDEO_MEMBERS",
]

log = logging.getLogger(__name__)

AUDIO_MEMBERS = ("flac", "wav", "ogg", "mp3")
VIDEO_MEMBERS = ("mp4", "mkv", "webm", "mov", "avi")
TENSOR_SUFFIX = ".pth"


class SampleError(ValueError):
    """A sample in a shard cannot be turned into an example (the message says why)."""


@functools.cache
def _data_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "these bytes are bad", as opposed to a bug in foley."""
    types: list[type[BaseException]] = [
        SampleError, MediaError, VideoError, OSError, EOFError, tarfile.TarError, json.JSONDecodeError,
        UnicodeDecodeError, zlib.error,
    ]
    # The decoders' own error bases (imported lazily: each is optional for some installs).
    for module, name in (("av.error", "FFmpegError"), ("decord._ffi.base", "DECORDError"), ("soundfile", "SoundFileError")):
        try:
            types.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from undecodable data (skip the sample) rather than from a bug (raise it).

    Data errors are :class:`SampleError`, foley's media/video errors, decoder errors
    (PyAV, decord, soundfile), I/O errors (``OSError``, ``EOFError``) and tar/json/zlib
    format errors. Everything else (``TypeError``, ``AttributeError``, ``KeyError``,
    ``IndexError``, a plain ``ValueError`` ...) is a programming error and must not be
    hidden as a skipped sample.
    """
    return isinstance(exc, _data_error_types())


@dataclass(frozen=True)
class StreamSpec:
    """One frame stream: its rate, output size and how the frame is fitted to that size.

    Args:
        fps: Stream frame rate.
        size: Output side (square) in pixels.
        crop: ``"center"`` (short side to ``size``, centre crop) or ``"resize"`` (stretch).
    """

    fps: float
    size: int
    crop: CropMode = "center"


@dataclass(frozen=True)
class CropPolicy:
    """Which time span of a clip becomes the example.

    Args:
        clip_seconds: Longest crop; shorter sources are taken whole.
        min_seconds: With ``random_crop``, durations are drawn uniformly from
            ``[min_seconds, clip_seconds]``; ``None`` always uses ``clip_seconds``.
        random_crop: Draw the start (and duration) at random; otherwise start at 0.
    """

    clip_seconds: float
    min_seconds: float | None = None
    random_crop: bool = False

    def choose(self, total_seconds: float, rng: random.Random | None, sample_rate: int) -> tuple[float, float]:
        """Return ``(start, duration)`` in seconds, start on the audio sample grid."""
        duration = self.clip_seconds
        if self.random_crop and self.min_seconds is not None and rng is not None:
            duration = rng.uniform(min(self.min_seconds, self.clip_seconds), self.clip_seconds)
        duration = min(duration, total_seconds)
        start = 0.0
        if self.random_crop and rng is not None and total_seconds > duration:
            start = rng.uniform(0.0, total_seconds - duration)
        start_sample = round(start * sample_rate)
        # Keep the crop inside the source after snapping the start to a sample.
        max_start = int(np.floor((total_seconds - duration) * sample_rate + 1e-6))
        start_sample = max(0, min(start_sample, max_start))
        return start_sample / sample_rate, duration


def shift_events(meta: dict[str, Any], start: float, duration: float) -> dict[str, Any]:
    """Copy of the shard json with event times relative to the crop start.

    Events that end before the crop or start after it are dropped; an event that
    overlaps a crop edge keeps its true (possibly negative, or > duration) times so that
    a consumer can tell a real onset inside the crop from a sound already playing.
    """
    out = copy.deepcopy(meta)
    events = []
    for event in meta.get("events", []) or []:
        onset = float(event.get("onset", 0.0)) - start
        offset = float(event.get("offset", event.get("onset", 0.0))) - start
        if offset < 0.0 or onset >= duration:
            continue
        shifted = dict(event, onset=onset, offset=offset)
        if "x" in event and event["x"] is not None:
            shifted["x"] = [[float(t) - start, float(x)] for t, x in event["x"]]
        events.append(shifted)
    out["events"] = events
    out["source_duration"] = meta.get("duration")
    out["crop_start"] = start
    out["duration"] = duration
    return out


def _first_member(sample: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        if sample.get(name) is not None:
            return name
    return None


def _to_stereo(wave: np.ndarray, key: str) -> np.ndarray:
    channels = wave.shape[0]
    if channels == 1:
        return np.repeat(wave, 2, axis=0)
    if channels == 2:
        return wave
    if channels > 2:
        # Surround layouts put front left/right first (FFmpeg and WAVE channel order).
        log.debug("%s: %d audio channels, keeping the first two as left/right", key, channels)
        return wave[:2]
    raise SampleError(f"{key}: audio has no channels")


def _decode_tensor(data: bytes, key: str, member: str) -> torch.Tensor:
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise SampleError(f"{key}: cannot load {member} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(value, torch.Tensor):
        raise SampleError(f"{key}: {member} holds {type(value).__name__}, expected a tensor")
    return value


def decode_sample(
    sample: dict[str, Any],
    sample_rate: int,
    crop: CropPolicy,
    clip_stream: StreamSpec | None,
    sync_stream: StreamSpec | None,
    rng: random.Random | None = None,
    decode_threads: int = 1,
) -> dict[str, Any]:
    """Decode one webdataset sample into an un-batched example.

    Args:
        sample: ``{"__key__": str, "json": bytes, "flac": bytes, "mp4": bytes, ...}``.
        sample_rate: Output audio rate; other rates are resampled.
        crop: Crop policy.
        clip_stream: CLIP frame stream, or ``None`` to skip video entirely
            (with ``sync_stream`` also ``None``).
        sync_stream: Sync frame stream, or ``None``.
        rng: Random source for random crops.
        decode_threads: decord threads per video.

    Returns:
        Example dict with ``audio (2, n)``, ``clip_frames (Tc, 3, S, S)``,
        ``sync_frames (Ts, 3, S, S)`` (when video is loaded), ``caption``,
        ``seconds_start``, ``seconds_total``, ``key``, ``meta`` and any ``*.pth``
        members as tensors under their name without the suffix.

    Raises:
        SampleError: The sample is incomplete or undecodable.
    """
    key = str(sample.get("__key__", "<unknown>"))
    url = sample.get("__url__")
    where = f"{key} (in {url})" if url else key

    meta: dict[str, Any] = {}
    if sample.get("json") is not None:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise SampleError(f"{where}: invalid json metadata ({exc})") from exc
        if not isinstance(meta, dict):
            raise SampleError(f"{where}: json metadata is {type(meta).__name__}, expected an object")

    audio_member = _first_member(sample, AUDIO_MEMBERS)
    if audio_member is None:
        raise SampleError(f"{where}: no audio member (expected one of {', '.join(AUDIO_MEMBERS)})")
    try:
        wave, source_rate = read_audio(sample[audio_member])
    except Exception as exc:
        if not is_data_error(exc):
            raise
        raise SampleError(f"{where}: cannot decode {audio_member} ({exc})") from exc
    if wave.shape[1] == 0:
        raise SampleError(f"{where}: {audio_member} holds no samples")
    if not np.isfinite(wave).all():
        raise SampleError(f"{where}: {audio_member} contains NaN or Inf")
    if source_rate != sample_rate:
        wave = resample(wave, source_rate, sample_rate)
    total_seconds = wave.shape[1] / sample_rate

    load_video = clip_stream is not None or sync_stream is not None
    video: VideoFile | None = None
    if load_video:
        video_member = _first_member(sample, VIDEO_MEMBERS)
        if video_member is None:
            raise SampleError(f"{where}: no video member (expected one of {', '.join(VIDEO_MEMBERS)})")
        try:
            video = VideoFile(sample[video_member], name=f"{where}.{video_member}", num_threads=decode_threads)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            raise SampleError(str(exc)) from exc
        # Audio and frames must cover the same span, so the shorter track bounds the clip.
        total_seconds = min(total_seconds, video.duration)

    start, duration = crop.choose(total_seconds, rng, sample_rate)
    if duration <= 0:
        raise SampleError(f"{where}: clip has zero duration")
    first = round(start * sample_rate)
    count = min(round(duration * sample_rate), wave.shape[1] - first)
    audio = torch.from_numpy(np.ascontiguousarray(_to_stereo(wave, where)[:, first : first + count], dtype=np.float32))

    try:
        shifted = shift_events(meta, start, duration)
    except (TypeError, ValueError, KeyError) as exc:
        # Malformed event fields in the shard's json are bad data, not a bug.
        raise SampleError(f"{where}: malformed events in json metadata ({type(exc).__name__}: {exc})") from exc
    example: dict[str, Any] = {
        "audio": audio,
        "caption": str(meta.get("caption", "") or ""),
        "seconds_start": float(start),
        "seconds_total": float(duration),
        "key": key,
        "meta": shifted,
    }

    if video is not None:
        streams = [(name, spec) for name, spec in (("clip_frames", clip_stream), ("sync_frames", sync_stream)) if spec is not None]
        wanted = [video.indices_at(stream_times(start, duration, spec.fps)) for _, spec in streams]
        # Decode each needed source frame once, and resize it once per output geometry:
        # with equal sizes the CLIP stream's frames are a subset of the sync stream's.
        unique, inverse = np.unique(np.concatenate(wanted), return_inverse=True)
        try:
            decoded = video.frames(unique)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            raise SampleError(str(exc)) from exc
        positions = np.split(inverse.reshape(-1), np.cumsum([len(w) for w in wanted])[:-1])
        for geometry in {(spec.size, spec.crop) for _, spec in streams}:
            members = [i for i, (_, spec) in enumerate(streams) if (spec.size, spec.crop) == geometry]
            needed, local = np.unique(np.concatenate([positions[i] for i in members]), return_inverse=True)
            frames = resize_frames(decoded[needed], *geometry)
            local = np.split(local.reshape(-1), np.cumsum([len(positions[i]) for i in members])[:-1])
            for i, stream_positions in zip(members, local):
                name, spec = streams[i]
                example[name] = frames[torch.from_numpy(stream_positions)]
                assert example[name].shape[0] == stream_length(duration, spec.fps)

    for member, data in sample.items():
        if member.endswith(TENSOR_SUFFIX) and data is not None:
            name = member[: -len(TENSOR_SUFFIX)]
            if name in example or name in ("clip_frames", "sync_frames"):
                raise SampleError(f"{where}: member {member} would overwrite the batch field {name!r}; rename it")
            example[name] = _decode_tensor(data, where, member)
    return example
