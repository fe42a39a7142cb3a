"""ShardStream: mid-epoch state round trips (exact remaining samples and crops), what counts
as a skipped sample, and the skip cap."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import foley.data_modules.shard_stream as shard_stream
from foley.data_modules import FoleyDataModule
from foley.data_modules.decoding import SampleError, is_data_error
from foley.data_modules.shard_stream import ShardStream, SkipCounter, SkipLimitExceeded
from foley.io.media import encode_audio_bytes
from foley.io.shards import ShardWriter

SR = 44100


def _audio_sample(index: int, seconds: float = 1.0) -> dict:
    """An audio-only sample (no video) whose crops are easy to check: a ramp unique to the sample."""
    ramp = (np.arange(int(seconds * SR)) / (seconds * SR) * 0.5 + 0.001 * index).astype(np.float32)
    return {"flac": encode_audio_bytes(np.stack([ramp, ramp]), SR), "json": {"caption": f"sample {index}", "duration": seconds}}


def _write(path: Path, samples: dict[str, dict], shard_size: int) -> None:
    with ShardWriter(path, shard_size=shard_size) as writer:
        for key, members in samples.items():
            writer.write(key, members)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """11 one-second clips in 4 shards of 3, 3, 3 and 2 samples."""
    path = tmp_path_factory.mktemp("stream")
    _write(path, {f"s{i:02d}": _audio_sample(i) for i in range(11)}, shard_size=3)
    return path


def _stream(path: Path, **overrides) -> ShardStream:
    settings = dict(train_shards=str(path), clip_seconds=0.5, load_video=False, batch_size=2, num_workers=0,
                    shuffle_buffer=4, seed=7)
    settings.update({k: v for k, v in overrides.items() if k in ("shuffle_buffer", "samples_per_epoch", "num_workers")})
    stream = FoleyDataModule(**settings).dataset("train")
    stream.rank, stream.world_size = overrides.get("rank"), overrides.get("world_size")
    stream.epoch = 3
    return stream


def _items(examples) -> list[tuple[str, float]]:
    return [(e["key"], e["seconds_start"]) for e in examples]


@pytest.mark.parametrize(
    "settings",
    [
        {},  # one pass, whole shards, a 4-sample shuffle buffer
        {"samples_per_epoch": 25},  # three passes over the shards in one epoch
        {"rank": 1, "world_size": 6},  # more readers than shards: every reader scans all shards, keeps every 6th
        {"shuffle_buffer": 0},
    ],
    ids=["one-pass", "three-passes", "sample-split", "no-buffer"],
)
def test_state_round_trip_continues_with_the_exact_remaining_samples(shards, settings):
    full = _items(_stream(shards, **settings))
    assert len(full) == {"samples_per_epoch": 25}.get(next(iter(settings), ""), len(full))
    if "rank" not in settings:
        assert sorted({key for key, _ in full}) == [f"s{i:02d}" for i in range(11)]
    for cut in range(len(full) + 1):
        stream = _stream(shards, **settings)
        iterator = iter(stream)
        head = _items(next(iterator) for _ in range(cut))
        state = json.loads(json.dumps(stream.state_dict()))  # plain data (checkpointable)
        resumed = _stream(shards, **settings)
        resumed.epoch = 99  # the cursor carries its own epoch
        resumed.load_state_dict(state)
        assert head + _items(resumed) == full, f"cut after {cut} samples"


def test_resume_reopens_only_shards_that_hold_buffered_samples(shards, monkeypatch):
    opened: list[str] = []
    original = shard_stream._open_url
    monkeypatch.setattr(shard_stream, "_open_url", lambda url: opened.append(url) or original(url))
    stream = _stream(shards, shuffle_buffer=2)
    iterator = iter(stream)
    head = _items(next(iterator) for _ in range(8))
    state = stream.state_dict()
    cursor = state["cursor"]
    order = stream._pass_urls(stream._cursor)[0]
    starts = cursor["url_starts"] + [cursor["scanned"]]
    # Shards read to their end before the checkpoint whose samples all left the buffer.
    done = [order[i] for i in range(len(cursor["url_starts"]) - 1)
            if not any(starts[i] <= index < starts[i + 1] for index in cursor["buffer"])]
    assert done, "the checkpoint should lie past at least one fully consumed shard"
    opened.clear()
    resumed = _stream(shards, shuffle_buffer=2)
    resumed.load_state_dict(state)
    assert sorted(k for k, _ in head + _items(resumed)) == [f"s{i:02d}" for i in range(11)]
    assert not set(done) & set(opened) and opened == [url for url in order if url not in done]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_loader_state_round_trip_with_two_workers(shards):
    def loader():
        return FoleyDataModule(train_shards=str(shards), clip_seconds=0.5, load_video=False, batch_size=2, num_workers=2,
                               shuffle_buffer=4, seed=7, samples_per_epoch=14).train_dataloader()

    def keys(batches) -> list[tuple[str, float]]:
        return [(k, float(s)) for b in batches for k, s in zip(b["key"], b["seconds_start"])]

    full_loader = loader()
    assert len(full_loader) == 8  # 7 samples per worker: 4 batches each, the last of 1
    full = keys(full_loader)
    assert len(full) == 14
    for cut in (1, 4, 7):
        first = loader()
        iterator = iter(first)
        head = keys(next(iterator) for _ in range(cut))
        state = first.state_dict()
        del iterator
        second = loader()
        second.load_state_dict(state)
        assert head + keys(second) == full, f"cut after {cut} batches"


def test_only_data_errors_count_as_skipped_samples(shards, monkeypatch, caplog):
    decode = shard_stream.decode_sample
    failures = {
        "s01": SampleError("s01: no audio member"),
        "s02": OSError("s02: truncated read"),
        "s03": av.error.InvalidDataError(1094995529, "Invalid data found when processing input"),
        "s04": json.JSONDecodeError("Expecting value", "{", 0),
    }

    def flaky(sample, **kwargs):
        if sample["__key__"] in failures:
            raise failures[sample["__key__"]]
        return decode(sample, **kwargs)

    monkeypatch.setattr(shard_stream, "decode_sample", flaky)
    stream = _stream(shards, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        keys = sorted(key for key, _ in _items(stream))
    assert keys == ["s00"] + [f"s{i:02d}" for i in range(5, 11)]
    assert stream.skipped.value == 4 and stream.skipped.seen == 11
    assert "s02: truncated read" in caplog.text and "Invalid data found" in caplog.text
    assert all(is_data_error(exc) for exc in failures.values())

    # Programming errors are raised, naming the sample, never counted as skips.
    for bug in (TypeError("unsupported operand"), AttributeError("no attribute 'shape'"), KeyError("latent"),
                ValueError("plain ValueError from our code")):
        failures["s05"] = bug
        stream = _stream(shards, shuffle_buffer=0)
        with pytest.raises(type(bug)) as raised:
            list(stream)
        assert not is_data_error(bug)
        assert any("s05" in note and "bug" in note for note in raised.value.__notes__)
        assert stream.skipped.value == 4


def _bad_shards(path: Path, bad: set[int], total: int = 12) -> None:
    samples = {f"k{i:02d}": (_audio_sample(i, 0.6) if i not in bad else {"flac": b"fLaC broken", "json": {}}) for i in range(total)}
    _write(path, samples, shard_size=4)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_cap_stops_with_the_first_bad_keys(tmp_path, num_workers):
    _bad_shards(tmp_path, bad={1, 5, 6})  # 3 of 12 = 25 %
    settings = dict(val_shards=str(tmp_path), clip_seconds=0.5, load_video=False, batch_size=2, num_workers=num_workers)
    with pytest.raises(SkipLimitExceeded, match=r"more than max_skip_fraction=10\.0%") as raised:
        list(FoleyDataModule(**settings, max_skip_fraction=0.1, skip_warmup=4).val_dataloader())
    message = str(raised.value)
    # One process reads every shard in order, so k01 is its first bad key. With workers, each
    # worker counts its own shards and whichever crosses the cap first raises, naming its own
    # first bad keys (k01, or k05 and k06), depending on scheduling.
    first_bad = ("k01",) if num_workers == 0 else ("k01", "k05")
    assert any(key in message for key in first_bad), message
    assert "cannot decode flac" in message and str(tmp_path) in message
    assert "--data.init_args.max_skip_fraction" in message
    # Under the cap, during the warm-up or without a cap the bad samples are only skipped. The counter is
    # shared by the workers, whose reads interleave in any order: after 5 reads it can already hold 3 bad
    # samples (k00, k01 and k04, k05, k06: 60 %), so the under-the-cap case checks from the 6th read on,
    # where the fraction is at most 3 of 6 = 50 % in every interleaving (one process peaks at 3 of 7).
    for cap, warmup in ((0.5, 6), (0.1, 100), (None, 0)):
        dm = FoleyDataModule(**settings, max_skip_fraction=cap, skip_warmup=warmup)
        assert len([k for b in dm.val_dataloader() for k in b["key"]]) == 9 and dm.skipped == 3


def test_skip_counter_checks_after_the_warm_up():
    counter = SkipCounter(max_fraction=0.25, warmup=8, keep=2)
    for key in ("a", "b", "c"):
        counter.add_seen("shards")
        counter.add(f"{key}: bad", where="shards")  # 100 % skipped, but still warming up
    assert counter.value == 3 and counter.first_bad == ["a: bad", "b: bad"]
    for _ in range(4):
        counter.add_seen("shards")
    with pytest.raises(SkipLimitExceeded, match=r"3 of 8 samples \(37\.5%\) read from 'shards'"):
        counter.add_seen("shards")
    with pytest.raises(ValueError, match="max_skip_fraction"):
        SkipCounter(max_fraction=1.5)


DDP_SCRIPT = '''
import json, sys
import torch.distributed as dist
from foley.data_modules import FoleyDataModule


def keys(batches):
    return [(k, float(s)) for b in batches for k, s in zip(b["key"], b["seconds_start"])]


def loader(shards, rank):
    dm = FoleyDataModule(train_shards=shards, clip_seconds=0.5, load_video=False, batch_size=1, num_workers=2,
                         shuffle_buffer=4, seed=7, samples_per_epoch=12)
    result = dm.train_dataloader()
    result.dataset.rank, result.dataset.world_size = rank, 2
    return result


def run(rank, shards, out, cut):
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2)
    full = keys(loader(shards, rank))
    first = loader(shards, rank)
    iterator = iter(first)
    head = keys(next(iterator) for _ in range(cut))
    state = first.state_dict()  # a collective, as when Lightning checkpoints on every rank
    del iterator
    # Only rank 0 writes the checkpoint; every rank loads that one file.
    shared = [state]
    dist.broadcast_object_list(shared, src=0)
    second = loader(shards, rank)
    second.load_state_dict(shared[0])
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump({"full": full, "resumed": head + keys(second), "ranks_in_state": len(shared[0]["ranks"])}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    run(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
'''


def test_ddp_ranks_resume_their_own_positions(shards, tmp_path):
    """Two gloo ranks with two workers each: the state gathered on save lets each rank resume its own position."""
    script = tmp_path / "ddp_resume.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, str(script), str(rank), str(shards), str(tmp_path), "2"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank in ranks:
        assert rank["ranks_in_state"] == 2  # the one checkpoint holds both ranks' positions
        assert rank["resumed"] == rank["full"] and len(rank["full"]) == 6  # 12 samples per epoch over 2 ranks
    assert ranks[0]["full"] != ranks[1]["full"]


class _Recorder(LightningModule):
    """Records what every training step saw: (global step, keys, crop starts)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, list[str], list[float]]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.global_step, list(batch["key"]), batch["seconds_start"].tolist()))
        return (self.weight - batch["audio"].mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_recording(shards: Path, root: Path, settings: dict, max_steps: int = -1, ckpt_path: str | None = None) -> list:
    model = _Recorder()
    trainer = Trainer(accelerator="cpu", max_epochs=3, max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0,
                      callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=0, save_last=True)])
    datamodule = FoleyDataModule(train_shards=str(shards), clip_seconds=0.5, load_video=False, batch_size=2, shuffle_buffer=4,
                                 seed=7, **settings)
    trainer.fit(model, datamodule, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
@pytest.mark.parametrize(
    "settings,epoch_batches",
    [({"num_workers": 0}, 6), ({"num_workers": 2, "samples_per_epoch": 8}, 4)],
    ids=["no-length", "samples-per-epoch"],
)
def test_trainer_resumes_at_and_between_epoch_ends(shards, tmp_path, settings, epoch_batches):
    """Checkpoints written after the last batch of an epoch (Lightning knows the end of an epoch
    of unknown length only by fetching ahead) and mid-epoch continue with exactly the batches
    of the uninterrupted run, and the next epoch is neither skipped nor repeated."""
    full = _fit_recording(shards, tmp_path / "full", settings)
    assert len(full) == 3 * epoch_batches
    for stop in (epoch_batches, epoch_batches + 1):
        root = tmp_path / f"stop{stop}"
        head = _fit_recording(shards, root, settings, max_steps=stop)
        rest = _fit_recording(shards, root, settings, ckpt_path=str(root / "last.ckpt"))
        assert head + rest == full, f"stopped after {stop} steps"
