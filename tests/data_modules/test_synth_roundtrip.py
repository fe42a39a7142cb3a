"""foley synth -> shards -> FoleyDataModule, checked against the renderer's exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foley.data_modules import FoleyDataModule
from foley.io.video import resize_frames
from foley.synth.world import render_clip, synth

SECONDS, FPS, SIZE, SR = 2.0, 25.0, 64, 44100


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth(out, clips=4, seconds=SECONDS, seed=0, fps=FPS, size=SIZE, shard_size=2)
    truth = {}
    for index in range(4):
        clip = render_clip(index, 0, SECONDS, FPS, SIZE, SR)
        truth[clip.meta["key"]] = (clip, resize_frames(clip.frames, 32, "center").float())
    return out, truth


def _mse(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each frame ``(T, 3, H, W)`` against every reference frame -> ``(T, R)``."""
    return ((frames.float()[:, None] - reference[None]) ** 2).mean(dim=(2, 3, 4))


def _assert_frames_are_the_right_source_frames(frames: torch.Tensor, reference: torch.Tensor, start: float, fps: float) -> None:
    expected = np.floor((start + np.arange(len(frames)) / fps) * FPS + 1e-6).astype(int)
    errors = _mse(frames, reference)
    for row, index in enumerate(expected):
        own = errors[row, index]
        assert own < 30, f"frame {row}: far from source frame {index} (mse {own:.1f})"
        for neighbour in (index - 1, index + 1):
            # Where the neighbouring source frame looks different, it must match worse.
            if 0 <= neighbour < len(reference) and ((reference[neighbour] - reference[index]) ** 2).mean() > 4 * own + 2:
                assert errors[row, neighbour] > own, f"frame {row} looks like source frame {neighbour}, expected {index}"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_synth_round_trip(synth_data, num_workers):
    out, truth = synth_data
    dm = FoleyDataModule(
        train_shards=str(out), val_shards=str(out), clip_seconds=SECONDS, clip_size=32, sync_size=32,
        batch_size=2, num_workers=num_workers, shuffle_buffer=4,
    )
    batches = list(dm.val_dataloader())
    assert sorted(k for b in batches for k in b["key"]) == sorted(truth)
    for batch in batches:
        assert batch["audio"].shape == (2, 2, round(SECONDS * SR)) and batch["audio_mask"].all()
        assert batch["sync_frames"].shape == (2, 50, 3, 32, 32) and batch["clip_frames"].shape == (2, 16, 3, 32, 32)
        for row, key in enumerate(batch["key"]):
            clip, reference = truth[key]
            np.testing.assert_allclose(batch["audio"][row].numpy(), clip.audio, atol=1e-5)  # 24-bit FLAC
            assert batch["caption"][row] == clip.meta["caption"]
            assert batch["meta"][row]["events"] == clip.meta["events"]
            _assert_frames_are_the_right_source_frames(batch["sync_frames"][row], reference, 0.0, 25.0)
            _assert_frames_are_the_right_source_frames(batch["clip_frames"][row], reference, 0.0, 8.0)
    # Training crops: 1 s windows at random starts, still exact.
    dm = FoleyDataModule(train_shards=str(out), clip_seconds=1.0, clip_size=32, sync_size=32, batch_size=4, num_workers=num_workers, seed=3)
    batches = list(dm.train_dataloader())  # with workers, each worker fills its own batches
    assert sorted(k for b in batches for k in b["key"]) == sorted(truth)
    for batch in batches:
        for row, key in enumerate(batch["key"]):
            clip, reference = truth[key]
            start = float(batch["seconds_start"][row])
            first = round(start * SR)
            np.testing.assert_allclose(batch["audio"][row].numpy(), clip.audio[:, first : first + SR], atol=1e-5)
            _assert_frames_are_the_right_source_frames(batch["sync_frames"][row], reference, start, 25.0)


def test_visual_event_and_audio_onset_coincide(synth_data):
    """In random crops, the sync frame showing an impact and the audio attack of that impact are within one frame."""
    out, truth = synth_data
    checked = 0
    for seed in range(4):
        dm = FoleyDataModule(train_shards=str(out), clip_seconds=1.2, clip_size=32, sync_size=32, batch_size=4, num_workers=0, seed=seed)
        batch = next(iter(dm.train_dataloader()))
        for row, key in enumerate(batch["key"]):
            clip, reference = truth[key]
            if clip.meta["category"] not in ("bouncing_ball", "drum"):
                continue
            start = float(batch["seconds_start"][row])
            mono = batch["audio_mono"][row].numpy()
            for event, source_event in zip(batch["meta"][row]["events"], clip.meta["events"]):
                onset = event["onset"]
                assert onset == pytest.approx(source_event["onset"] - start)
                if not 0.1 <= onset <= 1.1:
                    continue
                # Visual: the stream frame that looks most like the source frame of the impact.
                # Searched within +-0.2 s: a drum hit looks the same at every hit.
                event_frame = round(source_event["onset"] * FPS)
                first_frame = max(0, round((onset - 0.2) * 25.0))
                candidates = batch["sync_frames"][row, first_frame : round((onset + 0.2) * 25.0)]
                visual_time = (first_frame + int(_mse(candidates, reference[event_frame : event_frame + 1])[:, 0].argmin())) / 25.0
                # Audio: first sample of the attack, found from the waveform alone.
                lo, hi = round((onset - 0.1) * SR), round((onset + 0.1) * SR)
                window = np.abs(mono[lo:hi])
                audio_time = (lo + int(np.argmax(window > 0.5 * window.max()))) / SR
                assert abs(visual_time - audio_time) <= 1 / 25.0, (key, start, onset, visual_time, audio_time)
                checked += 1
    assert checked >= 3
