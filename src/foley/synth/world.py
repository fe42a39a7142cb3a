"""The synthetic Foley world: procedurally generated clips whose sound is caused by what is seen.

``render_clip`` makes one clip in memory (frames, stereo audio, metadata with exact
event ground truth); ``synth`` renders many, encodes them (H.264 mp4 + 24-bit FLAC +
json) and writes webdataset shards. Every clip depends only on ``(seed, index)``, so
the output is identical for any number of worker processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foley.io.media import encode_audio_bytes, encode_video_bytes
from foley.io.shards import ShardWriter
from foley.synth import sound
from foley.synth.draw import Canvas, hsv_to_rgb
from foley.synth.bell import Bell
from foley.synth.objects import FLOOR_Y, FULL_WIDTH, OBJECT_TYPES, SceneObject, Timeline

__all__ = ["CATEGORIES", "EXTRA_CATEGORIES", "ALL_CATEGORIES", "SynthClip", "render_clip", "synth", "clip_key",
           "category_pool"]

log = logging.getLogger(__name__)

# The default pool: what `foley synth` draws from unless told otherwise.
CATEGORIES: tuple[str, ...] = ("bouncing_ball", "drum", "lamp", "vehicle", "rain", "silence")
# Categories only drawn when asked for (--categories): models of the default world have never
# seen them, which makes them held-out categories for fine-tuning (docs/finetuning.md).
EXTRA_CATEGORIES: tuple[str, ...] = ("bell",)
ALL_CATEGORIES: tuple[str, ...] = CATEGORIES + EXTRA_CATEGORIES
_TYPES: dict[str, type[SceneObject]] = {**OBJECT_TYPES, Bell.category: Bell}
PEAK_LIMIT = 0.89  # clips louder than this are scaled down as a whole (relative levels kept)
_DRAW_ORDER_FULL = {"rain": 0, "vehicle": 2}


@dataclass
class SynthClip:
    """One rendered clip.

    Args:
        frames: uint8 RGB video ``(T, H, W, 3)``; frame ``i`` is shown at ``i / fps``.
        audio: float32 stereo audio ``(2, N)`` in [-1, 1].
        meta: The shard json (see docs/architecture.md section 1).
    """

    frames: np.ndarray
    audio: np.ndarray
    meta: dict[str, Any]


def clip_key(index: int) -> str:
    """Sample key of clip ``index``."""
    return f"synth-{index:06d}"


def _check_args(seconds: float, fps: float, size: int, sample_rate: int) -> None:
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if seconds * fps < 1:
        raise ValueError(f"a clip of {seconds} s at {fps} fps has no frame; use longer clips or a higher fps")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 16 (H.264 needs even sizes), got {size}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")


def _check_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    if categories is None:
        return CATEGORIES
    if isinstance(categories, str):
        categories = [categories]
    unknown = sorted(set(categories) - set(ALL_CATEGORIES))
    if unknown or not categories:
        raise ValueError(f"unknown synthetic categories {unknown or categories}; choose from {', '.join(ALL_CATEGORIES)}")
    return tuple(dict.fromkeys(categories))


def category_pool(categories: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> tuple[str, ...]:
    """The categories to draw from: ``categories`` (default :data:`CATEGORIES`) without ``exclude``.

    Raises:
        ValueError: an unknown name, or nothing left to draw from.
    """
    pool = _check_categories(categories)
    if exclude:
        dropped = set(_check_categories(exclude))
        pool = tuple(c for c in pool if c not in dropped)
        if not pool:
            raise ValueError(f"excluding {sorted(dropped)} leaves no category to draw from")
    return pool


def _pick_objects(rng: np.random.Generator, index: int, category: str | None, pool: tuple[str, ...], multi_object_prob: float) -> list[str]:
    # Round-robin over the pool keeps categories balanced in any prefix of the dataset.
    primary = category if category is not None else pool[index % len(pool)]
    kinds = [primary]
    partners = [c for c in pool if c not in (primary, "silence")]
    if primary != "silence" and partners and rng.random() < multi_object_prob:
        kinds.append(partners[int(rng.integers(len(partners)))])
    return kinds


def _regions(kinds: list[str], rng: np.random.Generator) -> list[tuple[float, float]]:
    standing = [k for k in kinds if k not in FULL_WIDTH]
    halves = [(0.04, 0.5), (0.5, 0.96)]
    if rng.random() < 0.5:
        halves.reverse()
    regions = []
    for kind in kinds:
        if kind in FULL_WIDTH:
            regions.append((0.0, 1.0))
        elif len(standing) > 1:
            regions.append(halves[standing.index(kind)])
        else:
            regions.append((0.08, 0.92))
    return regions


def _background(canvas: Canvas, rng: np.random.Generator) -> None:
    hue = float(rng.uniform(0, 1))
    wall_top = hsv_to_rgb(hue, 0.35, float(rng.uniform(0.06, 0.12)))
    wall_bottom = hsv_to_rgb(hue, 0.35, float(rng.uniform(0.14, 0.2)))
    floor = hsv_to_rgb((hue + 0.5) % 1.0, 0.2, float(rng.uniform(0.25, 0.32)))
    canvas.vertical_gradient(wall_top, wall_bottom, 0.0, FLOOR_Y)
    canvas.vertical_gradient(floor, 0.6 * floor, FLOOR_Y, 1.0)


def _noise_floor(rng: np.random.Generator, n: int, sample_rate: int, level_db: float) -> np.ndarray:
    noise = sound.lowpass(rng.standard_normal((2, n)), 3000.0, sample_rate)
    rms = np.sqrt(np.mean(noise**2, axis=1, keepdims=True)) + 1e-12
    return noise / rms * 10.0 ** (level_db / 20.0)


def render_clip(
    index: int,
    seed: int,
    seconds: float = 8.0,
    fps: float = 25.0,
    size: int = 128,
    sample_rate: int = 44100,
    category: str | None = None,
    categories: Sequence[str] | None = None,
    multi_object_prob: float | None = None,
    noise_floor_db: float | None = None,
) -> SynthClip:
    """Render one clip of the synthetic world (no encoding).

    Args:
        index: Clip index; with ``seed`` it fully determines the clip.
        seed: Dataset seed.
        seconds: Duration.
        fps: Frame rate.
        size: Frame width and height in pixels (even).
        sample_rate: Audio sample rate.
        category: Force a single object of this category (no second object unless
            ``multi_object_prob`` says so).
        categories: Pool of categories to draw from when ``category`` is None
            (default: all of :data:`CATEGORIES`).
        multi_object_prob: Probability of a second sounding object (default 0.3, or 0
            when ``category`` is given).
        noise_floor_db: RMS level of a faint stereo background noise in dBFS (None: none).
    """
    _check_args(seconds, fps, size, sample_rate)
    pool = _check_categories(categories)
    if category is not None:
        _check_categories([category])
    if multi_object_prob is None:
        multi_object_prob = 0.0 if category is not None else 0.3
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")

    timeline = Timeline(float(seconds), float(fps), int(sample_rate))
    rng = np.random.default_rng([seed, index])
    kinds = _pick_objects(rng, index, category, pool, multi_object_prob)
    regions = _regions(kinds, rng)
    objects: list[SceneObject] = [
        _TYPES[kind](object_id, np.random.default_rng([seed, index, 1 + object_id]), timeline, region)
        for object_id, (kind, region) in enumerate(zip(kinds, regions))
    ]

    canvas = Canvas(timeline.num_frames, size)
    _background(canvas, rng)
    for obj in sorted(objects, key=lambda o: (o.layer, o.object_id)):
        obj.draw(canvas)

    audio = np.zeros((2, timeline.num_samples))
    for obj in objects:
        obj.add_sound(audio)
    if noise_floor_db is not None:
        audio += _noise_floor(np.random.default_rng([seed, index, 0]), timeline.num_samples, sample_rate, noise_floor_db)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    gain = 1.0 if peak <= PEAK_LIMIT else PEAK_LIMIT / peak
    audio *= gain

    events = sorted((event for obj in objects for event in obj.events()), key=lambda e: (e["onset"], e["object_id"]))
    phrases = [obj.phrase() for obj in objects]
    meta: dict[str, Any] = {
        "key": clip_key(index),
        "caption": " while ".join(phrases),
        "category": kinds[0],
        "duration": float(seconds),
        "fps": float(fps),
        "sample_rate": int(sample_rate),
        "width": size,
        "height": size,
        "events": events,
        "source": {"generator": "foley.synth", "seed": int(seed), "index": int(index), "gain": round(gain, 6)},
        "objects": [obj.describe() for obj in objects],
    }
    return SynthClip(frames=canvas.to_uint8(), audio=audio.astype(np.float32), meta=meta)


@dataclass(frozen=True)
class _Job:
    seed: int
    seconds: float
    fps: float
    size: int
    sample_rate: int
    categories: tuple[str, ...]


def _encode_clip(job: _Job, index: int) -> tuple[str, dict[str, Any]]:
    clip = render_clip(index, job.seed, job.seconds, job.fps, job.size, job.sample_rate, categories=job.categories)
    # One x264 thread: parallelism comes from worker processes, and a fixed thread count
    # keeps the encoded bytes identical whatever the number of workers.
    video = encode_video_bytes(clip.frames, job.fps, crf=18, preset="veryfast", threads=1)
    audio = encode_audio_bytes(clip.audio, job.sample_rate, "FLAC")
    return clip.meta["key"], {"mp4": video, "flac": audio, "json": clip.meta}


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _encode_in_worker(index: int) -> tuple[str, dict[str, Any]]:
    assert _WORKER_JOB is not None
    return _encode_clip(_WORKER_JOB, index)


def iter_encoded(job: _Job, clips: int, workers: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Encoded samples in index order, rendered in ``workers`` processes."""
    if workers <= 1:
        for index in range(clips):
            yield _encode_clip(job, index)
        return
    # spawn, not fork: the caller may hold OpenMP/torch threads that fork would copy in a locked state.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.imap(_encode_in_worker, range(clips), chunksize=2)


