"""Benchmark sets read from a manifest: Kling-Audio-Eval, VGGSound test, or any local list.

A benchmark clip is one video file (with its audio track, or a separate audio file). The
manifest lists the clips, one per row, as CSV (with a header), JSON (a list of objects, or
an object with a ``clips`` list) or JSONL. Which column holds what is configurable with
:class:`ManifestColumns`; the defaults expect::

    id,video,caption,audio_caption,category
    0001,videos/0001.mp4,a dog barks at a mailman,dog barking,animals

Relative paths are resolved against ``root`` (default: the manifest's folder). Every clip is
evaluated from its start for ``clip_seconds`` seconds (av-benchmark evaluates 8 s) and
batched exactly like training data (docs/architecture.md §2), with ``meta`` holding
``key``, ``caption``, ``audio_caption``, ``category`` and ``events: []``.

**Kling-Audio-Eval** (``klingfoley/Kling-Audio-Eval``): its file layout is not documented
here. Write a manifest whose ``video`` column holds each clip's mp4, ``category`` the
sound-scene label (one of the nine scenes), ``caption`` the caption given to the model
(the video caption or the audio caption: map whichever you benchmark with) and, if you
like, ``audio_caption`` the other one; then map those names with ``columns``.

**VGGSound test**: :class:`VGGSoundTestDataModule` reads the official ``vggsound.csv``
(no header: ``youtube_id, start_seconds, label, split``), keeps ``split == "test"`` and
finds each clip as ``video_template.format(youtube_id=..., start=...)`` under ``root``;
the label becomes the category and (optionally) the caption.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from foley.data_modules.decoding import CropPolicy, SampleError, StreamSpec, decode_sample
from foley.data_modules.foley_datamodule import collate_examples
from foley.io.media import decode_audio_track, encode_audio_bytes

__all__ = [
    "ManifestColumns",
    "EvalClip",
    "ManifestError",
    "read_manifest",
    "read_vggsound_csv",
    "ManifestEvalSet",
    "ManifestEvalDataModule",
    "KlingAudioEvalDataModule",
    "VGGSoundTestDataModule",
]

logger = logging.getLogger(__name__)


class ManifestError(ValueError):
    """The manifest cannot be read or a row is unusable (the message names file and row)."""


@dataclass
class ManifestColumns:
    """Names of the manifest columns (``None``: the manifest has no such column).

    Args:
        key: unique clip id (cache file names and report rows use it); ``None``: the
            video file name without extension.
        video: video path (absolute, or relative to ``root``).
        audio: ground-truth audio path; ``None``: the video's own audio track.
        caption: text given to the model as ``batch["caption"]``.
        audio_caption: a second caption kept in ``meta["audio_caption"]``.
        category: sound-scene category for the per-category report.
    """

    key: str | None = "id"
    video: str = "video"
    audio: str | None = None
    caption: str | None = "caption"
    audio_caption: str | None = "audio_caption"
    category: str | None = "category"


@dataclass
class EvalClip:
    """One benchmark clip."""

    key: str
    video: Path
    audio: Path | None = None
    caption: str = ""
    audio_caption: str = ""
    category: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("clips"), list):
                data = data["clips"]
            if not isinstance(data, list):
                raise ManifestError(f"{path}: a JSON manifest must be a list of objects or {{'clips': [...]}}")
            return data
    except (OSError, ValueError, csv.Error) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from exc
    raise ManifestError(f"{path}: unknown manifest format {suffix!r}; use .csv (with a header), .json or .jsonl")


def read_manifest(path: str | os.PathLike[str], columns: ManifestColumns | None = None, root: str | os.PathLike[str] | None = None) -> list[EvalClip]:
    """Read a CSV/JSON/JSONL manifest into clips, checking columns and duplicate keys.

    Raises:
        ManifestError: unreadable file, missing column, empty field or duplicate key.
    """
    path = Path(path)
    columns = columns or ManifestColumns()
    base = Path(root) if root is not None else path.parent
    rows = _rows(path)
    if not rows:
        raise ManifestError(f"{path}: the manifest lists no clips")
    available = set(rows[0])
    required = [c for c in (columns.key, columns.video, columns.audio) if c is not None]
    missing = [c for c in required if c not in available]
    if missing:
        raise ManifestError(
            f"{path}: column(s) {missing} not found; the manifest has {sorted(available)}. "
            "Map the names with columns (e.g. --data.init_args.columns.video=video_path)"
        )
    clips: list[EvalClip] = []
    seen: dict[str, int] = {}
    mapped = {c for c in vars(columns).values() if c is not None}
    for number, row in enumerate(rows, start=1):
        video = str(row.get(columns.video) or "").strip()
        if not video:
            raise ManifestError(f"{path}, row {number}: empty {columns.video!r}")
        key = str(row.get(columns.key) or "").strip() if columns.key else Path(video).stem
        if not key:
            raise ManifestError(f"{path}, row {number}: empty {columns.key!r}")
        if key in seen:
            raise ManifestError(f"{path}, rows {seen[key]} and {number}: duplicate clip id {key!r}")
        seen[key] = number

        def text(column: str | None) -> str:
            return "" if column is None or row.get(column) is None else str(row[column])

        audio = text(columns.audio).strip()
        clips.append(
            EvalClip(
                key=key,
                video=base / video,
                audio=(base / audio) if audio else None,
                caption=text(columns.caption),
                audio_caption=text(columns.audio_caption),
                category=text(columns.category),
                extra={k: v for k, v in row.items() if k not in mapped},
            )
        )
    return clips


def read_vggsound_csv(
    path: str | os.PathLike[str], root: str | os.PathLike[str], video_template: str = "{youtube_id}_{start:06d}.mp4", split: str = "test"
) -> list[EvalClip]:
    """Clips of one split of the official ``vggsound.csv`` (``youtube_id,start,label,split``)."""
    path = Path(path)
    clips = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 4:
                raise ManifestError(f"{path}, row {number}: expected 4 fields (youtube_id,start_seconds,label,split), got {len(row)}")
            youtube_id, start, label, row_split = (x.strip() for x in row)
            if row_split != split:
                continue
            try:
                start_seconds = int(start)
            except ValueError as exc:
                raise ManifestError(f"{path}, row {number}: start_seconds {start!r} is not an integer") from exc
            name = video_template.format(youtube_id=youtube_id, start=start_seconds)
            clips.append(EvalClip(key=Path(name).stem, video=Path(root) / name, caption=label, audio_caption=label, category=label))
    if not clips:
        raise ManifestError(f"{path}: no rows with split {split!r}")
    return clips


def _local_rank_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ManifestEvalSet(IterableDataset):
    """Decoded benchmark clips; each DDP rank and loader worker reads a disjoint share
    (no padding or duplication, so every clip is scored exactly once).

    Args:
        clips: the clips.
        decode: keyword arguments of :func:`foley.data_modules.decoding.decode_sample`
            except ``sample`` and ``rng``.
        caption_field: which caption becomes ``batch["caption"]`` (``none``: no text).
        skip_missing: log and skip clips whose files are missing or undecodable instead
            of failing (the report's ``num_clips`` then shows how many were scored).
    """

    def __init__(
        self,
        clips: Sequence[EvalClip],
        decode: dict[str, Any],
        caption_field: Literal["caption", "audio_caption", "none"] = "caption",
        skip_missing: bool = False,
    ) -> None:
        super().__init__()
        self.clips = list(clips)
        self.decode = decode
        self.caption_field = caption_field
        self.skip_missing = skip_missing

    def sample_of(self, clip: EvalClip) -> dict[str, Any]:
        """The webdataset-style sample (bytes per member) of one clip."""
        for path in (clip.video, clip.audio):
            if path is not None and not path.is_file():
                raise SampleError(f"{clip.key}: file {path} not found (check the manifest paths and root)")
        caption = {"caption": clip.caption, "audio_caption": clip.audio_caption, "none": ""}[self.caption_field]
        meta = {"key": clip.key, "caption": caption, "video_caption": clip.caption, "audio_caption": clip.audio_caption,
                "category": clip.category, "events": [], "source": {"video": str(clip.video), **clip.extra}}
        sample: dict[str, Any] = {"__key__": clip.key, "json": json.dumps(meta).encode(), "mp4": clip.video.read_bytes()}
        if clip.audio is not None:
            sample[clip.audio.suffix.lstrip(".").lower() or "wav"] = clip.audio.read_bytes()
        else:
            wave, rate = decode_audio_track(clip.video)
            sample["wav"] = encode_audio_bytes(np.clip(wave, -1.0, 1.0), rate, format="WAV", subtype="FLOAT")
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = _local_rank_info()
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for clip in self.clips[rank * workers + worker_id :: world * workers]:
            try:
                yield decode_sample(self.sample_of(clip), **self.decode)
            except (SampleError, OSError, ValueError) as exc:
                if not self.skip_missing:
                    raise
                logger.warning("skipping benchmark clip %s: %s", clip.key, exc)


class ManifestEvalDataModule(LightningDataModule):
    """Test/predict data of a benchmark given by a manifest (see the module docstring).

    Args:
        manifest: CSV/JSON/JSONL manifest path.
        root: folder relative paths are resolved against (default: the manifest's folder).
        columns: manifest column names.
        caption_field: which caption the model gets (``none``: video only).
        sample_rate: audio rate of the batches.
        clip_seconds: evaluated length from the start of each clip.
        clip_fps: CLIP frame stream rate.
        clip_size: CLIP frame side.
        sync_fps: sync frame stream rate.
        sync_size: sync frame side.
        batch_size: clips per batch.
        num_workers: DataLoader workers.
        max_samples: evaluate only the first N clips (smoke tests).
        load_video: decode frame streams.
        skip_missing: skip (and log) missing or undecodable clips instead of failing.
        clip_crop: ``"center"`` (short side + centre crop) or ``"resize"`` (stretch the whole
            frame, MMAudio's CLIP stream) for the CLIP frames.
    """

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        columns: ManifestColumns | None = None,
        caption_field: Literal["caption", "audio_caption", "none"] = "caption",
        sample_rate: int = 44100,
        clip_seconds: float = 8.0,
        clip_fps: float = 8.0,
        clip_size: int = 224,
        sync_fps: float = 25.0,
        sync_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 4,
        max_samples: int | None = None,
        load_video: bool = True,
        skip_missing: bool = False,
        clip_crop: Literal["center", "resize"] = "center",
    ) -> None:
        super().__init__()
        self.manifest = manifest
        self.root = root
        self.columns = columns or ManifestColumns()
        self.caption_field = caption_field
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.clip_stream = StreamSpec(clip_fps, clip_size, clip_crop) if load_video else None
        self.sync_stream = StreamSpec(sync_fps, sync_size, "center") if load_video else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_samples = max_samples
        self.skip_missing = skip_missing
        self._clips: list[EvalClip] | None = None

    def load_clips(self) -> list[EvalClip]:
        """Read the manifest (subclasses read other formats)."""
        return read_manifest(self.manifest, self.columns, self.root)

    @property
    def clips(self) -> list[EvalClip]:
        if self._clips is None:
            clips = self.load_clips()
            self._clips = clips[: self.max_samples] if self.max_samples is not None else clips
        return self._clips

    @property
    def categories(self) -> list[str]:
        """Sorted categories of the benchmark (the same on every rank)."""
        return sorted({clip.category for clip in self.clips if clip.category})

    def dataset(self) -> ManifestEvalSet:
        decode = {
            "sample_rate": self.sample_rate,
            "crop": CropPolicy(self.clip_seconds, None, random_crop=False),
            "clip_stream": self.clip_stream,
            "sync_stream": self.sync_stream,
        }
        return ManifestEvalSet(self.clips, decode, self.caption_field, self.skip_missing)

    def _loader(self) -> DataLoader:
        return DataLoader(self.dataset(), batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate_examples)

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()


class KlingAudioEvalDataModule(ManifestEvalDataModule):
    """Kling-Audio-Eval from a local copy and a manifest (columns as in the module docstring;
    the default caption is the ``caption`` column, map it to the video or audio caption)."""


class VGGSoundTestDataModule(ManifestEvalDataModule):
    """VGGSound test split from the official ``vggsound.csv`` and a folder of clips.

    Args:
        manifest: path of ``vggsound.csv``.
        root: folder holding the clips.
        video_template: clip file name from ``youtube_id`` and ``start`` (seconds, int).
        split: split to read.
        **kwargs: further :class:`ManifestEvalDataModule` arguments.
    """

    def __init__(
        self,
        manifest: str,
        root: str,
        video_template: str = "{youtube_id}_{start:06d}.mp4",
        split: str = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(manifest, root, **kwargs)
        self.video_template = video_template
        self.split = split

    def load_clips(self) -> list[EvalClip]:
        return read_vggsound_csv(self.manifest, self.root or ".", self.video_template, self.split)
