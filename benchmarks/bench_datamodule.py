"""Throughput of FoleyDataModule: clips/s streamed in training mode.

Synthesises a small dataset (or uses ``--shards``), then iterates the training
dataloader with the paper-scale defaults (8 s crops, CLIP stream 8 fps at 224 px, sync
stream 25 fps at 224 px) for each requested worker count and prints clips/s.

    python benchmarks/bench_datamodule.py --clips 24 --workers 0 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from foley.data_modules import FoleyDataModule, describe_batch
from foley.synth.world import synth


def measure(shards: str, num_workers: int, epochs: int, batch_size: int, load_video: bool, size: int) -> tuple[float, int, float, dict]:
    """Return (clips per second, clips, seconds to the first batch, a batch) over ``epochs`` passes."""
    dm = FoleyDataModule(
        train_shards=shards, clip_seconds=8.0, clip_size=size, sync_size=size,
        batch_size=batch_size, num_workers=num_workers, shuffle_buffer=16, load_video=load_video,
    )
    clips = 0
    first_batch = None
    last: dict = {}
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in dm.train_dataloader():
            if first_batch is None:
                first_batch = time.perf_counter() - start
            last = batch
            clips += len(batch["key"])
    elapsed = time.perf_counter() - start
    if dm.skipped:
        print(f"  warning: {dm.skipped} samples skipped")
    return clips / elapsed, clips, first_batch or 0.0, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="existing shards (folder/pattern); default: synthesise")
    parser.add_argument("--clips", type=int, default=24, help="clips to synthesise")
    parser.add_argument("--source-size", type=int, default=128, help="synthetic frame size")
    parser.add_argument("--size", type=int, default=224, help="clip_size and sync_size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None:
            start = time.perf_counter()
            synth(Path(tmp) / "synth", clips=args.clips, seconds=8.0, size=args.source_size, shard_size=max(1, args.clips // 4))
            shards = str(Path(tmp) / "synth")
            print(f"synthesised {args.clips} x 8 s clips at {args.source_size} px in {time.perf_counter() - start:.1f} s")
        print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, 8 s crops, clip 8 fps / sync 25 fps at {args.size} px")
        shown = {}
        for load_video in (True, False):
            for workers in args.workers:
                rate, clips, first, batch = measure(shards, workers, args.epochs, args.batch_size, load_video, args.size)
                what = "audio+video" if load_video else "audio only "
                print(f"{what} num_workers={workers}: {rate:6.2f} clips/s ({clips} clips, first batch after {first:.2f} s)")
                if load_video:
                    shown = batch
        print("a training batch:\n" + describe_batch(shown))


if __name__ == "__main__":
    main()
