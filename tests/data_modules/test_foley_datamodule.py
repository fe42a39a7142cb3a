"""FoleyDataModule: batch contents against hand-made ground truth, crops, splitting, errors."""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from foley.data_modules import FoleyDataModule, describe_batch
from foley.data_modules.foley_datamodule import EmptyDatasetError
from foley.io.media import resample
from foley.io.shards import ShardWriter
from helpers import clips  # frame index coded in colour, exact ground truth

SR = 44100


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two shards: three 2 s stereo clips at 25 fps with one event each, one 1.5 s mono 48 kHz clip at 29.97 fps."""
    out = tmp_path_factory.mktemp("shards")
    made = [clips.make_clip(2.0, 25, key=f"c{i}", event_time=0.52 + 0.4 * i, caption=f"clip {i}") for i in range(3)]
    made.append(clips.make_clip(1.5, 30000 / 1001, key="ntsc", sample_rate=48000, channels=1, height=48, width=32))
    clips.write_shards(out, made, shard_size=2)
    return out, {c["json"]["key"]: c for c in made}


def _module(path, **overrides) -> FoleyDataModule:
    args = dict(train_shards=str(path), val_shards=str(path), clip_seconds=1.0, clip_size=32, sync_size=32, batch_size=2, num_workers=0)
    args.update(overrides)
    return FoleyDataModule(**args)


def _truth_audio(clip) -> np.ndarray:
    truth = clip["truth"]
    audio = truth["audio"]
    if truth["sample_rate"] != SR:
        audio = resample(audio, truth["sample_rate"], SR)
    return np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio


def _check_example(batch, row, clip, fps_sync=25.0, fps_clip=8.0):
    """Audio and both frame streams of one batch row against the clip's ground truth."""
    start, total = float(batch["seconds_start"][row]), float(batch["seconds_total"][row])
    n = int(batch["audio_mask"][row].sum())
    first = round(start * SR)
    assert n == min(round(total * SR), _truth_audio(clip).shape[1] - first)
    expected = _truth_audio(clip)[:, first : first + n]
    got = batch["audio"][row, :, :n].numpy()
    np.testing.assert_allclose(got, expected, atol=2e-4)  # 24-bit FLAC (+ resampling edge)
    np.testing.assert_allclose(batch["audio_mono"][row, :n].numpy(), expected.mean(axis=0), atol=2e-4)
    assert not batch["audio"][row, :, n:].any()
    source_fps = clip["json"]["fps"]
    for name, mask, fps in (("sync_frames", "sync_mask", fps_sync), ("clip_frames", "clip_mask", fps_clip)):
        count = int(batch[mask][row].sum())
        assert count == int(np.floor(total * fps + 1e-6))
        times = start + np.arange(count) / fps
        np.testing.assert_array_equal(clips.decode_index(batch[name][row, :count].numpy()), np.floor(times * source_fps + 1e-6).astype(int))
        assert not batch[name][row, count:].any()


@pytest.mark.parametrize("clip_size,clip_crop", [(32, "center"), (24, "resize")])
def test_validation_batches_match_ground_truth(dataset, clip_size, clip_crop):
    path, truth = dataset
    dm = _module(path, clip_seconds=1.6, clip_size=clip_size, clip_crop=clip_crop)
    batches = list(dm.val_dataloader())
    keys = [k for b in batches for k in b["key"]]
    assert keys == ["c0", "c1", "c2", "ntsc"]  # deterministic order, every sample once
    for batch in batches:
        assert batch["audio"].dtype == torch.float32 and batch["sync_frames"].dtype == torch.uint8
        assert batch["sync_frames"].shape[2:] == (3, 32, 32) and batch["clip_frames"].shape[2:] == (3, clip_size, clip_size)
        for row, key in enumerate(batch["key"]):
            assert float(batch["seconds_start"][row]) == 0.0
            _check_example(batch, row, truth[key])
            assert batch["caption"][row] == truth[key]["json"]["caption"]
    # The 1.5 s clip is taken whole and padded to the 1.6 s clip beside it.
    last = batches[-1]
    assert last["seconds_total"].tolist() == pytest.approx([1.6, 1.5], abs=1e-6)
    assert last["audio_mask"].sum(1).tolist() == [round(1.6 * SR), round(1.5 * SR)]
    assert last["sync_mask"].sum(1).tolist() == [40, 37]
    # Mono source: both channels identical.
    assert torch.equal(last["audio"][1, 0], last["audio"][1, 1])
    text = describe_batch(last)
    assert "sync_frames" in text and "(2, 40, 3, 32, 32)" in text and "ntsc" in text


