"""``foley prepare``: cut real videos into the shard format of docs/architecture.md §1.

Each clip becomes ``<key>.mp4`` (H.264, frames re-timed to a constant rate: frame ``i``
shows the source frame on screen at ``start + i / fps``), ``<key>.flac`` (the file's
audio, channels kept, resampled to ``sample_rate``, the same time span) and
``<key>.json`` (``events: []``). Files or clips that cannot be used are skipped and
listed with the reason in ``prepare_report.json`` next to the shards.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from foley.io.atomic import atomic_write_json
from foley.io.media import MediaError, as_fraction, decode_audio_track, encode_audio_bytes, encode_video_bytes
from foley.io.shards import ShardWriter
from foley.io.video import VideoError, VideoFile, resize_frames

__all__ = ["prepare", "SourceItem", "read_manifest", "find_videos", "VIDEO_EXTENSIONS", "REPORT_NAME"]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"})
MANIFEST_EXTENSIONS = frozenset({".csv", ".tsv", ".jsonl", ".json"})
REPORT_NAME = "prepare_report.json"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SourceItem:
    """One video to cut, optionally restricted to ``[start, end)`` seconds.

    Args:
        path: Video file.
        caption: Text stored as the clip caption.
        start: First second to use (``None``: the beginning).
        end: Second to stop at (``None``: the end of the file).
    """

    path: Path
    caption: str = ""
    start: float | None = None
    end: float | None = None


def _optional_seconds(value: Any, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: column {column!r} must be a number of seconds, got {value!r}") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{where}: column {column!r} must be a non-negative number of seconds, got {value!r}")
    return seconds


def read_manifest(
    manifest: Path,
    path_column: str = "path",
    caption_column: str = "caption",
    start_column: str = "start",
    end_column: str = "end",
) -> list[SourceItem]:
    """Read a CSV/TSV/JSONL/JSON manifest; relative paths are relative to the manifest's folder.

    Raises:
        ValueError: The manifest is malformed or lacks the path column.
    """
    suffix = manifest.suffix.lower()
    text = manifest.read_text(encoding="utf-8-sig")
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{manifest}:{number}: invalid JSON line ({exc})") from exc
    elif suffix == ".json":
        rows = json.loads(text)
        if isinstance(rows, dict):
            rows = next((v for v in rows.values() if isinstance(v, list)), None)
        if not isinstance(rows, list):
            raise ValueError(f"{manifest}: expected a JSON list of objects (or an object holding one)")
    else:
        raise ValueError(f"{manifest}: unknown manifest type {suffix!r}; use .csv, .tsv, .jsonl or .json")
    items = []
    for number, row in enumerate(rows, 1):
        where = f"{manifest} row {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
        if not row.get(path_column):
            raise ValueError(f"{where}: no value in the path column {path_column!r} (columns: {sorted(row)}); set path_column")
        path = Path(str(row[path_column])).expanduser()
        if not path.is_absolute():
            path = manifest.parent / path
        items.append(
            SourceItem(
                path=path,
                caption=str(row.get(caption_column) or ""),
                start=_optional_seconds(row.get(start_column), where, start_column),
                end=_optional_seconds(row.get(end_column), where, end_column),
            )
        )
    return items


def find_videos(folder: Path) -> list[Path]:
    """Video files under ``folder`` (recursive, sorted), chosen by extension."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and ".tmp" not in p.name)


def _collect(inputs: list[str], columns: dict[str, str]) -> list[SourceItem]:
    items: list[SourceItem] = []
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = find_videos(path)
            if not found:
                log.warning("%s: folder holds no video files (%s)", path, ", ".join(sorted(VIDEO_EXTENSIONS)))
            items.extend(SourceItem(p) for p in found)
        elif path.suffix.lower() in MANIFEST_EXTENSIONS:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: manifest not found")
            items.extend(read_manifest(path, **columns))
        else:
            # A single video; missing or broken files are reported as skipped later.
            items.append(SourceItem(path))
    unique: dict[tuple[Any, ...], SourceItem] = {}
    for item in items:  # the same file named twice (folder + file) is cut once
        unique.setdefault((item.path.resolve(), item.start, item.end, item.caption), item)
    if len(unique) < len(items):
        log.info("prepare: %d duplicate input(s) ignored", len(items) - len(unique))
    return list(unique.values())