def synth(
    out: Path,
    clips: int = 100,
    seconds: float = 8.0,
    seed: int = 0,
    fps: float = 25.0,
    size: int = 128,
    shard_size: int = 100,
    sample_rate: int = 44100,
    categories: list[str] | None = None,
    exclude_categories: list[str] | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Generate a synthetic audio-visual Foley dataset as webdataset shards.

    Each sample holds ``<key>.mp4`` (H.264), ``<key>.flac`` (24-bit stereo) and
    ``<key>.json`` (caption, category and exact sound events). The output depends only
    on the arguments other than ``workers``.

    Args:
        out: Output folder (must be empty or missing unless ``overwrite``).
        clips: Number of clips.
        seconds: Duration of each clip.
        seed: Dataset seed.
        fps: Video frame rate.
        size: Frame width and height in pixels (even).
        shard_size: Clips per shard.
        sample_rate: Audio sample rate.
        categories: Categories to draw from (default: bouncing_ball, drum, lamp, vehicle, rain,
            silence; ``bell`` only when named here), e.g. ``--categories '[bell]'``.
        exclude_categories: Categories to leave out of that pool, e.g. ``--exclude_categories '[rain]'``.
        workers: Processes rendering and encoding clips in parallel.
        overwrite: Replace shards of an earlier run in ``out``.

    Returns:
        The output folder.
    """
    out = Path(out)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_args(seconds, fps, size, sample_rate)
    pool = category_pool(categories, exclude_categories)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose an empty or new folder, or pass --overwrite true")
    job = _Job(int(seed), float(seconds), float(fps), int(size), int(sample_rate), pool)
    log.info("synthesising %d clips of %.2f s (%d px, %g fps; %s) into %s with %d worker(s)", clips, seconds, size, fps,
             ", ".join(pool), out, workers)
    started = time.perf_counter()
    report_every = max(1, clips // 20)
    with ShardWriter(out, shard_size=shard_size, prefix="shard", overwrite=overwrite) as writer:
        for done, (key, sample) in enumerate(iter_encoded(job, clips, min(workers, clips)), start=1):
            writer.write(key, sample)
            if done % report_every == 0 or done == clips:
                elapsed = time.perf_counter() - started
                log.info("%d/%d clips (%.1f clips/s)", done, clips, done / max(elapsed, 1e-9))
    return out