def test_training_crops_are_random_aligned_and_seeded(dataset):
    path, truth = dataset
    starts = {}
    aligned_events = 0
    for seed in (0, 0, 1):
        dm = _module(path, seed=seed, shuffle_buffer=4)
        seen = {}
        for batch in dm.train_dataloader():
            for row, key in enumerate(batch["key"]):
                _check_example(batch, row, truth[key])
                seen[key] = float(batch["seconds_start"][row])
                # Events are shifted to the crop; the visual event and the audio onset coincide.
                for event in batch["meta"][row]["events"]:
                    onset = event["onset"]
                    assert onset == pytest.approx(truth[key]["json"]["events"][0]["onset"] - seen[key])
                    if 0 <= onset < 1.0:
                        lit = batch["sync_frames"][row, :, 2, 4, -8].numpy() > 200  # the white square (blue channel, top right)
                        first_lit = int(np.argmax(lit)) / 25.0
                        audio_onset = int(np.argmax(np.abs(batch["audio"][row, 0].numpy()) > 0.5)) / SR
                        assert abs(first_lit - audio_onset) <= 1 / 25.0
                        aligned_events += 1
        assert sorted(seen) == sorted(truth)
        starts.setdefault(seed, []).append(seen)
    assert aligned_events >= 3
    assert starts[0][0] == starts[0][1]  # same seed, same crops
    assert starts[0][0] != starts[1][0]
    assert any(v > 0 for v in starts[1][0].values())


def test_variable_duration_training_crops(dataset):
    path, truth = dataset
    dm = _module(path, clip_seconds=1.4, min_seconds=0.5, batch_size=4, shuffle_buffer=0)
    batch = next(iter(dm.train_dataloader()))
    totals = batch["seconds_total"].numpy()
    assert ((totals >= 0.5 - 1e-6) & (totals <= 1.4 + 1e-6)).all() and len(set(totals.round(4))) > 1
    assert batch["audio"].shape[-1] == int(batch["audio_mask"].sum(1).max())
    for row, key in enumerate(batch["key"]):
        _check_example(batch, row, truth[key])


def test_audio_only_mode(dataset):
    path, truth = dataset
    batch = next(iter(_module(path, load_video=False).val_dataloader()))
    assert "sync_frames" not in batch and "clip_frames" not in batch
    np.testing.assert_allclose(batch["audio"][0].numpy(), _truth_audio(truth["c0"])[:, :SR], atol=1e-4)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [2, 3])