def _stream_starts(path: Path) -> tuple[Fraction | None, float, float]:
    """Exact video frame rate and the start times of the video and audio streams."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = None
        if video is not None:
            rate = video.average_rate or video.guessed_rate or video.base_rate
        def start_of(stream: Any) -> float:
            if stream is None or stream.start_time is None or stream.time_base is None:
                return 0.0
            return float(stream.start_time * stream.time_base)
        return (Fraction(rate) if rate else None), start_of(video), start_of(audio)


def _key_for(name: str, used: set[str]) -> str:
    base = _KEY_UNSAFE.sub("_", name).strip("_") or "clip"
    key, number = base, 1
    while key in used:
        number += 1
        key = f"{base}_{number}"
    used.add(key)
    return key


def _segments(start: float, end: float, clip_seconds: float | None) -> list[tuple[float, float]]:
    if clip_seconds is None:
        return [(start, end)]
    spans = []
    position = start
    while position < end - 1e-9:
        spans.append((position, min(position + clip_seconds, end)))
        position += clip_seconds
    return spans


@dataclass(frozen=True)
class _CutSettings:
    clip_seconds: float | None
    min_seconds: float
    sample_rate: int
    crf: int
    max_short_side: int | None
    encoder_threads: int


_Skip = dict[str, Any]
_Clip = tuple[str, dict[str, Any], dict[str, Any]]  # (key stem, sample members, report entry)


def _skip_entry(item: SourceItem, reason: str, span: tuple[float, float] | None = None) -> _Skip:
    entry: dict[str, Any] = {"file": str(item.path), "reason": reason}
    if span is not None:
        entry["start"], entry["end"] = round(span[0], 6), round(span[1], 6)
    return entry


def _scaled_size(height: int, width: int, max_short_side: int | None) -> tuple[int, int] | None:
    """Even output size with the short side at most ``max_short_side`` (None: keep)."""
    if max_short_side is None or min(height, width) <= max_short_side:
        return None
    scale = max_short_side / min(height, width)
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


def _cut_file(item: SourceItem, settings: _CutSettings) -> tuple[list[_Clip], list[_Skip]]:
    """Cut one source into encoded clips; every problem becomes a skip entry, never an exception."""
    sample_rate = settings.sample_rate
    try:
        video = VideoFile(item.path)
        rate, video_start, audio_start = _stream_starts(item.path)
        wave, _ = decode_audio_track(item.path, sample_rate=sample_rate)
    except (VideoError, MediaError, OSError) as exc:
        return [], [_skip_entry(item, str(exc))]
    except Exception as exc:  # noqa: BLE001 - any decoder failure skips this file only
        return [], [_skip_entry(item, f"{item.path}: cannot read ({type(exc).__name__}: {exc})")]
    # Put audio on the video clock: time 0 is the first video frame.
    lead = round((audio_start - video_start) * sample_rate)
    if lead > 0:
        wave = np.pad(wave, ((0, 0), (lead, 0)))
    elif lead < 0:
        wave = wave[:, -lead:]
    fps = as_fraction(rate) if rate else as_fraction(video.fps)
    available = min(video.duration, wave.shape[1] / sample_rate)
    start = item.start or 0.0
    end = available if item.end is None else min(item.end, available)
    if end - start < settings.min_seconds:
        reason = (
            f"only {max(0.0, end - start):.3f} s usable (video {video.duration:.3f} s, audio "
            f"{wave.shape[1] / sample_rate:.3f} s), shorter than min_seconds={settings.min_seconds}"
        )
        return [], [_skip_entry(item, reason, (start, end))]
    clips: list[_Clip] = []
    skips: list[_Skip] = []
    for span in _segments(start, end, settings.clip_seconds):
        # Start each clip where a source frame starts, so re-timed frame k is exactly
        # source frame j0 + k for constant-rate sources.
        span = (float(video.starts[video.indices_at(np.array([span[0]]))[0]]), span[1])
        duration = span[1] - span[0]
        if duration < settings.min_seconds:
            skips.append(_skip_entry(item, f"clip of {duration:.3f} s is shorter than min_seconds={settings.min_seconds}", span))
            continue
        try:
            # Enough frames that the video covers the whole audio span (decord stamps are float32).
            count = max(1, math.ceil(duration * float(fps) - 1e-3))
            frames = video.frames_at(span[0] + np.arange(count) / float(fps))
            size = _scaled_size(frames.shape[1], frames.shape[2], settings.max_short_side)
            if size is not None:
                frames = resize_frames(frames, size, "resize").permute(0, 2, 3, 1).numpy()
            first = round(span[0] * sample_rate)
            audio = wave[:, first : first + round(duration * sample_rate)]
            height, width = frames.shape[1:3]
            meta = {
                "caption": item.caption,
                "category": "",
                "duration": audio.shape[1] / sample_rate,
                "fps": float(fps),
                "sample_rate": sample_rate,
                "width": int(width + width % 2),
                "height": int(height + height % 2),
                "events": [],
                "source": {"generator": "foley.prepare", "path": str(item.path), "start": span[0], "end": span[1], "channels": int(wave.shape[0])},
            }
            members = {
                "mp4": encode_video_bytes(frames, fps, crf=settings.crf, pad_odd=True, threads=settings.encoder_threads),
                "flac": encode_audio_bytes(audio, sample_rate),
                "json": meta,
            }
        except (VideoError, MediaError) as exc:
            skips.append(_skip_entry(item, str(exc), span))
            continue
        whole = settings.clip_seconds is None and item.start is None
        stem = item.path.stem if whole else f"{item.path.stem}-{round(span[0] * 1000):08d}"
        clips.append((stem, members, {"file": str(item.path), "start": span[0], "end": span[1]}))
    return clips, skips


_WORKER_SETTINGS: _CutSettings | None = None


def _init_worker(settings: _CutSettings) -> None:
    global _WORKER_SETTINGS
    _WORKER_SETTINGS = settings


def _cut_in_worker(item: SourceItem) -> tuple[list[_Clip], list[_Skip]]:
    assert _WORKER_SETTINGS is not None
    return _cut_file(item, _WORKER_SETTINGS)


def _cut_all(items: list[SourceItem], settings: _CutSettings, workers: int) -> Iterator[tuple[list[_Clip], list[_Skip]]]:
    """Results per source, in input order."""
    if workers <= 1:
        for item in items:
            yield _cut_file(item, settings)
        return
    # spawn: decoders and torch thread pools do not survive fork reliably.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
        yield from pool.imap(_cut_in_worker, items)


def prepare(
    inputs: list[str] | str,
    out: Path,
    clip_seconds: float | None = None,
    min_seconds: float = 1.0,
    sample_rate: int = 44100,
    shard_size: int = 100,
    overwrite: bool = False,
    path_column: str = "path",
    caption_column: str = "caption",
    start_column: str = "start",
    end_column: str = "end",
    max_short_side: int | None = None,
    crf: int = 18,
    workers: int = 1,
) -> int:
    """Cut videos into clips and write them as shards.

    Args:
        inputs: One or a list of: folders of videos (searched recursively), video files,
            manifests (``.csv``/``.tsv``/``.jsonl``/``.json``) with a path column and
            optional caption, start and end columns (seconds).
        out: Output folder for ``shard-*.tar``, ``index.json`` and ``prepare_report.json``.
        clip_seconds: Cut each video (or manifest span) into consecutive clips of this
            length; ``None`` keeps each one whole.
        min_seconds: Clips shorter than this (including the tail of a cut) are skipped.
        sample_rate: Audio rate of the shards.
        shard_size: Clips per shard.
        overwrite: Replace shards from an earlier run in ``out``.
        path_column: Manifest column holding the video path.
        caption_column: Manifest column holding the caption.
        start_column: Manifest column holding the start time in seconds.
        end_column: Manifest column holding the end time in seconds.
        max_short_side: Downscale frames whose short side is larger (aspect kept);
            ``None`` keeps the source size. Training resizes to 224 px anyway, and
            smaller clips decode much faster.
        crf: x264 quality of the re-encoded clips (lower is better).
        workers: Processes cutting and encoding files in parallel.

    Returns:
        Number of clips written.

    Raises:
        SystemExit: With status 1 when no clip could be written.
    """
    if clip_seconds is not None and clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    if min_seconds < 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
    if max_short_side is not None and max_short_side < 2:
        raise ValueError(f"max_short_side must be >= 2, got {max_short_side}")
    out = Path(out)
    columns = {"path_column": path_column, "caption_column": caption_column, "start_column": start_column, "end_column": end_column}
    items = _collect([str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs)], columns)
    settings = _CutSettings(clip_seconds, min_seconds, sample_rate, crf, max_short_side, encoder_threads=1 if workers > 1 else 0)
    skipped: list[_Skip] = []
    written: list[dict[str, Any]] = []
    used_keys: set[str] = set()

    with ShardWriter(out, shard_size=shard_size, overwrite=overwrite) as writer:
        for clips, skips in _cut_all(items, settings, workers):
            for entry in skips:
                span = f" [{entry['start']:.3f}, {entry['end']:.3f}) s" if "start" in entry else ""
                log.warning("skipping %s%s: %s", entry["file"], span, entry["reason"])
            skipped.extend(skips)
            for stem, members, entry in clips:
                key = _key_for(stem, used_keys)
                members["json"]["key"] = key
                writer.write(key, members)
                written.append({"key": key, **entry})
    shards = writer.shards

    report = {
        "written": len(written),
        "skipped": skipped,
        "shards": shards,
        "clips": written,
        "settings": {"clip_seconds": clip_seconds, "min_seconds": min_seconds, "sample_rate": sample_rate, "shard_size": shard_size, "max_short_side": max_short_side},
    }
    atomic_write_json(out / REPORT_NAME, report)
    log.info("prepare: wrote %d clip(s) in %d shard(s) to %s; skipped %d (see %s)", len(written), len(shards), out, len(skipped), out / REPORT_NAME)
    if not written:
        log.error("prepare: no clip was written from %d input(s); reasons in %s", len(items), out / REPORT_NAME)
        raise SystemExit(1)
    return len(written)
