"""Put new audio next to an untouched video stream (PyAV, no video re-encode).

The video packets of the source are copied byte for byte into a new MP4 (same codec
parameters, same timestamps); the source's own audio and any other streams are dropped
and the new waveform is encoded as one audio stream. AAC is the default because every
player reads it; FLAC-in-MP4 (lossless) and ALAC are options for listening tests. The new
audio starts at the first video frame's presentation time, which is time 0 of every
foley stream (see :mod:`foley.io.video`), so generated sound stays on its frames.
Audio is interleaved with the video packets in time order while muxing, and the output is
written atomically (temporary file + rename).
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from foley.io.atomic import atomic_path
from foley.io.media import MediaError

__all__ = ["mux_audio", "AudioCodec"]

logger = logging.getLogger(__name__)

AudioCodec = Literal["aac", "flac", "alac"]
_CHUNK = 4096
_LAYOUTS = {1: "mono", 2: "stereo"}


def _as_wave(audio: np.ndarray) -> np.ndarray:
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim != 2 or wave.shape[0] not in _LAYOUTS or wave.shape[1] == 0:
        raise MediaError(f"audio to mux must be (channels, samples) with 1 or 2 channels, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise MediaError("audio to mux contains NaN or infinite samples")
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0))


def mux_audio(
    video: str | os.PathLike[str],
    audio: np.ndarray,
    sample_rate: int,
    out: str | os.PathLike[str],
    codec: AudioCodec = "aac",
    bit_rate: int = 256_000,
) -> None:
    """Write ``out`` (MP4) = the first video stream of ``video`` copied untouched + ``audio``.

    Args:
        video: source video file (any container FFmpeg reads).
        audio: float ``(channels, samples)`` in [-1, 1], 1 or 2 channels; sample 0 plays with the
            first video frame.
        sample_rate: rate of ``audio`` in Hz.
        out: destination ``.mp4``; never the same file as ``video``.
        codec: ``"aac"`` (lossy, universal), ``"flac"`` or ``"alac"`` (lossless).
        bit_rate: AAC bit rate in bit/s (ignored for lossless codecs).

    Raises:
        MediaError: the source has no video stream or cannot be read, or its video codec cannot
            be stored in MP4.
    """
    if os.path.abspath(os.fspath(video)) == os.path.abspath(os.fspath(out)):
        raise MediaError(f"{out}: refusing to overwrite the input video; choose another output path")
    wave = _as_wave(audio)
    name = os.fspath(video)
    try:
        source = av.open(name, mode="r")
    except (av.FFmpegError, OSError) as error:
        raise MediaError(f"{name}: cannot open the video ({error})") from error
    with source, atomic_path(out) as tmp:
        if not source.streams.video:
            raise MediaError(f"{name}: the file has no video stream")
        video_in = source.streams.video[0]
        start = video_in.start_time
        offset = float(start * video_in.time_base) if start is not None and video_in.time_base else 0.0
        offset_samples = max(0, round(offset * sample_rate))
        try:
            with av.open(str(tmp), mode="w", format="mp4") as target:
                video_out = target.add_stream_from_template(video_in)
                audio_out = target.add_stream(codec, rate=sample_rate)
                audio_out.layout = _LAYOUTS[wave.shape[0]]
                audio_out.time_base = Fraction(1, sample_rate)
                if codec == "aac":
                    audio_out.bit_rate = bit_rate
                written = 0
                for packet in source.demux(video_in):
                    if packet.size == 0:  # demuxer flush marker, not data
                        continue
                    # Interleave in time: encode the audio that plays before this packet's decode time.
                    if packet.dts is not None and packet.time_base is not None:
                        until = round(float(packet.dts * packet.time_base) * sample_rate) - offset_samples
                        written = _encode(target, audio_out, wave, written, min(max(until, 0), wave.shape[1]), offset_samples, sample_rate)
                    packet.stream = video_out
                    target.mux(packet)
                _encode(target, audio_out, wave, written, wave.shape[1], offset_samples, sample_rate)
                target.mux(audio_out.encode(None))
        except av.FFmpegError as error:
            raise MediaError(
                f"{name}: cannot copy its video stream ({video_in.codec_context.name}) into MP4 with "
                f"{codec} audio ({error}); re-encode the video to H.264 first"
            ) from error


def _encode(target, stream, wave: np.ndarray, start: int, stop: int, offset: int, sample_rate: int) -> int:
    while start < stop:
        end = min(start + _CHUNK, stop)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:end]), format="fltp", layout=stream.layout.name)
        frame.sample_rate = sample_rate
        frame.pts = offset + start
        frame.time_base = Fraction(1, sample_rate)
        target.mux(stream.encode(frame))
        start = end
    return start
