"""The one LightningDataModule every foley stage trains on.

Reads webdataset shards (docs/architecture.md §1) through :class:`ShardStream` and yields the
batch dict of §2 (:func:`collate_examples`). The training loader is a torchdata
``StatefulDataLoader``: Lightning saves its state in every checkpoint and a resumed run
continues the epoch with exactly the batches the uninterrupted run would have seen, for
any number of workers and per DDP rank.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from lightning.pytorch import LightningDataModule

from foley.data_modules.collate import collate_examples, describe_batch
from foley.data_modules.decoding import CropPolicy, StreamSpec
from foley.data_modules.shard_loader import EmptyDatasetError, ShardLoader
from foley.data_modules.shard_stream import ShardStream, SkipCounter, SkipLimitExceeded, resolve_shards

__all__ = [
    "FoleyDataModule", "ShardLoader", "ShardStream", "SkipCounter", "SkipLimitExceeded", "EmptyDatasetError",
    "collate_examples", "describe_batch", "resolve_shards",
]

log = logging.getLogger(__name__)

ShardSpec = str | list[str] | None
Split = Literal["train", "val", "test", "predict"]


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
        max_skip_fraction: Stop with :class:`SkipLimitExceeded` (naming the first bad samples)
            once more than this fraction of the samples read could not be decoded; ``None``
            never stops.
        skip_warmup: Samples read before ``max_skip_fraction`` is checked.
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
        max_skip_fraction: float | None = 0.01,
        skip_warmup: int = 100,
    ) -> None:
        super().__init__()
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
        if min_seconds is not None and not 0 < min_seconds <= clip_seconds:
            raise ValueError(f"min_seconds must be in (0, clip_seconds={clip_seconds}], got {min_seconds}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        if max_skip_fraction is not None and not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1] or null, got {max_skip_fraction}")
        if skip_warmup < 0:
            raise ValueError(f"skip_warmup must be >= 0, got {skip_warmup}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or null, got {samples_per_epoch}")
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
        self.max_skip_fraction = max_skip_fraction
        self.skip_warmup = skip_warmup
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
            self._skipped = SkipCounter(self.max_skip_fraction, self.skip_warmup)
        return self._skipped

    def _rank_info(self) -> tuple[int | None, int | None]:
        if self.trainer is None:
            return None, None
        return self.trainer.global_rank, self.trainer.world_size

    def _epoch(self) -> int | None:
        return None if self.trainer is None else int(self.trainer.current_epoch)

    def _consumed(self) -> int | None:
        """Training batches of the current epoch the trainer has processed.

        A checkpoint written mid-batch (an error in ``training_step``) restarts that batch,
        so the batch being processed does not count as consumed.
        """
        if self.trainer is None:
            return None
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

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

    def _restored(self) -> None:
        """The training loader got a checkpoint's data position; the trainer resumes next.

        Works around Lightning 2.6 for epochs of unknown length: a checkpoint written after
        the last batch of such an epoch (Lightning saw the end by fetching ahead) is restored
        with ``is_last_batch`` set but without resetting the batch counters, so the *next*
        epoch ends before its first batch and is silently skipped. Cleared, the restored
        loader itself reports the end of the epoch on the first fetch.
        """
        trainer = self.trainer
        if trainer is None or self.samples_per_epoch is not None or isinstance(trainer.limit_train_batches, int):
            return  # Lightning knows the epoch length and resets its counters at the boundary
        trainer.fit_loop.epoch_loop.batch_progress.is_last_batch = False

    def _loader(self, split: Split) -> ShardLoader:
        train = split == "train"
        return ShardLoader(
            self.dataset(split),
            epoch_source=self._epoch if train else None,
            consumed_source=self._consumed if train else None,
            on_restore=self._restored if train else None,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_examples,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> ShardLoader:
        """Training batches; resumable (Lightning saves the loader state in checkpoints)."""
        return self._loader("train")

    def val_dataloader(self) -> ShardLoader:
        return self._loader("val")

    def test_dataloader(self) -> ShardLoader:
        return self._loader("test")

    def predict_dataloader(self) -> ShardLoader:
        return self._loader("predict")
