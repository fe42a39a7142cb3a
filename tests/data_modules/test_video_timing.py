"""foley.io.video: frames looked up by presentation time, resizing, probing, errors."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from foley.io.media import encode_video_bytes, write_video
from foley.io.video import VideoError, VideoFile, probe_video, read_frames_at, resize_frames, stream_length, stream_times
from helpers import clips  # frame index coded in colour, exact ground truth


@pytest.mark.parametrize("source_fps", [Fraction(30000, 1001), Fraction(60), Fraction(25)])
@pytest.mark.parametrize("stream_fps,start", [(25.0, 0.0), (8.0, 0.37), (25.0, 1.2345)])
def test_stream_frame_shows_source_frame_on_screen(source_fps, stream_fps, start):
    seconds = 2.5
    frames = clips.index_frames(int(seconds * source_fps), 32, 32)
    data = encode_video_bytes(frames, source_fps, threads=1)
    duration = 1.0
    times = stream_times(start, duration, stream_fps)
    assert len(times) == stream_length(duration, stream_fps) == int(np.floor(duration * stream_fps + 1e-6))
    got = clips.decode_index(read_frames_at(data, times))
    # Source frame j is on screen during [j / fps, (j + 1) / fps).
    expected = np.floor(times * float(source_fps) + 1e-6).astype(int)
    np.testing.assert_array_equal(got, expected)


def test_variable_frame_rate_uses_real_timestamps(tmp_path):
    path = tmp_path / "vfr.mp4"
    stamps_ms = [0, 40, 80, 300, 320, 700, 1000]
    frames = clips.index_frames(len(stamps_ms), 32, 32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, pts in zip(frames, stamps_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video = VideoFile(path)
    np.testing.assert_allclose(video.starts, np.array(stamps_ms) / 1000, atol=1e-6)
    times = np.array([0.0, 0.039, 0.04, 0.299, 0.31, 0.69, 0.71, 0.99, 1.0, 5.0])
    expected = np.searchsorted(np.array(stamps_ms) / 1000, times + 1e-9, side="right") - 1
    np.testing.assert_array_equal(clips.decode_index(video.frames_at(times)), expected)


def test_resize_matches_torchvision_reference():
    rng = np.random.default_rng(0)
    portrait = rng.integers(0, 256, (3, 60, 34, 3), dtype=np.uint8)
    tensor = torch.from_numpy(portrait).permute(0, 3, 1, 2)
    # Sync stream: short side to 16, then the centre 16 x 16.
    ref = TF.center_crop(TF.resize(tensor, [16], interpolation=TF.InterpolationMode.BICUBIC, antialias=True), [16, 16])
    got = resize_frames(portrait, 16, "center")
    assert got.shape == (3, 3, 16, 16) and got.dtype == torch.uint8
    assert torch.equal(got, ref)
    ref_stretch = TF.resize(tensor, [20, 20], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(resize_frames(portrait, 20, "resize"), ref_stretch)


def test_center_crop_keeps_the_middle_of_a_wide_frame():
    # Left third red, middle third green, right third blue: a centre crop of the short side
    # must be (almost) pure green.
    frame = np.zeros((1, 30, 90, 3), dtype=np.uint8)
    frame[:, :, :30, 0] = frame[:, :, 30:60, 1] = frame[:, :, 60:, 2] = 255
    out = resize_frames(frame, 10, "center")[0].float()
    assert out[1, :, 2:8].min() >= 250 and out[0, :, 2:8].max() <= 5 and out[2, :, 2:8].max() <= 5


def test_probe_reports_size_rate_and_audio(tmp_path):
    frames = clips.index_frames(30, 48, 32)
    silent = tmp_path / "silent.mp4"
    write_video(silent, frames, Fraction(30000, 1001), threads=1)
    info = probe_video(silent)
    assert (info.width, info.height, info.num_frames, info.has_audio) == (32, 48, 30, False)
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-4)
    assert info.duration == pytest.approx(30 * 1001 / 30000, abs=1e-4)
    voiced = tmp_path / "voiced.mp4"
    write_video(voiced, frames, 30, audio=np.zeros((1, 44100), np.float32), sample_rate=44100, threads=1)
    assert probe_video(voiced.read_bytes()).has_audio


def test_bad_files_give_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4.*empty"):
        VideoFile(empty)
    with pytest.raises(VideoError, match="missing.mp4.*does not exist"):
        VideoFile(tmp_path / "missing.mp4")
    data = encode_video_bytes(clips.index_frames(10, 32, 32), 25, threads=1)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="truncated.mp4"):
        VideoFile(truncated)
    with pytest.raises(VideoError, match="cannot decode"):
        VideoFile(b"not a video at all" * 10, name="blob.mp4")
