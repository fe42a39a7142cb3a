"""foley app without a browser: upload checks, segments, the output mp4, the picture, examples, requests.

The page itself is driven in a real browser by tests/test_app_browser.py; here the parts behind
it are checked against ground truth: frame-index videos (helpers.clips) for the frames of a
re-encoded segment, the synthetic world's own event times for the picture's markers, and the
tiny real pipeline called directly for the generated audio.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest

from helpers.clips import decode_index, index_frames
from helpers.tiny_pipeline import tiny_real_pipeline

from foley.app import FoleyApp
from foley.app_media import (
    AppLimits,
    InputError,
    SyntheticExamples,
    channels_figure,
    check_upload,
    choose_segment,
    write_output_video,
)
from foley.cli import parse_tool_args
from foley.io.media import decode_audio_track, read_audio, write_audio, write_video
from foley.io.video import VideoFile, probe_video
from foley.synth.world import render_clip

SR = 44100
# AAC codes whole frames of 1024 samples: the encoder pads the last frame, and the decoder may
# return the encoder's priming frame too, so a decoded track is up to two frames longer than
# the waveform that was encoded (and never shorter).
AAC_SLACK = 2 * 1024
# A 24-bit wav holds multiples of 2^-23: libsndfile may truncate to the step below (an error
# under one step, 2^-23) and scales by 2^23 - 1 when writing but 2^23 when reading (a relative
# error of 2^-23).
PCM24_STEP = 2.0**-23


@pytest.fixture(scope="module")
def pipeline():
    pipe = tiny_real_pipeline(window_seconds=1.0, overlap_seconds=0.25)
    pipe.set_generation_params(steps=2, cfg=2.0)
    return pipe


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, dict]:
    """A 2 s synthetic bouncing-ball clip (25 fps, 64 px) and its metadata."""
    rendered = render_clip(3, 7, seconds=2.0, fps=25.0, size=64, category="bouncing_ball")
    path = tmp_path_factory.mktemp("clip") / "ball.mp4"
    write_video(path, rendered.frames, 25.0)
    return path, rendered.meta


def _packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def _no_frames_video(path: Path) -> None:
    """A Matroska file with a video stream that holds no frame (and a short audio track)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("aac", rate=SR)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = SR, 0
        for stream, item in ((audio, frame), (audio, None), (video, None)):
            for packet in stream.encode(item):
                container.mux(packet)


# ----------------------------------------------------------------- uploads and segments
def test_check_upload_reports_the_video(clip) -> None:
    path, _ = clip
    checked = check_upload(path, AppLimits())
    assert checked.name == "ball.mp4" and checked.codec == "h264" and checked.browser_playable
    assert (checked.info.num_frames, checked.info.fps, checked.info.width) == (50, 25.0, 64)
    assert checked.info.duration == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("kind, words", [
    ("text", "notes.mp4 is not a video: FFmpeg does not recognise it"),
    ("empty", "notes.mp4 is empty (0 bytes)"),
    ("audio", "notes.mp4 holds no video frames (it holds audio only)"),
    ("no_frames", "notes.mkv holds no video frames;"),
    ("missing", "no longer on the server; upload it again"),
])
def test_check_upload_refuses_what_is_not_a_video(tmp_path: Path, kind: str, words: str) -> None:
    path = tmp_path / ("notes.mkv" if kind == "no_frames" else "notes.mp4")
    if kind == "text":
        path.write_text("a text file renamed .mp4\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "audio":
        write_audio(tmp_path / "tone.wav", np.zeros((2, 4410), np.float32), SR)
        shutil.copy(tmp_path / "tone.wav", path)  # a wav under a video's name
    elif kind == "no_frames":
        _no_frames_video(path)
    with pytest.raises(InputError) as refused:
        check_upload(path, AppLimits())
    assert words in str(refused.value)


def test_check_upload_names_the_size_limit(clip) -> None:
    path, _ = clip
    size_mb = path.stat().st_size / 1e6
    limits = AppLimits(max_upload_mb=size_mb / 2)
    with pytest.raises(InputError) as refused:
        check_upload(path, limits)
    assert f"{size_mb:.3g} MB" in str(refused.value) and f"up to {limits.max_upload_mb:g} MB" in str(refused.value)
    assert "--max-upload-mb" in str(refused.value)
    assert check_upload(path, AppLimits(max_upload_mb=size_mb * 1.01)).name == "ball.mp4"


def test_choose_segment(clip) -> None:
    checked = check_upload(clip[0], AppLimits())
    limits = AppLimits(max_seconds=1.5)
    assert choose_segment(checked, 0.5, None, limits) == (0.5, 1.5)  # None and 0: to the end
    assert choose_segment(checked, 1.0, 0, limits) == (1.0, 1.0)
    assert choose_segment(checked, 0.25, 1.25, limits) == (0.25, 1.25)
    for start, duration, words in ((2.0, 0.5, "lies outside"), (-0.1, 1.0, "lies outside"),
                                   (1.5, 1.0, "runs past the end"), (0.0, 0.01, "too short"),
                                   (0.0, None, "at most 1.5 s per request")):
        with pytest.raises(InputError, match=words):
            choose_segment(checked, start, duration, limits)


# ----------------------------------------------------------------- the output mp4
def test_whole_playable_video_keeps_its_stream_untouched(clip, tmp_path: Path) -> None:
    path, _ = clip
    checked = check_upload(path, AppLimits())
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 2 * SR)).astype(np.float32)
    write_output_video(checked, 0.0, checked.info.duration, wave, SR, tmp_path / "out.mp4")
    assert _packets(tmp_path / "out.mp4") == _packets(path)
    decoded, rate = decode_audio_track(tmp_path / "out.mp4")
    assert rate == SR and decoded.shape[0] == 2 and 0 <= decoded.shape[1] - wave.shape[1] <= AAC_SLACK


