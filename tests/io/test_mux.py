"""mux_audio: video packets copied byte for byte, new stereo audio stream, atomic, safe."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from foley.io.media import MediaError, decode_audio_track, write_video
from foley.io.mux import mux_audio

SR = 44100


def _frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    gen = np.random.default_rng(0)
    frames = gen.integers(0, 255, size=(count, height, width, 3), dtype=np.uint8)
    return frames


def _video_packets(path: Path) -> list[tuple[bytes, float | None, bool]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            (bytes(p), float(p.pts * p.time_base) if p.pts is not None else None, p.is_keyframe)
            for p in container.demux(stream)
            if p.size
        ]


@pytest.mark.parametrize("fps,with_audio", [(25, False), ("30000/1001", True)])
@pytest.mark.parametrize("codec", ["aac", "flac"])
def test_video_stream_is_copied_bit_exact_with_new_stereo_audio(tmp_path: Path, fps, with_audio: bool, codec: str) -> None:
    source = tmp_path / "in.mp4"
    frames = _frames(30)
    old_audio = np.zeros((1, SR), dtype=np.float32) if with_audio else None
    write_video(source, frames, fps, audio=old_audio, sample_rate=SR if with_audio else None)
    duration = 30 / (float(eval(str(fps))) if isinstance(fps, str) else fps)
    n = round(duration * SR)
    t = np.arange(n) / SR
    # Different content per ear: a 440 Hz tone on the left, 660 Hz at half level on the right.
    audio = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    out = tmp_path / "out.mp4"
    mux_audio(source, audio, SR, out, codec=codec)

    assert _video_packets(out) == _video_packets(source)
    with av.open(str(out)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        stream = container.streams.audio[0]
        assert stream.codec_context.name == codec
        assert stream.codec_context.sample_rate == SR and stream.codec_context.channels == 2
    decoded, rate = decode_audio_track(out)
    assert rate == SR and decoded.shape[0] == 2
    assert abs(decoded.shape[1] - n) <= 2048  # encoder frame padding at most
    level = np.sqrt((decoded[:, SR // 4 : SR // 2] ** 2).mean(axis=1))
    np.testing.assert_allclose(level, [0.5 / np.sqrt(2), 0.25 / np.sqrt(2)], rtol=0.05)
    if codec == "flac":  # lossless: the samples themselves come back (16-bit: one step is 2^-15 = 3.1e-5)
        np.testing.assert_allclose(decoded[:, :n], audio, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]  # no temporary left


def test_refuses_bad_inputs(tmp_path: Path) -> None:
    source = tmp_path / "in.mp4"
    write_video(source, _frames(5), 25)
    audio = np.zeros((2, SR), dtype=np.float32)
    with pytest.raises(MediaError, match="overwrite the input"):
        mux_audio(source, audio, SR, source)
    with pytest.raises(MediaError, match="channels"):
        mux_audio(source, np.zeros((3, 10), np.float32), SR, tmp_path / "o.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match="broken.mp4"):
        mux_audio(broken, audio, SR, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()
