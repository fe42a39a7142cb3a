"""Webdataset tar shards: atomic writing, listing and reading.

A shard ``shard-000000.tar`` holds samples whose members share a key
(``<key>.mp4``, ``<key>.flac``, ``<key>.json``). Shards are written to
``shard-000000.tar.tmp`` and renamed only when complete, so a crash never leaves a
half shard that a reader would pick up.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from braceexpand import braceexpand

from foley.io.atomic import atomic_write_json

__all__ = ["ShardWriter", "list_shards", "read_shard", "INDEX_NAME"]

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
_EXT_PATTERN = re.compile(r"^[A-Za-z0-9_\-.]+$")


def _member_bytes(key: str, ext: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"sample {key!r}: member {ext!r} must be bytes, str, dict or list, got {type(value).__name__}")


class ShardWriter:
    """Write samples into size-limited webdataset tar shards, atomically.

    Use as a context manager. Each shard is written to ``<name>.tar.tmp`` and renamed
    to ``<name>.tar`` when it holds ``shard_size`` samples or the writer closes. If the
    ``with`` block raises, the unfinished shard is deleted (complete shards stay) and no
    index is written. On a clean close ``index.json`` lists every shard and its
    sample count.

    Args:
        out_dir: Folder for the shards (created if missing).
        shard_size: Samples per shard.
        prefix: Shard file name prefix (``<prefix>-000000.tar``).
        overwrite: Allow replacing shards with the same prefix from an earlier run;
            stale higher-numbered shards are removed on a clean close.
    """

    def __init__(self, out_dir: str | os.PathLike[str], shard_size: int = 100, prefix: str = "shard", overwrite: bool = False) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not _KEY_PATTERN.match(prefix):
            raise ValueError(f"shard prefix {prefix!r} may only contain letters, digits, '-' and '_'")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.prefix = prefix
        self.overwrite = overwrite
        self.shards: list[dict[str, Any]] = []
        self.total = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._count_in_shard = 0
        self._keys: set[str] = set()
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        existing = self._existing_shards()
        if existing and not overwrite:
            raise FileExistsError(
                f"{self.out_dir} already holds {len(existing)} shard(s) named {self.prefix}-*.tar; "
                "choose an empty folder or pass overwrite=True"
            )

    def _existing_shards(self) -> list[Path]:
        return sorted(p for p in self.out_dir.glob(f"{self.prefix}-*.tar") if re.fullmatch(rf"{re.escape(self.prefix)}-\d{{6}}\.tar", p.name))

    def _shard_name(self, number: int) -> str:
        return f"{self.prefix}-{number:06d}.tar"

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: str, sample: Mapping[str, bytes | str | dict | list]) -> None:
        """Add one sample.

        Args:
            key: Sample key; letters, digits, ``-`` and ``_`` only (webdataset splits
                member names at the first dot). Must be unique within the writer.
            sample: Extension -> content, e.g. ``{"mp4": b"...", "flac": b"...", "json": {...}}``;
                dicts and lists are stored as JSON, strings as UTF-8.
        """
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if not _KEY_PATTERN.match(key):
            raise ValueError(f"sample key {key!r} may only contain letters, digits, '-' and '_'")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        if not sample:
            raise ValueError(f"sample {key!r} has no members")
        members = []
        for ext, value in sample.items():
            if not _EXT_PATTERN.match(ext):
                raise ValueError(f"sample {key!r}: bad member extension {ext!r}")
            members.append((f"{key}.{ext}", _member_bytes(key, ext, value)))
        if self._tar is None:
            self._open_next()
        assert self._tar is not None
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0  # fixed metadata: identical inputs give byte-identical shards
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._count_in_shard += 1
        self.total += 1
        if self._count_in_shard >= self.shard_size:
            self._finish_shard()

    def _open_next(self) -> None:
        final = self.out_dir / self._shard_name(len(self.shards))
        self._tmp_path = final.with_name(final.name + ".tmp")
        self._tar = tarfile.open(self._tmp_path, mode="w", format=tarfile.USTAR_FORMAT)
        self._count_in_shard = 0

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._tmp_path is not None
        self._tar.close()
        with open(self._tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        final = self._tmp_path.with_name(self._tmp_path.name[: -len(".tmp")])
        os.replace(self._tmp_path, final)
        self.shards.append({"name": final.name, "samples": self._count_in_shard})
        log.debug("wrote shard %s (%d samples)", final, self._count_in_shard)
        self._tar = None
        self._tmp_path = None
        self._count_in_shard = 0

    def close(self) -> None:
        """Finish the current shard, remove stale shards (with overwrite) and write ``index.json``."""
        if self._closed:
            return
        if self._tar is not None:
            if self._count_in_shard:
                self._finish_shard()
            else:
                self.abort()
        self._closed = True
        written = {entry["name"] for entry in self.shards}
        for stale in self._existing_shards():
            if stale.name not in written:
                log.info("removing stale shard %s from an earlier run", stale)
                stale.unlink()
        atomic_write_json(self.out_dir / INDEX_NAME, {"shards": self.shards, "total": self.total})
        log.info("wrote %d samples in %d shard(s) to %s", self.total, len(self.shards), self.out_dir)

    def abort(self) -> None:
        """Drop the unfinished shard; complete shards stay, no index is written."""
        self._closed = True
        if self._tar is not None:
            with contextlib.suppress(Exception):
                self._tar.close()
            self._tar = None
        if self._tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp_path.unlink()
            log.warning("discarded unfinished shard %s", self._tmp_path)
            self._tmp_path = None


def list_shards(source: str | os.PathLike[str] | list[str]) -> list[str]:
    """Expand a shard specification into a sorted list of shard paths or URLs.

    Args:
        source: A folder (all ``*.tar`` inside), a glob (``data/shard-*.tar``), a brace
            pattern (``data/shard-{000000..000009}.tar``), an fsspec URL (brace
            expanded, not checked), or a list of any of these.

    Raises:
        FileNotFoundError: A local specification matches no shard.
    """
    if isinstance(source, (list, tuple)):
        result: list[str] = []
        for item in source:
            result.extend(list_shards(item))
        return result
    spec = os.fspath(source)
    if "://" in spec and not spec.startswith("file://"):
        return list(braceexpand(spec))
    spec = spec.removeprefix("file://")
    if os.path.isdir(spec):
        found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
        if not found:
            raise FileNotFoundError(f"{spec}: folder holds no .tar shards; create some with `foley synth` or `foley prepare`")
        return found
    paths: list[str] = []
    for expanded in braceexpand(spec):
        if glob.has_magic(expanded):
            paths.extend(sorted(glob.glob(expanded)))
        elif os.path.isfile(expanded):
            paths.append(expanded)
        else:
            raise FileNotFoundError(f"{expanded}: shard not found (from {spec!r})")
    if not paths:
        raise FileNotFoundError(f"{spec}: pattern matches no shard")
    return paths


def read_shard(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` for each sample of a local tar shard, in order."""
    with tarfile.open(path, mode="r") as tar:
        current_key: str | None = None
        current: dict[str, bytes] = {}
        for info in tar:
            if not info.isfile():
                continue
            base = os.path.basename(info.name)
            key, _, ext = base.partition(".")
            handle = tar.extractfile(info)
            assert handle is not None
            data = handle.read()
            if key != current_key and current_key is not None:
                yield current_key, current
                current = {}
            current_key = key
            current[ext] = data
        if current_key is not None:
            yield current_key, current