def test_segment_is_reencoded_with_the_frames_of_its_times(tmp_path: Path) -> None:
    # 60 fps source whose frames show their index: the preview runs at 30 fps, so preview
    # frame i must show the source frame on screen at start + i / 30, i.e. index 60 * start + 2 i.
    source = tmp_path / "index.mp4"
    write_video(source, index_frames(180, 48, 64), 60)
    checked = check_upload(source, AppLimits())
    start, duration = 1.0, 1.5
    wave = np.zeros((2, round(duration * SR)), np.float32)
    write_output_video(checked, start, duration, wave, SR, tmp_path / "segment.mp4")
    preview = VideoFile(tmp_path / "segment.mp4")
    assert (len(preview), preview.fps, preview.height, preview.width) == (45, 30.0, 48, 64)
    assert decode_index(preview.frames(np.arange(45))).tolist() == [60 + 2 * i for i in range(45)]
    decoded, rate = decode_audio_track(tmp_path / "segment.mp4")
    assert rate == SR and decoded.shape[0] == 2 and 0 <= decoded.shape[1] - wave.shape[1] <= AAC_SLACK


def test_large_videos_are_previewed_at_480_pixels(tmp_path: Path) -> None:
    source = tmp_path / "wide.mp4"
    write_video(source, np.full((5, 540, 960, 3), 90, np.uint8), 25)
    checked = check_upload(source, AppLimits())
    # A part of it (the whole of a playable video keeps its stream, size included).
    write_output_video(checked, 0.04, 0.12, np.zeros((2, round(0.12 * SR)), np.float32), SR, tmp_path / "small.mp4")
    info = probe_video(tmp_path / "small.mp4")
    assert (info.width, info.height, info.num_frames) == (480, 270, 3)


# ----------------------------------------------------------------- the picture
def test_channels_figure_marks_the_true_onsets_inside_the_segment(clip) -> None:
    _, meta = clip
    onsets = [e["onset"] for e in meta["events"]]
    assert len(onsets) >= 2
    start, stop = onsets[0] - 0.05, onsets[-1] - 0.01  # the last onset lies outside
    wave = np.random.default_rng(1).normal(0, 0.1, (2, round((stop - start) * SR))).astype(np.float32)
    figure = channels_figure(wave, SR, start=start, events=meta["events"], title="ball")
    axes = figure.axes[:4]
    for ax in axes:
        marked = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
        assert marked == pytest.approx(onsets[:-1])
        assert ax.get_xlim() == pytest.approx((start, start + wave.shape[1] / SR))
    # Rows 0-1 plot the channels themselves at their video times.
    for row in (0, 1):
        line = next(line for line in axes[row].get_lines() if line.get_linestyle() == "-")
        np.testing.assert_array_equal(line.get_ydata(), wave[row])
        assert line.get_xdata()[0] == pytest.approx(start) and line.get_xdata()[1] - line.get_xdata()[0] == pytest.approx(1 / SR)
    assert f"{len(onsets) - 1} ground-truth onsets" in figure.texts[0].get_text()