def test_workers_see_every_sample_once(dataset, num_workers):
    path, _ = dataset  # two shards: 3 workers > 2 shards falls back to sample-level splitting
    dm = _module(path, num_workers=num_workers, batch_size=1, load_video=False)
    for loader in (dm.val_dataloader(), dm.train_dataloader()):
        keys = sorted(k for b in loader for k in b["key"])
        assert keys == ["c0", "c1", "c2", "ntsc"]
    # Persistent workers: each epoch sees every sample once, with new crops.
    loader = dm.train_dataloader()
    epochs = [{b["key"][0]: float(b["seconds_start"][0]) for b in loader} for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == ["c0", "c1", "c2", "ntsc"]
    assert epochs[0] != epochs[1]


def test_ranks_partition_the_validation_set(dataset):
    path, _ = dataset
    dm = _module(path, load_video=False, max_val_samples=3)
    seen = []
    for rank in range(2):
        stream = dm.dataset("val")
        stream.rank, stream.world_size = rank, 2
        seen.append([e["key"] for e in stream])
    assert sorted(seen[0] + seen[1]) == ["c0", "c1", "c2"] and not set(seen[0]) & set(seen[1])


def _write_raw(path: Path, samples: dict[str, dict]) -> None:
    with ShardWriter(path, shard_size=10) as writer:
        for key, members in samples.items():
            writer.write(key, members)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog, num_workers):
    good = clips.make_clip(1.0, 25, key="good")
    members = {k: v for k, v in good.items() if k != "truth"}
    _write_raw(
        tmp_path,
        {
            "bad-video": dict(members, mp4=b"\x00" * 500),
            "good": members,
            "bad-audio": dict(members, flac=b"fLaC broken"),
            "no-audio": {"mp4": members["mp4"], "json": members["json"]},
            "good2": members,
        },
    )
    dm = _module(tmp_path, batch_size=4, num_workers=num_workers)
    with caplog.at_level(logging.WARNING):
        batches = list(dm.val_dataloader())
    assert sorted(k for b in batches for k in b["key"]) == ["good", "good2"]
    assert dm.skipped == 3  # counted in worker processes too
    assert pickle.loads(pickle.dumps(dm)).skipped == 0  # picklable after use (ddp_spawn)
    if num_workers == 0:  # worker-process log records do not reach caplog
        assert "bad-video" in caplog.text and "bad-audio" in caplog.text and "no audio member" in caplog.text


def test_empty_dataset_raises_clear_error(tmp_path):
    _write_raw(tmp_path, {"broken": {"mp4": b"junk", "flac": b"junk", "json": {"caption": ""}}})
    dm = _module(tmp_path)
    with pytest.raises(EmptyDatasetError, match=str(tmp_path)):
        list(dm.val_dataloader())
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        _module(tmp_path / "nothing-here").train_dataloader()
    with pytest.raises(ValueError, match="test_shards is not set"):
        _module(tmp_path).test_dataloader()


def test_precomputed_members_pass_through(tmp_path):
    made = [clips.make_clip(1.0, 25, key=f"k{i}") for i in range(2)]
    latents = [torch.randn(4, 10 + i) for i in range(2)]
    samples = {}
    for clip, latent in zip(made, latents):
        buffer = io.BytesIO()
        torch.save(latent, buffer)
        samples[clip["json"]["key"]] = dict({k: v for k, v in clip.items() if k != "truth"}, **{"latent.pth": buffer.getvalue()})
    _write_raw(tmp_path, samples)
    batch = next(iter(_module(tmp_path, load_video=False).val_dataloader()))
    assert batch["latent"].shape == (2, 4, 11)
    assert torch.equal(batch["latent"][0, :, :10], latents[0]) and not batch["latent"][0, :, 10:].any()
    assert torch.equal(batch["latent"][1], latents[1])


def test_brace_and_list_specs(dataset):
    path, _ = dataset
    spec = str(path / "shard-{000000..000001}.tar")
    for shards in (spec, [str(path / "shard-000000.tar"), str(path / "shard-000001.tar")]):
        dm = FoleyDataModule(val_shards=shards, load_video=False, clip_seconds=0.5, batch_size=8, num_workers=0)
        assert next(iter(dm.val_dataloader()))["key"] == ["c0", "c1", "c2", "ntsc"]
    assert json.loads((path / "index.json").read_text())["total"] == 4


def test_url_specs_fsspec_file_and_pipe(dataset):
    fsspec = pytest.importorskip("fsspec")
    path, _ = dataset
    memory = fsspec.filesystem("memory")
    for name in ("shard-000000.tar", "shard-000001.tar"):
        memory.pipe(f"/foley-test/{name}", (path / name).read_bytes())
    specs = [
        "memory://foley-test/shard-{000000..000001}.tar",
        f"file://{path}/shard-000000.tar::pipe:cat {path}/shard-000001.tar",
    ]
    for spec in specs:
        dm = FoleyDataModule(val_shards=spec, load_video=False, clip_seconds=0.5, batch_size=8, num_workers=0)
        assert next(iter(dm.val_dataloader()))["key"] == ["c0", "c1", "c2", "ntsc"], spec
