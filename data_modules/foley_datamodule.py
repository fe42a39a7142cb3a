"""The one LightningDataModule every foley stage trains on.

Reads webdataset shards (docs/architecture.md §1) and yields the batch dict of §2.
Shards are split across DDP ranks and DataLoader workers; with fewer shards than
readers (ranks x workers) every reader scans all shards and keeps every n-th sample,
so no reader is starved and every sample is seen exactly once per epoch.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import group_by_keys, tar_file_expander

from foley.data_modules.decoding import CropPolicy, SampleError, StreamSpec, decode_sample
from foley.io.shards import list_shards

__all__ = ["FoleyDataModule", "ShardStream", "SkipCounter", "EmptyDatasetError", "collate_examples", "describe_batch", "resolve_shards"]

log = logging.getLogger(__name__)

ShardSpec = str | list[str] | None
Split = Literal["train", "val", "test", "predict"]


class EmptyDatasetError(RuntimeError):
    """A dataloader produced no batch at all."""


def resolve_shards(spec: str | Sequence[str]) -> list[str]:
    """Expand a shard specification into shard paths/URLs.

    Accepts a local folder, a glob, a brace pattern, an fsspec URL (``s3://b/shard-{0..9}.tar``),
    a ``pipe:`` command, ``::``-joined combinations of these, or a list.

    Raises:
        FileNotFoundError: A local specification matches nothing.
    """
    if not isinstance(spec, str):
        return [url for item in spec for url in resolve_shards(item)]
    urls: list[str] = []
    for part in spec.split("::"):
        if part.startswith("pipe:"):
            urls.extend(wds.shardlists.expand_urls(part))
        else:
            urls.extend(list_shards(part))
    return urls


def _open_url(url: str) -> Any:
    """Open a shard for reading: local paths, ``pipe:`` and webdataset schemes, else fsspec."""
    scheme = urlparse(url).scheme
    if url.startswith("pipe:") or scheme in ("", "file") or scheme in gopen_schemes or len(scheme) == 1:
        return gopen(url, "rb")
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except ImportError as exc:
        raise ImportError(f"{url}: reading {scheme}:// shards needs the fsspec backend for {scheme} ({exc})") from exc


class SkipCounter:
    """Count of samples skipped as undecodable, shared with DataLoader worker processes."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def add(self, count: int = 1) -> None:
        """Add ``count`` skipped samples."""
        with self._value.get_lock():
            self._value.value += count

    @property
    def value(self) -> int:
        """Skipped samples so far (all workers)."""
        return int(self._value.value)


class ShardStream(IterableDataset):
    """Stream of decoded examples from webdataset shards.

    Args:
        urls: Shard paths or URLs.
        pattern: The user's shard specification, for error messages.
        decode: Keyword arguments of :func:`~foley.data_modules.decoding.decode_sample`
            except ``sample`` and ``rng``.
        shuffle: Shuffle shard order and samples (training).
        shuffle_buffer: Samples held for shuffling.
        seed: Base seed; crops and shuffling depend on (seed, epoch, reader).
        max_samples: Stop after this many samples in total over all readers.
        samples_per_epoch: Loop over the shards until every reader has produced
            ``ceil(samples_per_epoch / readers)`` samples (equal batch counts on every
            DDP rank); ``None`` makes one pass.
        skipped: Counter of undecodable samples.
        rank: DDP rank of this process (``None``: ask torch.distributed / the environment).
        world_size: Number of DDP processes.
    """

    def __init__(
        self,
        urls: list[str],
        pattern: str,
        decode: dict[str, Any],
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        max_samples: int | None = None,
        samples_per_epoch: int | None = None,
        skipped: SkipCounter | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not urls:
            raise FileNotFoundError(f"{pattern}: no shards")
        self.urls = list(urls)
        self.pattern = pattern
        self.decode = decode
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.max_samples = max_samples
        self.samples_per_epoch = samples_per_epoch
        self.skipped = skipped or SkipCounter()
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._local_passes = 0

    def _reader(self) -> tuple[int, int]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if self.rank is not None and self.world_size is not None:
            rank, world = self.rank, self.world_size
        return rank * workers + worker, world * workers

    def _skip(self, reason: str) -> bool:
        self.skipped.add()
        log.warning("skipping undecodable data from %s: %s", self.pattern, reason)
        return True

    def _raw_samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        def handler(exc: Exception) -> bool:
            return self._skip(f"{type(exc).__name__}: {exc}")

        def streams() -> Iterator[dict[str, Any]]:
            for url in urls:
                try:
                    stream = _open_url(url)
                except Exception as exc:  # noqa: BLE001 - an unreadable shard must not end the epoch
                    handler(exc)
                    continue
                try:
                    yield {"url": url, "stream": stream}
                finally:
                    stream.close()  # the expander has read this shard to its end (or stopped)

        files = tar_file_expander(streams(), handler=handler)
        yield from group_by_keys(files, handler=handler)

    def _one_pass(self, rng: random.Random, reader: int, readers: int, pass_index: int) -> Iterator[dict[str, Any]]:
        urls = list(self.urls)
        if self.shuffle:
            # Same order in every reader (seeded without the reader id) so that the
            # sample-level split below stays a partition.
            random.Random(_mix(self.seed, self.epoch, self._local_passes, pass_index)).shuffle(urls)
        if len(urls) >= readers and self.max_samples is None:
            raw = self._raw_samples(urls[reader::readers])
        else:
            # Fewer shards than readers (or a global sample limit): every reader scans
            # all shards and keeps every readers-th sample.
            scanned = islice(self._raw_samples(urls), self.max_samples)
            raw = (sample for index, sample in enumerate(scanned) if index % readers == reader)
        if self.shuffle and self.shuffle_buffer > 1:
            raw = _shuffled(raw, self.shuffle_buffer, rng)
        for sample in raw:
            try:
                yield decode_sample(sample, rng=rng if self.shuffle else None, **self.decode)
            except Exception as exc:  # noqa: BLE001 - skip, count, go on
                self._skip(str(exc) if isinstance(exc, SampleError) else f"{sample.get('__key__')}: {type(exc).__name__}: {exc}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader, readers = self._reader()
        self._local_passes += 1
        rng = random.Random(_mix(self.seed, self.epoch, self._local_passes, reader))
        if self.samples_per_epoch is None:
            yield from self._one_pass(rng, reader, readers, 0)
            return
        quota = -(-self.samples_per_epoch // readers)
        produced, pass_index = 0, 0
        while produced < quota:
            before = produced
            for example in self._one_pass(rng, reader, readers, pass_index):
                yield example
                produced += 1
                if produced >= quota:
                    return
            pass_index += 1
            if produced == before:
                return  # a full pass produced nothing; looping again would spin forever


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0])


def _shuffled(samples: Iterator[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def _pad_stack(tensors: list[torch.Tensor], dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad tensors along ``dim`` to the longest and stack; return (stacked, mask)."""
    lengths = [t.shape[dim] for t in tensors]
    longest = max(lengths)
    shape = list(tensors[0].shape)
    shape[dim] = longest
    out = tensors[0].new_zeros((len(tensors), *shape))
    mask = torch.zeros((len(tensors), longest), dtype=torch.bool)
    for row, (tensor, length) in enumerate(zip(tensors, lengths)):
        out[row].narrow(dim, 0, length).copy_(tensor)
        mask[row, :length] = True
    return out, mask


def _pad_any(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors of equal rank, zero-padding every dimension to the largest size."""
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    if len({t.ndim for t in tensors}) != 1:
        raise ValueError(f"cannot batch tensors of different ranks: {[tuple(t.shape) for t in tensors]}")
    shape = [max(sizes) for sizes in zip(*(t.shape for t in tensors))]
    out = tensors[0].new_zeros((len(tensors), *shape))
    for row, tensor in enumerate(tensors):
        out[(row, *(slice(0, s) for s in tensor.shape))] = tensor
    return out


_FIXED_KEYS = {"audio", "clip_frames", "sync_frames", "caption", "seconds_start", "seconds_total", "key", "meta"}


def collate_examples(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch examples from :func:`decode_sample`, padding to the longest (architecture §2)."""
    audio, audio_mask = _pad_stack([e["audio"] for e in examples], dim=1)
    batch: dict[str, Any] = {
        "audio": audio,
        "audio_mono": audio.mean(dim=1),
        "audio_mask": audio_mask,
    }
    for name, mask_name in (("clip_frames", "clip_mask"), ("sync_frames", "sync_mask")):
        if name in examples[0]:
            batch[name], batch[mask_name] = _pad_stack([e[name] for e in examples], dim=0)
    batch["caption"] = [e["caption"] for e in examples]
    batch["seconds_start"] = torch.tensor([e["seconds_start"] for e in examples], dtype=torch.float32)
    batch["seconds_total"] = torch.tensor([e["seconds_total"] for e in examples], dtype=torch.float32)
    batch["key"] = [e["key"] for e in examples]
    batch["meta"] = [e["meta"] for e in examples]
    extras = sorted({k for e in examples for k in e} - _FIXED_KEYS)
    for name in extras:
        values = [e.get(name) for e in examples]
        if any(v is None for v in values):
            raise ValueError(f"precomputed member {name!r} is missing in some samples of the batch: {batch['key']}")
        batch[name] = _pad_any(values)
    return batch


def describe_batch(batch: dict[str, Any]) -> str:
    """Human-readable summary of a batch: one line per field with shape, dtype and range."""
    lines = []
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            text = f"{name:14s} {str(value.dtype).removeprefix('torch.'):8s} {tuple(value.shape)}"
            if value.numel() and value.dtype != torch.bool:
                text += f"  min {value.min().item():.4g}  max {value.max().item():.4g}"
            elif value.numel():
                text += f"  true {value.float().mean().item():.1%}"
            lines.append(text)
        elif name == "meta":
            counts = [len(m.get("events", [])) for m in value]
            lines.append(f"{name:14s} list[{len(value)}] of dicts; events per sample {counts}")
        elif isinstance(value, list):
            shown = ", ".join(repr(v)[:40] for v in value[:3]) + (", ..." if len(value) > 3 else "")
            lines.append(f"{name:14s} list[{len(value)}]: {shown}")
        else:
            lines.append(f"{name:14s} {value!r}")
    return "\n".join(lines)


class _ShardLoader(DataLoader):
    """DataLoader that tells its dataset the epoch and fails loudly when it yields nothing."""

    epoch_source: Any = None

    def __iter__(self) -> Iterator[Any]:
        dataset = self.dataset
        assert isinstance(dataset, ShardStream)
        epoch = self.epoch_source() if self.epoch_source is not None else None
        dataset.epoch = dataset.epoch + 1 if epoch is None else epoch
        skipped_before = dataset.skipped.value
        batches = 0
        for batch in super().__iter__():
            batches += 1
            yield batch
        if batches == 0:
            skipped = dataset.skipped.value - skipped_before
            raise EmptyDatasetError(
                f"no samples could be read from {dataset.pattern!r} ({len(dataset.urls)} shard(s)"
                + (f", rank {dataset.rank} of {dataset.world_size}" if dataset.world_size and dataset.world_size > 1 else "")
                + f"); {skipped} sample(s) or shard(s) were skipped as undecodable (see the warnings above). "
                "Check the shard paths and create shards with `foley synth` or `foley prepare`."
            )


class FoleyDataModule(LightningDataModule):
    """Audio, frame streams and captions from webdataset shards, batched per docs/architecture.md §2.

    Args:
        train_shards: Training shards: a folder, glob, brace pattern, fsspec URL,
            ``pipe:`` command, or a list of these.
        val_shards: Validation shards (read deterministically, each sample once).
        test_shards: Test shards (as validation).
        predict_shards: Prediction shards (as validation).
        sample_rate: Output audio rate; other rates in the shards are resampled.
        clip_seconds: Crop length; shorter clips are taken whole (and padded in the batch).
        min_seconds: Shortest training crop; when set, training crop durations are drawn
            uniformly from ``[min_seconds, clip_seconds]``.
        clip_fps: CLIP frame stream rate.
        clip_size: CLIP frame side in pixels.
        clip_crop: ``"center"`` (short side resize + centre crop, CLIP preprocessing) or
            ``"resize"`` (stretch the whole frame).
        sync_fps: Sync frame stream rate.
        sync_size: Sync frame side (short side resize + centre crop).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        shuffle_buffer: Training samples held for shuffling.
        seed: Seed for training crops and shuffling (mixed with epoch and reader).
        load_video: Decode frame streams; ``False`` yields audio, captions and metadata only.
        max_val_samples: Use only the first N validation/test/predict samples.
        samples_per_epoch: Training samples per epoch over all ranks (loops over the
            data); keeps batch counts equal on every DDP rank. ``None``: one pass.
        decode_threads: decord threads per video decode.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: Keep worker processes between epochs (saves their start-up
            time; crops still differ per epoch).
    """

    def __init__(
        self,
        train_shards: ShardSpec = None,
        val_shards: ShardSpec = None,
        test_shards: ShardSpec = None,
        predict_shards: ShardSpec = None,
        sample_rate: int = 44100,
        clip_seconds: float = 8.0,
        min_seconds: float | None = None,
        clip_fps: float = 8.0,
        clip_size: int = 224,
        clip_crop: Literal["center", "resize"] = "center",
        sync_fps: float = 25.0,
        sync_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 4,
        shuffle_buffer: int = 256,
        seed: int = 0,
        load_video: bool = True,
        max_val_samples: int | None = None,
        samples_per_epoch: int | None = None,
        decode_threads: int = 1,
        pin_memory: bool = False,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
        if min_seconds is not None and not 0 < min_seconds <= clip_seconds:
            raise ValueError(f"min_seconds must be in (0, clip_seconds={clip_seconds}], got {min_seconds}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        self.save_hyperparameters()
        self.shards: dict[str, ShardSpec] = {"train": train_shards, "val": val_shards, "test": test_shards, "predict": predict_shards}
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.min_seconds = min_seconds
        self.clip_stream = StreamSpec(clip_fps, clip_size, clip_crop) if load_video else None
        self.sync_stream = StreamSpec(sync_fps, sync_size, "center") if load_video else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.load_video = load_video
        self.max_val_samples = max_val_samples
        self.samples_per_epoch = samples_per_epoch
        self.decode_threads = decode_threads
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self._skipped: SkipCounter | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A shared counter may only travel to processes started from here (ddp_spawn
        # pickles the DataModule); each process then counts its own skips.
        state = self.__dict__.copy()
        state["_skipped"] = None
        return state

    @property
    def skipped(self) -> int:
        """Samples (or shards) skipped as undecodable so far, over all workers of this process."""
        return self._skipped.value if self._skipped is not None else 0

    def _counter(self) -> SkipCounter:
        if self._skipped is None:
            self._skipped = SkipCounter()
        return self._skipped

    def _rank_info(self) -> tuple[int | None, int | None]:
        if self.trainer is None:
            return None, None
        return self.trainer.global_rank, self.trainer.world_size

    def _epoch(self) -> int | None:
        return None if self.trainer is None else int(self.trainer.current_epoch)

    def dataset(self, split: Split) -> ShardStream:
        """Build the example stream of one split (also usable without a Trainer)."""
        spec = self.shards[split]
        if spec is None:
            raise ValueError(f"FoleyDataModule: {split}_shards is not set; pass --data.init_args.{split}_shards=PATH_OR_PATTERN")
        pattern = spec if isinstance(spec, str) else ", ".join(spec)
        train = split == "train"
        crop = CropPolicy(self.clip_seconds, self.min_seconds if train else None, random_crop=train)
        decode = {
            "sample_rate": self.sample_rate,
            "crop": crop,
            "clip_stream": self.clip_stream,
            "sync_stream": self.sync_stream,
            "decode_threads": self.decode_threads,
        }
        rank, world = self._rank_info()
        if train and world is not None and world > 1 and self.samples_per_epoch is None:
            log.warning(
                "FoleyDataModule: training on %d ranks without samples_per_epoch; ranks may get different "
                "numbers of batches (and DDP can hang at the end of an epoch). Set samples_per_epoch.",
                world,
            )
        return ShardStream(
            resolve_shards(spec),
            pattern,
            decode,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=self.seed,
            max_samples=None if train else self.max_val_samples,
            samples_per_epoch=self.samples_per_epoch if train else None,
            skipped=self._counter(),
            rank=rank,
            world_size=world,
        )

    def _loader(self, split: Split) -> DataLoader:
        loader = _ShardLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_examples,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )
        if split == "train":
            loader.epoch_source = self._epoch
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