def test_examples_are_recognised_by_their_bytes(tmp_path: Path) -> None:
    examples = SyntheticExamples(tmp_path / "examples", categories=("drum", "vehicle"), seconds=1.0, size=32)
    assert [e.name for e in examples] == ["drum", "vehicle"]
    drum = examples.examples[0]
    assert drum.events == render_clip(0, 0, seconds=1.0, fps=25.0, size=32, category="drum").meta["events"]
    copy = tmp_path / "upload" / "renamed.mp4"  # the page copies a chosen example into its upload folder
    copy.parent.mkdir()
    shutil.copy(drum.path, copy)
    assert examples.find(copy) is drum
    write_video(tmp_path / "other.mp4", np.zeros((25, 32, 32, 3), np.uint8), 25)
    assert examples.find(tmp_path / "other.mp4") is None and examples.find(tmp_path / "missing.mp4") is None


# ----------------------------------------------------------------- requests
@pytest.fixture()
def foley_app(pipeline, tmp_path: Path) -> FoleyApp:
    return FoleyApp(pipeline, tmp_path / "server", AppLimits(max_seconds=1.5), keep_seconds=600, examples=False)


def _upload(foley_app: FoleyApp, source: Path, name: str) -> Path:
    """Put ``source`` where the page puts an upload: a folder of its own in the server's folder."""
    folder = foley_app.workdir / f"upload-{name}"
    folder.mkdir()
    return Path(shutil.copy(source, folder / name))


