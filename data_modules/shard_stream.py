"""A resumable stream of decoded examples from webdataset shards (the FoleyDataModule's dataset).

Shards are split across DDP ranks and DataLoader workers ("readers"); with fewer shards than
readers every reader scans all shards and keeps every n-th sample, so no reader is starved
and every sample is seen exactly once per pass.

Resuming. A reader's position is a small :class:`_Cursor`: the epoch and pass, how many raw
samples of the pass it has read (and where each shard started), which raw samples sit in
its shuffle buffer, and its random state. :meth:`ShardStream.state_dict` returns it and
:meth:`ShardStream.load_state_dict` makes the next ``iter()`` continue from it: shards read
completely before the checkpoint are not opened again unless they still hold buffered
samples, which are re-read (raw bytes, no decoding) to refill the buffer in its saved
order. The stream then yields exactly what the uninterrupted stream would have yielded.
torchdata's ``StatefulDataLoader`` calls these methods in every worker process.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import group_by_keys, tar_file_expander

from foley.data_modules.decoding import SampleError, decode_sample, is_data_error
from foley.data_modules.skips import SkipCounter, SkipLimitExceeded
from foley.io.shards import list_shards

__all__ = ["ShardStream", "SkipCounter", "SkipLimitExceeded", "resolve_shards"]

log = logging.getLogger(__name__)


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


@dataclasses.dataclass
class _Cursor:
    """Where one reader is in its current epoch; every field is plain data (checkpointable).

    Raw samples of a pass are numbered in reading order (``scanned`` is the next number);
    ``url_starts[i]`` is the number of the first sample of the i-th shard opened in the pass,
    ``buffer`` the numbers of the samples in the shuffle buffer in buffer order, and
    ``rng_state`` the state of the reader's ``random.Random`` (crops and shuffling).
    """

    reader: int
    readers: int
    epoch: int
    rng_state: list[Any]
    pass_index: int = 0
    produced: int = 0
    pass_start: int = 0
    scanned: int = 0
    url_starts: list[int] = dataclasses.field(default_factory=list)
    buffer: list[int] = dataclasses.field(default_factory=list)
    draining: bool = False
    finished: bool = False

    def next_pass(self) -> None:
        self.pass_index += 1
        self.pass_start = self.produced
        self.scanned = 0
        self.url_starts = []
        self.buffer = []
        self.draining = False


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_state(state: Sequence[Any]) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0])


class ShardStream(IterableDataset):
    """Stream of decoded examples from webdataset shards, resumable mid-epoch.

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
        skipped: Counter of undecodable samples (and the skip cap).
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
        # Shared with the worker processes, so persistent workers see each new epoch too.
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self._cursor: _Cursor | None = None
        self._pending: _Cursor | None = None

    @property
    def epoch(self) -> int:
        """Epoch number; seeds the shard order, shuffling and crops of the next iteration."""
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = int(value)

    # ------------------------------------------------------------------ readers
    def _world(self) -> int:
        if self.world_size is not None:
            return self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return 1

    def _reader(self) -> tuple[int, int]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if self.rank is not None and self.world_size is not None:
            rank, world = self.rank, self.world_size
        return rank * workers + worker, world * workers

    def batches_per_epoch(self, batch_size: int, workers: int) -> int | None:
        """Batches one rank's DataLoader yields per epoch, when known (``samples_per_epoch`` set).

        Every worker batches its own samples, so each worker's last batch may be short.
        """
        if self.samples_per_epoch is None:
            return None
        quota = -(-self.samples_per_epoch // (self._world() * workers))
        return workers * -(-quota // batch_size)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """This reader's position in the current epoch (``{"cursor": None}`` before the first iteration)."""
        return {"cursor": None if self._cursor is None else dataclasses.asdict(self._cursor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue from ``state``.

        A finished state resumes as an empty iteration: this reader had no more samples in
        that epoch (other workers may still have some); the iteration after it starts the
        next epoch.
        """
        cursor = state.get("cursor")
        self._pending = None if cursor is None else _Cursor(**cursor)

    def _take_resume(self, reader: int, readers: int) -> _Cursor | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if (pending.reader, pending.readers) != (reader, readers):
            log.warning(
                "%s: the checkpoint's data position belongs to reader %d of %d, this is reader %d of %d "
                "(different number of ranks or DataLoader workers); this epoch's data restarts from its beginning",
                self.pattern, pending.reader, pending.readers, reader, readers,
            )
            return None
        return pending

    # ---------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader, readers = self._reader()
        cursor = self._take_resume(reader, readers)
        if cursor is None:
            epoch = self.epoch
            cursor = _Cursor(reader, readers, epoch, _rng_state(random.Random(_mix(self.seed, epoch, reader))))
        # Set before the first next(): a state_dict taken now must describe this iteration.
        self._cursor = cursor
        return self._examples(cursor)

    def _examples(self, cursor: _Cursor) -> Iterator[dict[str, Any]]:
        if cursor.finished:
            return
        rng = _rng_from_state(cursor.rng_state)
        quota = None if self.samples_per_epoch is None else -(-self.samples_per_epoch // cursor.readers)
        while quota is None or cursor.produced < quota:
            for example in self._pass(cursor, rng):
                cursor.produced += 1
                cursor.rng_state = _rng_state(rng)
                yield example
                if quota is not None and cursor.produced >= quota:
                    break
            else:
                if quota is None or cursor.produced == cursor.pass_start:
                    break  # one pass wanted, or a full pass produced nothing (looping would spin forever)
                cursor.next_pass()
        cursor.finished = True

    def _pass_urls(self, cursor: _Cursor) -> tuple[list[str], bool]:
        """Shards of this reader's pass, and whether samples (not shards) are split among readers."""
        urls = list(self.urls)
        if self.shuffle:
            # Same order in every reader (seeded without the reader id) so that the
            # sample-level split stays a partition.
            random.Random(_mix(self.seed, cursor.epoch, cursor.pass_index)).shuffle(urls)
        if len(urls) >= cursor.readers and self.max_samples is None:
            return urls[cursor.reader :: cursor.readers], False
        # Fewer shards than readers (or a global sample limit): every reader scans all
        # shards and keeps every readers-th sample.
        return urls, True

    def _pass(self, cursor: _Cursor, rng: random.Random) -> Iterator[dict[str, Any]]:
        """Decoded examples of one pass, continuing ``cursor`` (updated before every yield)."""
        urls, split_samples = self._pass_urls(cursor)
        resume_at = cursor.scanned
        order = list(cursor.buffer)
        wanted = set(order)
        replayed: dict[int, dict[str, Any]] = {}
        use_buffer = self.shuffle and self.shuffle_buffer > 1
        buffer: list[tuple[int, dict[str, Any]]] | None = [] if resume_at == 0 else None

        def restored() -> list[tuple[int, dict[str, Any]]]:
            missing = [index for index in order if index not in replayed]
            if missing:
                raise RuntimeError(
                    f"{self.pattern}: cannot resume pass {cursor.pass_index} of epoch {cursor.epoch}: raw samples "
                    f"{missing[:5]} of the shuffle buffer were not found again. The shards changed since the "
                    "checkpoint was written; resume from an end-of-epoch checkpoint or restore the shards."
                )
            return [(index, replayed[index]) for index in order]

        if not cursor.draining:
            for index, sample in self._raw(urls, cursor, wanted, stop=None):
                if index < resume_at:
                    replayed[index] = sample
                    continue
                if buffer is None:
                    buffer = restored()
                if split_samples and index % cursor.readers != cursor.reader:
                    continue
                if use_buffer:
                    buffer.append((index, sample))
                    if len(buffer) < self.shuffle_buffer:
                        continue
                    chosen = rng.randrange(len(buffer))
                    buffer[chosen], buffer[-1] = buffer[-1], buffer[chosen]
                    sample = buffer.pop()[1]
                example = self._decode(sample, rng)
                if example is not None:
                    cursor.buffer = [i for i, _ in buffer]
                    yield example
            if buffer is None:
                buffer = restored()
            rng.shuffle(buffer)
            cursor.draining = True
            cursor.buffer = [i for i, _ in buffer]
        else:
            for index, sample in self._raw(urls, cursor, wanted, stop=resume_at):
                replayed[index] = sample
            buffer = restored()
        # Drain the buffer in its (shuffled) order; popping from a reversed copy keeps it O(1).
        pending = buffer[::-1]
        while pending:
            sample = pending.pop()[1]
            example = self._decode(sample, rng)
            if example is not None:
                cursor.buffer = [i for i, _ in reversed(pending)]
                yield example

    def _raw(self, urls: list[str], cursor: _Cursor, wanted: set[int], stop: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
        """Numbered raw samples of a pass from ``cursor.scanned`` on, after the ``wanted`` earlier ones.

        Shards the cursor has read past are only opened again when they hold a ``wanted``
        sample (one of the shuffle buffer); ``stop`` ends the scan at that number.
        """
        resume_at = cursor.scanned
        for ordinal, url in enumerate(urls):
            if ordinal < len(cursor.url_starts):
                begin = cursor.url_starts[ordinal]
                if ordinal + 1 < len(cursor.url_starts):
                    end = cursor.url_starts[ordinal + 1]
                    if not any(begin <= index < end for index in wanted):
                        continue  # read completely before the checkpoint and nothing of it is buffered
                index = begin
            else:
                if self.max_samples is not None and cursor.scanned >= self.max_samples:
                    return
                cursor.url_starts.append(cursor.scanned)
                index = cursor.scanned
            # Samples read again to refill the buffer were already counted before the checkpoint.
            for sample in self._url_samples(url, counting=lambda: index >= resume_at):
                if stop is not None and index >= stop:
                    return
                if index >= resume_at:
                    if self.max_samples is not None and index >= self.max_samples:
                        return
                    cursor.scanned = index + 1
                    yield index, sample
                elif index in wanted:
                    yield index, sample
                index += 1

    def _url_samples(self, url: str, counting: Callable[[], bool]) -> Iterator[dict[str, Any]]:
        """Raw samples (``{"__key__", "__url__", member: bytes}``) of one shard; bad data is skipped."""

        def handler(exc: Exception) -> bool:
            # webdataset reports malformed tars (e.g. duplicate member names) as ValueError.
            if not (is_data_error(exc) or type(exc) is ValueError):
                raise exc
            if counting():
                self._skip(url, f"{type(exc).__name__}: {exc}", shard=True)
            return True

        try:
            stream = _open_url(url)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if counting():
                self._skip(url, f"cannot open shard ({type(exc).__name__}: {exc})", shard=True)
            return
        try:
            yield from group_by_keys(tar_file_expander(iter([{"url": url, "stream": stream}]), handler=handler), handler=handler)
        finally:
            stream.close()

    def _decode(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        """Decode one raw sample; ``None`` (counted, logged) when its data is bad."""
        self.skipped.add_seen(self.pattern)
        try:
            return decode_sample(sample, rng=rng if self.shuffle else None, **self.decode)
        except Exception as exc:
            key = f"{sample.get('__key__')} (in {sample.get('__url__')})"
            if not is_data_error(exc):
                exc.add_note(f"while decoding sample {key} from {self.pattern!r}; this is a bug, not bad data")
                raise
            self._skip(key, str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}")
            return None

    def _skip(self, what: str, reason: str, shard: bool = False) -> None:
        log.warning("skipping undecodable data from %s: %s", self.pattern, reason if reason.startswith(what) else f"{what}: {reason}")
        if shard:
            self.skipped.add_seen(self.pattern)
        self.skipped.add(f"{what}: {reason}" if not reason.startswith(what) else reason, where=self.pattern)
