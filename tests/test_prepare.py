"""foley prepare on generated videos with odd properties; shards read back through the DataModule."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from foley.data_modules import FoleyDataModule
from foley.io.media import decode_audio_track, write_video
from foley.io.video import VideoFile
from foley.prepare import REPORT_NAME, prepare
from helpers import clips  # frame index coded in colour, shared with the data-module tests

SR = 44100


def _tone(channels: int, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]).astype(np.float32)
    wave[:, round(0.5 * rate) : round(0.5 * rate) + 300] = 0.9  # a click at exactly 0.5 s
    return wave


@pytest.fixture(scope="module")
def odd_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    ntsc = Fraction(30000, 1001)
    write_video(folder / "ntsc.mp4", clips.index_frames(69, 48, 64), ntsc, audio=_tone(2, 69 / float(ntsc), SR), sample_rate=SR, threads=1)
    write_video(folder / "portrait.mov", clips.index_frames(30, 64, 32), 25, audio=_tone(1, 1.2, 48000), sample_rate=48000, threads=1)
    write_video(folder / "silent.mp4", clips.index_frames(25, 32, 32), 25, threads=1)
    (folder / "empty.mp4").write_bytes(b"")
    good = (folder / "ntsc.mp4").read_bytes()
    (folder / "truncated.mkv").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not a video")
    return folder


def test_prepare_folder_of_odd_videos(odd_inputs, tmp_path):
    out = tmp_path / "shards"
    written = prepare([str(odd_inputs)], out, clip_seconds=1.0, min_seconds=0.5)
    report = json.loads((out / REPORT_NAME).read_text())
    # ntsc: 69 frames = 2.302 s -> clips at 0 and 1 s, the 0.302 s tail is too short; portrait: 1.2 s -> one clip.
    assert written == report["written"] == 3
    # Clip starts snap back to the frame on screen (1.0 s -> frame 29 at 0.968 s).
    assert sorted(c["key"] for c in report["clips"]) == ["ntsc-00000000", "ntsc-00000968", "portrait-00000000"]
    assert [round(c["start"], 6) for c in report["clips"]] == [0.0, round(29 * 1001 / 30000, 6), 0.0]
    reasons = {(entry["file"].rsplit("/", 1)[-1], entry.get("start")): entry["reason"] for entry in report["skipped"]}
    assert set(reasons) == {("silent.mp4", None), ("empty.mp4", None), ("truncated.mkv", None), ("ntsc.mp4", round(59 * 1001 / 30000, 6)), ("portrait.mov", 1.0)}
    assert "no audio track" in reasons[("silent.mp4", None)]
    assert "empty" in reasons[("empty.mp4", None)]
    assert "truncated.mkv" in reasons[("truncated.mkv", None)]
    assert "shorter than min_seconds" in reasons[("ntsc.mp4", round(59 * 1001 / 30000, 6))]
    assert sum(s["samples"] for s in report["shards"]) == 3
    assert not list(out.glob("*.tmp"))

    dm = FoleyDataModule(val_shards=str(out), clip_seconds=1.0, clip_size=16, sync_size=16, batch_size=4, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    rows = {key: row for row, key in enumerate(batch["key"])}
    assert batch["meta"][rows["portrait-00000000"]]["fps"] == 25.0
    assert batch["meta"][rows["ntsc-00000000"]]["fps"] == pytest.approx(30000 / 1001)
    # Mono 48 kHz source: one channel kept in the shard, duplicated in the batch, click still at 0.5 s.
    portrait = batch["audio"][rows["portrait-00000000"]].numpy()
    np.testing.assert_array_equal(portrait[0], portrait[1])
    assert np.argmax(np.abs(portrait[0]) > 0.6) / SR == pytest.approx(0.5, abs=2e-3)
    # Stereo source: channels stay distinct; the second clip starts 1 s in, after the click.
    ntsc0, ntsc1 = batch["audio"][rows["ntsc-00000000"]].numpy(), batch["audio"][rows["ntsc-00000968"]].numpy()
    assert np.argmax(np.abs(ntsc0[0]) > 0.6) / SR == pytest.approx(0.5, abs=2e-3)
    assert np.abs(ntsc1).max() < 0.45 and not np.allclose(ntsc0[0], ntsc0[1], atol=0.05)
    # The second clip starts at source frame 29; its 25 fps frame i shows source frame 29 + floor(i * 29.97 / 25).
    row = rows["ntsc-00000968"]
    assert int(batch["sync_mask"][row].sum()) == 25 and float(batch["seconds_total"][row]) == 1.0
    sync = batch["sync_frames"][row].permute(0, 2, 3, 1).numpy()
    expected = 29 + np.floor(np.arange(25) / 25.0 * 30000 / 1001 + 1e-6).astype(int)
    np.testing.assert_array_equal(clips.decode_index(sync), expected)


def test_prepared_clip_frames_are_exact(odd_inputs, tmp_path):
    out = tmp_path / "whole"
    prepare([str(odd_inputs / "portrait.mov")], out)
    dm = FoleyDataModule(val_shards=str(out), clip_seconds=8.0, load_video=False, batch_size=1, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert batch["key"] == ["portrait"] and batch["meta"][0]["height"] == 64 and batch["meta"][0]["width"] == 32
    source, _ = decode_audio_track(odd_inputs / "portrait.mov", sample_rate=SR)
    n = int(batch["audio_mask"][0].sum())
    np.testing.assert_allclose(batch["audio"][0, 0, :n].numpy(), source[0, :n], atol=1e-4)
    import tarfile

    with tarfile.open(out / "shard-000000.tar") as tar:
        mp4 = tar.extractfile("portrait.mp4").read()
    video = VideoFile(mp4)
    np.testing.assert_array_equal(clips.decode_index(video.frames(range(len(video)))), np.arange(30))


def test_manifest_with_captions_and_spans(odd_inputs, tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "video,text,t0,t1\n"
        f"{odd_inputs / 'ntsc.mp4'},a ticking clock,0.25,1.75\n"
        "missing.mp4,nothing,,\n"
    )
    out = tmp_path / "manifest-shards"
    assert prepare([str(manifest)], out, path_column="video", caption_column="text", start_column="t0", end_column="t1", min_seconds=1.0) == 1
    report = json.loads((out / REPORT_NAME).read_text())
    start = 7 * 1001 / 30000  # 0.25 s snaps back to the start of frame 7
    assert report["clips"][0]["start"] == pytest.approx(start, abs=1e-6) and report["clips"][0]["end"] == 1.75
    assert "does not exist" in report["skipped"][0]["reason"] and report["skipped"][0]["file"].endswith("missing.mp4")
    dm = FoleyDataModule(val_shards=str(out), clip_seconds=8.0, clip_size=16, sync_size=16, batch_size=1, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert batch["caption"] == ["a ticking clock"]
    assert float(batch["seconds_total"][0]) == pytest.approx(1.75 - start, abs=1e-3)
    # The click at 0.5 s of the source sits 0.5 - start seconds into the clip.
    assert np.argmax(np.abs(batch["audio"][0, 0].numpy()) > 0.6) / SR == pytest.approx(0.5 - start, abs=1e-3)


def test_nothing_written_exits_non_zero(odd_inputs, tmp_path):
    out = tmp_path / "none"
    with pytest.raises(SystemExit) as exit_info:
        prepare([str(odd_inputs / "silent.mp4"), str(odd_inputs / "empty.mp4")], out)
    assert exit_info.value.code == 1
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["written"] == 0 and len(report["skipped"]) == 2
    with pytest.raises(ValueError, match="no value in the path column 'path'"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"file": "x.mp4"}) + "\n")
        prepare([str(bad)], tmp_path / "bad-out")


def test_parallel_workers_and_downscaling_match_serial(odd_inputs, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    inputs = [str(odd_inputs / "ntsc.mp4"), str(odd_inputs / "portrait.mov"), str(odd_inputs / "empty.mp4")]
    prepare(inputs, serial, clip_seconds=1.0, min_seconds=0.5, max_short_side=32)
    prepare(inputs, parallel, clip_seconds=1.0, min_seconds=0.5, max_short_side=32, workers=2)
    reports = [json.loads((folder / REPORT_NAME).read_text()) for folder in (serial, parallel)]
    assert reports[0]["clips"] == reports[1]["clips"] and reports[0]["skipped"] == reports[1]["skipped"]
    assert len(reports[0]["clips"]) == 3 and len(reports[0]["skipped"]) == 3
    import tarfile

    with tarfile.open(parallel / "shard-000000.tar") as tar:
        metas = {m.name: json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")}
        ntsc = VideoFile(tar.extractfile("ntsc-00000000.mp4").read())
    # 64 x 48 -> short side 32 (even sizes, aspect kept); the 32 px wide portrait clip is left alone.
    assert (metas["ntsc-00000000.json"]["width"], metas["ntsc-00000000.json"]["height"]) == (42, 32)
    assert (ntsc.width, ntsc.height) == (42, 32)
    assert (metas["portrait-00000000.json"]["width"], metas["portrait-00000000.json"]["height"]) == (32, 64)
    np.testing.assert_array_equal(clips.decode_index(ntsc.frames(range(len(ntsc)))), np.arange(30))


def test_audio_stream_starting_late_stays_in_sync(tmp_path):
    """An audio track that starts 0.2 s after the video is placed on the video clock."""
    import av

    path, fps, rate = tmp_path / "late-audio.mp4", 25, SR
    wave = np.zeros((1, round(1.5 * rate)), np.float32)
    wave[0, round(0.5 * rate) : round(0.5 * rate) + 300] = 0.9  # click 0.5 s into the audio track
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for index in range(round(1.5 * fps)):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for offset in range(0, wave.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, offset : offset + 1024]), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = rate, offset + round(0.2 * rate), Fraction(1, rate)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
    out = tmp_path / "late"
    prepare([str(path)], out, min_seconds=0.5)
    dm = FoleyDataModule(val_shards=str(out), load_video=False, batch_size=1, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert np.argmax(np.abs(batch["audio"][0, 0].numpy()) > 0.5) / SR == pytest.approx(0.7, abs=2e-3)