def test_generate_writes_the_pipelines_audio_video_and_picture(foley_app: FoleyApp, pipeline, clip) -> None:
    upload = _upload(foley_app, clip[0], "My ball (1).mp4")
    steps: list[tuple[float, str]] = []
    result = foley_app.generate(upload, "a ball", "", seed=3, steps=2, cfg=2.0, start=0.5, duration=1.25,
                                progress=lambda fraction, text: steps.append((fraction, text)))
    assert result.ok, result.message
    assert "1.25 s of 44.1 kHz stereo for **My ball (1).mp4** (0.50–1.75 s)" in result.message
    assert [p.name for p in (result.video, result.audio, result.picture)] == [
        "My_ball_1_foley.mp4", "My_ball_1_foley.wav", "My_ball_1_foley.png"]
    expected = pipeline(upload, prompt="a ball", negative_prompt="", start=0.5, duration=1.25, seed=3, steps=2, cfg=2.0)
    wave, rate = read_audio(result.audio)
    assert rate == SR and wave.shape == (2, round(1.25 * SR))
    np.testing.assert_allclose(wave, expected.numpy(), rtol=PCM24_STEP, atol=PCM24_STEP)
    decoded, rate = decode_audio_track(result.video)
    assert rate == SR and decoded.shape[0] == 2 and 0 <= decoded.shape[1] - wave.shape[1] <= AAC_SLACK
    assert probe_video(result.video).num_frames == round(1.25 * 25)
    assert result.picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fractions = [fraction for fraction, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 3


def test_bad_requests_get_a_message_and_the_next_one_works(foley_app: FoleyApp, clip, tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("a text file renamed .mp4\n")
    bad = _upload(foley_app, tmp_path / "notes.mp4", "notes.mp4")
    result = foley_app.generate(bad)
    assert not result.ok and "notes.mp4 is not a video" in result.message
    assert not bad.exists() and not bad.parent.exists()  # a refused upload is deleted at once
    good = _upload(foley_app, clip[0], "ball.mp4")
    too_long = foley_app.generate(good)  # 2 s against a 1.5 s limit
    assert not too_long.ok and "at most 1.5 s per request" in too_long.message and "--max-seconds" in too_long.message
    for kwargs, words in (({"steps": 0}, "Steps must be a whole number from 1"), ({"seed": 1.5}, "Seed must be"),
                          ({"seed": -1}, "Seed must be"), ({"cfg": float("nan")}, "CFG must be"),
                          ({"cfg": "strong"}, "CFG must be"), ({"start": 5.0}, "lies outside")):
        answer = foley_app.generate(good, duration=1.0, **kwargs)
        assert not answer.ok and words in answer.message
    assert foley_app.generate(None).message.startswith("Upload a video")
    assert good.exists()
    assert foley_app.generate(good, duration=1.0).ok


def test_generate_reports_a_failing_model_and_keeps_serving(foley_app: FoleyApp, pipeline, clip) -> None:
    good = _upload(foley_app, clip[0], "ball.mp4")

    class Broken:
        settings, generation = pipeline.settings, pipeline.generation

        def __call__(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    foley_app.pipeline = Broken()
    result = foley_app.generate(good, duration=1.0)
    assert not result.ok and "**Generation failed** (RuntimeError: out of memory)" in result.message
    foley_app.pipeline = pipeline
    assert foley_app.generate(good, duration=1.0).ok


def test_examples_show_their_true_onsets(pipeline, tmp_path: Path) -> None:
    foley_app = FoleyApp(pipeline, tmp_path / "server", AppLimits(max_seconds=1.0), examples=True)
    example = foley_app.examples.examples[0]
    upload = _upload(foley_app, example.path, example.path.name)
    result = foley_app.generate(upload, duration=1.0)
    assert result.ok and f"Built-in example *{example.name}*" in result.message
    inside = [e for e in example.events if e["onset"] < 1.0]
    assert f"its {len(example.events)} true sound onsets" in result.message and inside


def test_sweep_deletes_old_uploads_and_outputs_only(foley_app: FoleyApp, clip) -> None:
    upload = _upload(foley_app, clip[0], "ball.mp4")
    result = foley_app.generate(upload, duration=1.0)
    assert result.ok
    assert foley_app.sweep() == []  # everything is younger than keep_seconds
    later = time.time() + foley_app.keep_seconds + 1
    removed = foley_app.sweep(now=later)
    assert sorted(removed) == sorted([upload.parent, result.video.parent])
    assert sorted(p.name for p in foley_app.workdir.iterdir()) == ["outputs"]


# ----------------------------------------------------------------- the page
def test_page_presets_the_models_defaults_and_runs_one_generation_at_a_time(pipeline, tmp_path: Path, monkeypatch) -> None:
    from foley.app import build_page

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "server"))  # as `foley app` does
    pipeline.set_generation_params(negative_prompt="speech")
    try:
        foley_app = FoleyApp(pipeline, tmp_path / "server", AppLimits(max_upload_mb=5, max_seconds=7), examples=False)
        page = build_page(foley_app)
    finally:
        pipeline.set_generation_params(negative_prompt="")
    by_id = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert (by_id["foley-steps"].value, by_id["foley-cfg"].value, by_id["foley-negative"].value) == (2, 2.0, "speech")
    assert by_id["foley-seed"].value == 0 and by_id["foley-duration"].value == 0
    [generate] = [fn for fn in page.fns.values() if fn.name == "run"]
    assert generate.concurrency_limit == 1
    assert [block.elem_id for block in generate.inputs] == [
        "foley-input", "foley-prompt", "foley-negative", "foley-seed", "foley-steps", "foley-cfg", "foley-start",
        "foley-duration"]
    assert [block.elem_id for block in generate.outputs] == ["foley-status", "foley-output", "foley-picture",
                                                             "foley-downloads"]
    texts = " ".join(getattr(block, "value", "") or "" for block in page.blocks.values() if type(block).__name__ == "Markdown")
    assert "up to 5 MB" in texts and "at most 7 s are generated per request" in texts


# ----------------------------------------------------------------- the command
def test_cli_options_and_localhost_default() -> None:
    function, kwargs = parse_tool_args("app", ["--model", "demo_out/model", "--port", "9000", "--max-upload-mb", "5",
                                               "--examples", "false"])
    assert function.__module__ == "foley.app" and function.__name__ == "app"
    assert kwargs == {"model": "demo_out/model", "host": "127.0.0.1", "port": 9000, "device": "auto",
                      "max_upload_mb": 5.0, "max_seconds": 60.0, "keep_minutes": 60.0, "examples": False, "temp_dir": None}
