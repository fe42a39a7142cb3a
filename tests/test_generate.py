"""foley generate: folder batch with a corrupt file, bit-exact video copy, skip/overwrite, exit status."""
from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from helpers.pipeline_fakes import tiny_pipeline

from foley.generate import collect_videos, generate, generate_with  # noqa: E402
from foley.io.media import decode_audio_track, read_audio, write_video  # noqa: E402
from foley.pipeline import FoleyPipeline  # noqa: E402

SR = 44100


def _packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    videos = tmp_path / "videos"
    videos.mkdir()
    gen = np.random.default_rng(0)
    # Odd frame rate and size, no audio track (the normal input).
    write_video(videos / "a_ntsc.mp4", gen.integers(0, 255, (30, 24, 40, 3), dtype=np.uint8), "30000/1001")
    # A video that carries an old mono audio track, which must be replaced.
    write_video(videos / "b_pal.mov", gen.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), 25,
                audio=np.zeros((1, int(0.8 * SR)), np.float32), sample_rate=SR)
    (videos / "c_broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (videos / "notes.txt").write_text("not a video; ignored")
    return videos


def test_collect_videos(folder: Path, tmp_path: Path) -> None:
    videos, problems = collect_videos([folder, folder / "a_ntsc.mp4", tmp_path / "missing.mp4"])
    assert [v.name for v in videos] == ["a_ntsc.mp4", "b_pal.mov", "c_broken.mp4"]
    assert problems == [(tmp_path / "missing.mp4", "no such file or folder")]


def test_folder_with_a_corrupt_file(folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="foley.generate"):
        report = generate_with(tiny_pipeline(), [folder], out, steps=2, progress=False)
    assert [p for p, _ in report.failed] == [folder / "c_broken.mp4"]
    assert "c_broken.mp4" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["a_ntsc.mp4", "a_ntsc.wav", "b_pal.mp4", "b_pal.wav"]
    for name, source, seconds in (("a_ntsc", "a_ntsc.mp4", 30 * 1001 / 30000), ("b_pal", "b_pal.mov", 0.8)):
        assert _packets(out / f"{name}.mp4") == _packets(folder / source)  # video stream bit-exact
        with av.open(str(out / f"{name}.mp4")) as container:
            assert len(container.streams.audio) == 1
            audio = container.streams.audio[0].codec_context
            assert audio.sample_rate == SR and audio.channels == 2
        wave, rate = read_audio(out / f"{name}.wav")
        assert rate == SR and wave.shape == (2, round(seconds * SR))
        muxed, _ = decode_audio_track(out / f"{name}.mp4")
        assert muxed.shape[0] == 2 and abs(muxed.shape[1] - wave.shape[1]) <= 2048


def test_existing_outputs_are_kept_unless_overwrite(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_ntsc.wav").write_bytes(b"keep me")
    report = generate_with(tiny_pipeline(), [folder / "a_ntsc.mp4"], out, steps=2, progress=False)
    assert report.skipped == [folder / "a_ntsc.mp4"] and not report.written
    assert (out / "a_ntsc.wav").read_bytes() == b"keep me"
    report = generate_with(tiny_pipeline(), [folder / "a_ntsc.mp4"], out, steps=2, overwrite=True, audio_format="flac", progress=False)
    assert sorted(p.name for p in report.written) == ["a_ntsc.flac", "a_ntsc.mp4"]


def test_exit_status_reports_failures_after_processing_all(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FoleyPipeline, "from_pretrained", classmethod(lambda cls, model, device="cpu", **kw: tiny_pipeline()))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        generate([str(folder)], out=out, model="model_dir", steps=2, device="cpu")
    assert exit_info.value.code == 1
    assert {p.name for p in out.iterdir()} == {"a_ntsc.mp4", "a_ntsc.wav", "b_pal.mp4", "b_pal.wav"}
    assert generate([str(folder / "a_ntsc.mp4")], out=tmp_path / "out2", model="model_dir", steps=2, device="cpu") == 1


def test_sampling_options_left_unset_are_the_models(folder: Path, tmp_path: Path) -> None:
    pipeline = tiny_pipeline()
    generate_with(pipeline, [folder / "a_ntsc.mp4"], tmp_path / "out", progress=False)
    generate_with(pipeline, [folder / "b_pal.mov"], tmp_path / "out", steps=3, cfg=2.0, progress=False)
    calls = pipeline.flow.calls
    # Unset options are not passed on: the generator fills in its own (stored) defaults.
    assert calls[0]["steps"] == 25 and calls[0]["cfg"] == 4.5  # the stand-in's own defaults
    assert calls[-1]["steps"] == 3 and calls[-1]["cfg"] == 2.0


def test_needs_a_model_and_videos_or_text_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model given"):
        generate([str(tmp_path)], out=tmp_path / "out")
    with pytest.raises(ValueError, match="not both"):
        generate([str(tmp_path)], out=tmp_path / "out", model="model_dir", flow_ckpt="f.ckpt")
    with pytest.raises(ValueError, match="no videos given"):
        generate([], out=tmp_path / "out", model="model_dir")
    with pytest.raises(ValueError, match="--duration"):
        generate(out=tmp_path / "out", model="model_dir", text_only=True)
    with pytest.raises(ValueError, match="do not pass videos"):
        generate([str(tmp_path)], out=tmp_path / "out", model="model_dir", text_only=True, duration=1.0)
