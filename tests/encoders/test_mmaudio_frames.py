"""MMAudio's frame sampling and resizing, against its own load_video (tests/fixtures/mmaudio/frames_reference).

The fixture (scripts/mmaudio_fixtures/encoders.py) holds small synthetic mp4s made with
foley.io.media (25, 24, 30 and 30000/1001 fps, and a variable-rate one whose first frame is at
40-130 ms), the source frames MMAudio's read_frames picks for its 8 and 25 fps streams, the
duration its load_video keeps, and SHA-256 digests of every resized frame it returns. All of it is
integer or exact: frame choice is compared index for index and pixels bit for bit.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from foley.io.decoded_frames import DecodedFrames
from foley.io.video import VideoFile, mmaudio_duration, mmaudio_stream_times, stream_length
from foley.pipeline import FoleyPipeline

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mmaudio" / "frames_reference.safetensors"
STREAMS = (("clip", 8.0, 384, "resize"), ("sync", 25.0, 224, "center"))


def _load() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURE), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, json.loads(handle.metadata()["videos"])


TENSORS, VIDEOS = _load()


def _video(name: str, backend: str = "pyav") -> VideoFile:
    return VideoFile(TENSORS[f"{name}.mp4"].numpy().tobytes(), name=name, backend=backend)


def _digests(frames: torch.Tensor) -> torch.Tensor:
    rows = [np.frombuffer(hashlib.sha256(f.contiguous().numpy().tobytes()).digest(), dtype=np.uint8) for f in frames]
    return torch.from_numpy(np.stack(rows))


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_frame_times_are_pyav_frame_time(name):
    # pts * num / den in float64, the way PyAV computes frame.time: equal to the last bit,
    # also when decord decodes (the times then come from PyAV's packets).
    expected = TENSORS[f"{name}.frame_times"].numpy()
    np.testing.assert_array_equal(_video(name).pts_times, expected)
    np.testing.assert_array_equal(_video(name, backend="auto").pts_times, expected)


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_kept_duration_matches_load_video(name):
    info = VIDEOS[name]
    kept = mmaudio_duration(_video(name).pts_times, info["requested_duration"])
    assert kept == info["kept_duration"]
    assert stream_length(kept, 8.0) == info["clip_frames"] and stream_length(kept, 25.0) == info["sync_frames"]


@pytest.mark.parametrize("name", sorted(VIDEOS))
@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_selected_source_frames_match_read_frames(name, backend):
    info, video = VIDEOS[name], _video(name, backend)
    for stream, fps, _, _ in STREAMS:
        reference = TENSORS[f"{name}.{stream}_indices"].numpy()  # every frame read_frames gave, before truncation
        instants = mmaudio_stream_times(0.0, info["requested_duration"], fps)[: len(reference)]
        np.testing.assert_array_equal(video.indices_at(instants, rule="mmaudio"), reference, err_msg=f"{name} {stream}")


def test_the_reference_rule_is_not_foleys_on_screen_rule():
    # 30 fps: MMAudio takes the first frame at or after each instant, foley's default the one on
    # screen; e.g. 0.125 s -> source frame 4 (0.133 s) vs frame 3 (0.100 s).
    video = _video("cfr30")
    reference = TENSORS["cfr30.clip_indices"].numpy()
    on_screen = video.indices_at(np.arange(len(reference)) / 8.0)
    assert reference[1] == 4 and on_screen[1] == 3
    # 25 fps: the 25-fps instants land on frame starts; repeated addition of 0.04 overshoots some
    # of them by an ulp, and MMAudio then takes the next frame: not every frame in turn.
    sync25 = TENSORS["cfr25.sync_indices"].numpy()
    assert (sync25 != np.arange(len(sync25))).any()
    np.testing.assert_array_equal(_video("cfr25").indices_at(mmaudio_stream_times(0.0, 2.0, 25.0)[: len(sync25)],
                                                             rule="mmaudio"), sync25)


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_resized_frames_are_bit_identical(name):
    # foley's pipeline stream (frame rule "mmaudio", torchvision's uint8 resize) against the
    # frames load_video returns: CLIP 384 x 384 stretched, sync short side 224 + centre crop.
    info, video = VIDEOS[name], _video(name)
    for stream, fps, size, crop in STREAMS:
        frames = FoleyPipeline._stream(video, 0.0, info["kept_duration"], fps, size, crop, "mmaudio")
        assert frames.shape == (info[f"{stream}_frames"], 3, size, size) and frames.dtype == torch.uint8
        expected = TENSORS[f"{name}.{stream}_digests"]
        mismatched = [i for i, (a, b) in enumerate(zip(_digests(frames), expected)) if not torch.equal(a, b)]
        assert not mismatched, f"{name} {stream}: frames {mismatched} differ from load_video's"


def test_decoded_frames_follow_the_same_rule():
    # Frames given as an array at a known rate: frame i starts at i / fps.
    array = np.zeros((50, 4, 4, 3), dtype=np.uint8)
    array[:, 0, 0, 0] = np.arange(50)
    frames = DecodedFrames(array, fps=30.0)
    instants = mmaudio_stream_times(0.0, 1.5, 8.0)
    got = frames.frames_at(instants, rule="mmaudio")[:, 0, 0, 0]
    np.testing.assert_array_equal(got, np.searchsorted(np.arange(50) / 30.0, instants, side="left"))
    assert got[1] == 4  # 0.125 s -> frame 4 at 0.1333 s (on screen: frame 3)
    assert frames.frames_at(instants)[1, 0, 0, 0] == 3
