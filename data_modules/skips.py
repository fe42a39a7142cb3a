"""Counting undecodable samples across DataLoader workers, and the cap on their fraction."""

from __future__ import annotations

import multiprocessing

__all__ = ["SkipCounter", "SkipLimitExceeded"]


class SkipLimitExceeded(RuntimeError):
    """More samples than ``max_skip_fraction`` allows could not be decoded."""


class SkipCounter:
    """Decoded and skipped sample counts, shared with DataLoader worker processes, and the skip cap.

    Args:
        max_fraction: Largest tolerated fraction of skipped samples; ``None`` never stops.
        warmup: Samples read before the fraction is checked (a few bad samples at the
            start must not stop a run).
        keep: How many of the first bad samples to remember for the error message.
    """

    _TEXT_BYTES = 4096

    def __init__(self, max_fraction: float | None = None, warmup: int = 100, keep: int = 5) -> None:
        if max_fraction is not None and not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1] or null, got {max_fraction}")
        if warmup < 0:
            raise ValueError(f"skip_warmup must be >= 0, got {warmup}")
        self.max_fraction = max_fraction
        self.warmup = warmup
        self.keep = keep
        # [samples read, samples skipped, remembered entries]; its lock also guards _first.
        self._counts = multiprocessing.Array("q", 3)
        self._first = multiprocessing.Array("c", self._TEXT_BYTES, lock=False)

    @property
    def value(self) -> int:
        """Skipped samples (or shards) so far, over all workers."""
        return int(self._counts[1])

    @property
    def seen(self) -> int:
        """Samples read (decoded or skipped) so far, over all workers."""
        return int(self._counts[0])

    @property
    def first_bad(self) -> list[str]:
        """The first skipped samples, ``"<key>: <reason>"``."""
        with self._counts.get_lock():
            text = bytes(self._first.raw).split(b"\0", 1)[0].decode("utf-8", "replace")
        return [line for line in text.split("\n") if line]

    def add_seen(self, where: str, count: int = 1) -> None:
        """Count ``count`` samples read; checks the cap when the warm-up ends.

        Raises:
            SkipLimitExceeded: Too large a fraction of the samples was skipped.
        """
        with self._counts.get_lock():
            before = self._counts[0]
            self._counts[0] += count
            crossed = before < self.warmup <= self._counts[0]
        if crossed:
            self._check(where)

    def add(self, entry: str = "", where: str = "") -> None:
        """Count one skipped sample (or shard); ``entry`` names it for the error message.

        Raises:
            SkipLimitExceeded: Too large a fraction of the samples was skipped.
        """
        with self._counts.get_lock():
            self._counts[1] += 1
            if entry and self._counts[2] < self.keep:
                current = bytes(self._first.raw).split(b"\0", 1)[0]
                line = entry.replace("\n", " ")[:300].encode("utf-8", "replace") + b"\n"
                if len(current) + len(line) < self._TEXT_BYTES:
                    self._first[len(current) : len(current) + len(line)] = line
                    self._counts[2] += 1
        self._check(where)

    def _check(self, where: str) -> None:
        if self.max_fraction is None:
            return
        seen, skipped = self.seen, self.value
        if seen < self.warmup or skipped <= self.max_fraction * max(seen, 1):
            return
        first = "\n  ".join(self.first_bad) or "(not recorded)"
        raise SkipLimitExceeded(
            f"{skipped} of {seen} samples ({skipped / max(seen, 1):.1%}) read from {where!r} could not be decoded, "
            f"more than max_skip_fraction={self.max_fraction:.1%} allows. First bad samples:\n  {first}\n"
            "Repair or remove them (e.g. re-create the shards with `foley prepare`), or raise the limit with "
            "--data.init_args.max_skip_fraction=F (null turns the check off)."
        )
