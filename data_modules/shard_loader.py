"""The DataLoader over a :class:`~foley.data_modules.shard_stream.ShardStream`: resumable mid-epoch.

It is a torchdata ``StatefulDataLoader``, so Lightning stores its ``state_dict`` in every
checkpoint and hands it back on resume; the stream's own state (:meth:`ShardStream.state_dict`)
travels inside it from every worker process.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from foley.data_modules.shard_stream import ShardStream

__all__ = ["ShardLoader", "EmptyDatasetError"]

log = logging.getLogger(__name__)

# The training loader's length is computed per worker (ShardStream.batches_per_epoch), which
# is exactly what this generic Lightning warning says an IterableDataset length may not be.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)


class EmptyDatasetError(RuntimeError):
    """A dataloader produced no batch at all."""


class ShardLoader(StatefulDataLoader):
    """Stateful DataLoader over a :class:`ShardStream`.

    Besides batching, it tells the stream the epoch, fails loudly when an epoch yields
    nothing, has a length when the stream knows its epoch size (``samples_per_epoch``),
    and checkpoints the position after the batches the *trainer* has processed: Lightning
    fetches one batch ahead of a loader without a length, and resuming after that
    prefetched batch would skip it.

    Args:
        dataset: The stream.
        epoch_source: Returns the trainer's epoch (``None``: count iterations from the
            stream's epoch).
        consumed_source: Returns how many batches of the current epoch the trainer has
            processed (``None``: every yielded batch counts).
        on_restore: Called when a checkpoint's state is loaded (before the trainer resumes).
        **kwargs: ``StatefulDataLoader`` arguments.
    """

    _HISTORY = 8  # batch positions kept; Lightning's fetcher runs at most one batch ahead

    def __init__(
        self,
        dataset: ShardStream,
        epoch_source: Callable[[], int | None] | None = None,
        consumed_source: Callable[[], int | None] | None = None,
        on_restore: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.epoch_source = epoch_source
        self.consumed_source = consumed_source
        self.on_restore = on_restore
        self._history: deque[tuple[int, dict[str, Any]]] = deque(maxlen=self._HISTORY)
        self._pending: dict[str, Any] | None = None

    @property
    def stream(self) -> ShardStream:
        assert isinstance(self.dataset, ShardStream)
        return self.dataset

    def __len__(self) -> int:
        length = self.stream.batches_per_epoch(self.batch_size or 1, max(1, self.num_workers))
        if length is None:
            # Lightning (sized_len) reads TypeError as "no length": one pass over the shards.
            raise TypeError("the epoch length is unknown without samples_per_epoch")
        return length

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing happens before the first batch is requested. Lightning calls
        # iter() on resume before it settles which epoch it is in.
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        stream = self.stream
        epoch = self.epoch_source() if self.epoch_source is not None else None
        # Before the workers start (or resume) their iteration, which reads it.
        stream.epoch = stream.epoch + 1 if epoch is None else epoch
        batches = self._resume(epoch)
        skipped_before = stream.skipped.value
        iterator = super().__iter__()
        self._history.clear()
        self._history.append((batches, super().state_dict()))
        for batch in iterator:
            batches += 1
            self._history.append((batches, super().state_dict()))
            yield batch
        if batches == 0:
            skipped = stream.skipped.value - skipped_before
            raise EmptyDatasetError(
                f"no samples could be read from {stream.pattern!r} ({len(stream.urls)} shard(s)"
                + (f", rank {stream.rank} of {stream.world_size}" if stream.world_size and stream.world_size > 1 else "")
                + f"); {skipped} sample(s) or shard(s) were skipped as undecodable (see the warnings above). "
                "Check the shard paths and create shards with `foley synth` or `foley prepare`."
            )

    def _resume(self, epoch: int | None) -> int:
        """Hand a loaded checkpoint state to the iterator about to start; returns its batch count."""
        pending, self._pending = self._pending, None
        if pending is None:
            return 0
        if epoch is not None and pending["epoch"] != epoch:
            # Written after the last batch of an epoch the trainer has finished since.
            log.info("%s: the checkpoint's data position is from epoch %d; epoch %d starts from its beginning",
                     self.stream.pattern, pending["epoch"], epoch)
            return 0
        if pending["loader"] is None:
            return 0
        super().load_state_dict(pending["loader"])
        return int(pending["batches"])

    def state_dict(self) -> dict[str, Any]:
        """Position after the batches the trainer processed, for every DDP rank.

        Lightning writes the checkpoint from rank 0 only but calls this on every rank at
        the same point (``Trainer.save_checkpoint`` must run on all ranks), so the ranks'
        states are gathered here.
        """
        state = {"batches": 0, "epoch": self.stream.epoch, "workers": self.num_workers, "loader": None}
        if self._history:
            consumed = self.consumed_source() if self.consumed_source is not None else None
            matching = [entry for entry in self._history if entry[0] == consumed]
            if consumed is not None and not matching:
                log.warning("%s: the data position after %d batches is no longer known; saving the latest (%d batches)",
                            self.stream.pattern, consumed, self._history[-1][0])
            state["batches"], state["loader"] = (matching or [self._history[-1]])[-1]
        # else: no iteration yet; nothing to resume ("loader": None).
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            ranks: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, state)
            return {"ranks": ranks}
        return {"ranks": [state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a run with the same number of ranks and workers.

        With other numbers the position cannot be mapped; a warning says so and the epoch's
        data starts from its beginning.
        """
        ranks = state_dict.get("ranks", [])
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        pattern = self.stream.pattern
        if len(ranks) != world:
            log.warning("%s: the checkpoint's data position was saved by %d process(es), this run has %d; "
                        "this epoch's data restarts from its beginning", pattern, len(ranks), world)
            return
        state = ranks[rank]
        if state["workers"] != self.num_workers:
            log.warning("%s: the checkpoint's data position was saved with num_workers=%d, this run has %d; this "
                        "epoch's data restarts from its beginning (resume with --data.init_args.num_workers=%d to "
                        "continue exactly)", pattern, state["workers"], self.num_workers, state["workers"])
            return
        self._pending = state
        if self.on_restore is not None:
            self.on_restore()
