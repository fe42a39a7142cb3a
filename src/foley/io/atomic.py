"""Atomic file output: write to a temporary sibling, then ``os.replace`` it into place.

A reader (or a crashed job restarted later) therefore sees either the old file or the
complete new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "temp_sibling"]


def temp_sibling(path: str | os.PathLike[str]) -> Path:
    """Return a unique temporary path in the same folder as ``path``.

    The real extension is kept last (``clip.mp4`` -> ``.clip.<id>.tmp.mp4``) because
    muxers such as FFmpeg pick the container format from the file extension. The name
    starts with a dot and contains ``.tmp`` so that globbing for ``*.mp4`` or ``*.tar``
    never picks up an unfinished file.

    Args:
        path: Final destination.
    """
    path = Path(path)
    suffix = path.suffix
    stem = path.name[: -len(suffix)] if suffix else path.name
    token = uuid.uuid4().hex[:8]
    return path.with_name(f".{stem}.{token}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; move it onto ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left untouched.
    The parent folder is created if needed.

    Args:
        path: Final destination.

    Example:
        >>> with atomic_path("out/clip.mp4") as tmp:  # doctest: +SKIP
        ...     write_something(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to the temporary file {tmp} for {path}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
