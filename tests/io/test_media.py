import io
from fractions import Fraction
from pathlib import Path

import decord
import numpy as np
import pytest

from foley.io.media import (
    MediaError,
    as_fraction,
    decode_audio_track,
    encode_audio_bytes,
    encode_video_bytes,
    read_audio,
    write_audio,
    write_video,
)

SR = 44100


def _moving_square(frames: int, size: int = 64) -> np.ndarray:
    video = np.full((frames, size, size, 3), 30, np.uint8)
    for i in range(frames):
        x = 4 + i
        video[i, 20:44, x : x + 16] = (230, 40, 40)
        video[i, :8] = 10 + 6 * i  # grey per-frame tag: identifies which frame was decoded
    return video


def test_video_round_trip_decord(tmp_path: Path) -> None:
    video = _moving_square(30)
    wave = 0.4 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)
    path = tmp_path / "clip.mp4"
    write_video(path, video, 25.0, audio=np.stack([wave, 0.5 * wave]), sample_rate=SR)
    reader = decord.VideoReader(str(path))
    assert len(reader) == 30
    assert reader.get_avg_fps() == pytest.approx(25.0)
    times = reader.get_frame_timestamp(list(range(30)))[:, 0]
    np.testing.assert_allclose(times, np.arange(30) / 25.0, atol=1e-6)
    decoded = reader.get_batch(list(range(30))).asnumpy().astype(int)
    # Tags are 6 grey levels apart: a decoded frame is identified if its tag is off by less than
    # half of that. (Measured: 2.0 for every x264 thread count from 1 to 16, from limited-range
    # YUV rounding and compression; the old bound, atol=2, sat exactly on it.)
    tags = decoded[:, 1:6].mean(axis=(1, 2, 3))
    assert np.abs(tags - (10 + 6 * np.arange(30))).max() < 3
    for i in (0, 17, 29):  # the square's interior (away from chroma-subsampled edges)
        np.testing.assert_allclose(decoded[i, 24:40, 4 + i + 3 : 4 + i + 13], video[i, 24:40, 4 + i + 3 : 4 + i + 13], atol=12)
    assert np.abs(decoded - video).mean() < 3

    audio, rate = decode_audio_track(path)
    assert rate == SR and audio.shape[0] == 2 and audio.shape[1] >= SR
    # AAC keeps level and timing: the channel ratio survives and the tone is aligned.
    ref = np.stack([wave, 0.5 * wave])
    err = audio[:, 2048 : SR - 2048] - ref[:, 2048 : SR - 2048]
    assert np.sqrt(np.mean(err**2)) < 0.01
    assert np.sqrt(np.mean(audio[1] ** 2)) / np.sqrt(np.mean(audio[0] ** 2)) == pytest.approx(0.5, rel=0.02)


def test_ntsc_frame_timing_exact() -> None:
    data = encode_video_bytes(_moving_square(20), 30000 / 1001)
    reader = decord.VideoReader(io.BytesIO(data))
    assert len(reader) == 20
    times = reader.get_frame_timestamp(list(range(20)))[:, 0]
    np.testing.assert_allclose(times, np.arange(20) * 1001 / 30000, atol=1e-4)
    assert as_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert as_fraction("24000/1001") == Fraction(24000, 1001)


def test_video_rejects_bad_frames() -> None:
    with pytest.raises(MediaError, match="even"):
        encode_video_bytes(np.zeros((2, 15, 16, 3), np.uint8), 25)
    padded = encode_video_bytes(np.zeros((2, 15, 17, 3), np.uint8), 25, pad_odd=True)
    reader = decord.VideoReader(io.BytesIO(padded))
    assert reader[0].shape == (16, 18, 3)
    with pytest.raises(MediaError, match="uint8"):
        encode_video_bytes(np.zeros((2, 16, 16, 3), np.float32), 25)
    with pytest.raises(MediaError, match="sample_rate"):
        encode_video_bytes(np.zeros((2, 16, 16, 3), np.uint8), 25, audio=np.zeros((2, 100), np.float32))


def test_decode_audio_track_missing_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    write_video(path, _moving_square(5), 25)
    with pytest.raises(MediaError, match="no audio track"):
        decode_audio_track(path)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(MediaError, match="broken.mp4"):
        decode_audio_track(broken)


def test_decode_audio_track_resamples(tmp_path: Path) -> None:
    wave = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(48000) / 48000).astype(np.float32)
    path = tmp_path / "a.mp4"
    write_video(path, _moving_square(25), 25, audio=wave[None], sample_rate=48000)
    audio, rate = decode_audio_track(path, sample_rate=SR)
    assert rate == SR and audio.shape[0] == 1
    assert audio.shape[1] == pytest.approx(SR, abs=2000)
    spectrum = np.abs(np.fft.rfft(audio[0, 4096:36864]))
    peak_hz = np.argmax(spectrum) * SR / 32768
    assert peak_hz == pytest.approx(1000, abs=3)


@pytest.mark.parametrize("suffix", [".flac", ".wav"])
def test_audio_round_trip_24bit(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal((2, 4000)) * 1e-3).astype(np.float32)  # -60 dB signal
    wave[0, 0] = 0.9
    path = tmp_path / f"x{suffix}"
    write_audio(path, wave, SR)
    decoded, rate = read_audio(path)
    assert rate == SR and decoded.shape == (2, 4000) and decoded.dtype == np.float32
    assert np.max(np.abs(decoded - wave)) <= 2.0**-23 + 1e-9
    from_bytes, _ = read_audio(path.read_bytes())
    np.testing.assert_array_equal(from_bytes, decoded)
    with open(path, "rb") as handle:
        from_file, _ = read_audio(handle)
    np.testing.assert_array_equal(from_file, decoded)


def test_audio_encode_clips_and_validates(caplog: pytest.LogCaptureFixture) -> None:
    data = encode_audio_bytes(np.array([[0.5, 1.5, -2.0]], np.float32), SR)
    decoded, _ = read_audio(data)
    np.testing.assert_allclose(decoded[0], [0.5, 1.0, -1.0], atol=2.0**-22)
    assert "clipping" in caplog.text
    with pytest.raises(MediaError, match="channels, samples"):
        encode_audio_bytes(np.zeros((1000, 2), np.float32), SR)
    with pytest.raises(MediaError, match="suffix"):
        write_audio("x.mp3", np.zeros((1, 10), np.float32), SR)
    with pytest.raises(MediaError, match="cannot read"):
        read_audio(b"garbage")


@pytest.mark.parametrize("suffix", [".mov", ".mkv"])
def test_container_follows_suffix(tmp_path: Path, suffix: str) -> None:
    import av

    path = tmp_path / f"clip{suffix}"
    write_video(path, _moving_square(10), 25)
    with av.open(str(path)) as container:
        assert ("matroska" in container.format.name) == (suffix == ".mkv")
        assert container.streams.video[0].frames in (0, 10)  # matroska does not store a count
    assert len(decord.VideoReader(str(path))) == 10
    with pytest.raises(MediaError, match="suffix"):
        write_video(tmp_path / "clip.avi", _moving_square(2), 25)
