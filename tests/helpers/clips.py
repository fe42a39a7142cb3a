"""Hand-made clips with exact ground truth for the data-module tests.

Frame ``i`` of a clip shows its index in two colour channels (R = 16*(i % 16) + 8,
G = 16*(i // 16) + 8), which survives H.264 coding. A clip may carry one "event": from
``event_time`` on, a white square is drawn and the audio holds a full-scale click train.
"""

from __future__ import annotations

import json

import numpy as np

from foley.io.media import encode_audio_bytes, encode_video_bytes, frame_times


def index_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    index = np.arange(num_frames)
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[..., 0] = (16 * (index % 16) + 8)[:, None, None]
    frames[..., 1] = (16 * (index // 16) + 8)[:, None, None]
    return frames


def decode_index(frames: np.ndarray) -> np.ndarray:
    """Recover the source frame index from frames ``(T, H, W, 3)`` or ``(T, 3, H, W)``."""
    frames = np.asarray(frames)
    if frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    h, w = frames.shape[1:3]
    patch = frames[:, h // 2 - 2 : h // 2 + 2, 2:6].reshape(len(frames), -1, 3).astype(np.float64).mean(axis=1)
    low = np.clip(np.round((patch[:, 0] - 8) / 16), 0, 15)
    high = np.clip(np.round((patch[:, 1] - 8) / 16), 0, 15)
    return (high * 16 + low).astype(int)


def make_clip(
    seconds: float,
    fps: float,
    height: int = 64,
    width: int = 64,
    sample_rate: int = 44100,
    channels: int = 2,
    event_time: float | None = None,
    key: str = "clip",
    caption: str = "",
) -> dict:
    """Sample dict for ShardWriter.write plus the ground truth under ``"truth"``."""
    times = frame_times(int(round(seconds * float(fps))), fps)
    frames = index_frames(len(times), height, width)
    num_samples = int(round(seconds * sample_rate))
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    audio = (0.01 * rng.standard_normal((channels, num_samples))).astype(np.float32)
    if channels == 2:
        audio[1] *= 0.5  # tell the channels apart
    events = []
    if event_time is not None:
        lit = times >= event_time - 1e-9
        frames[lit, 4:16, width - 16 : width - 4] = 255
        onset = int(round(event_time * sample_rate))
        audio[:, onset : onset + 2000] = 0.9 * np.sign(np.sin(np.arange(min(2000, num_samples - onset)) * 0.3))
        events.append({"onset": event_time, "offset": event_time + 2000 / sample_rate, "type": "impact", "object_id": 0, "x": [[event_time, 0.8]]})
    meta = {"key": key, "caption": caption, "category": "test", "duration": seconds, "fps": float(fps), "sample_rate": sample_rate,
            "width": width, "height": height, "events": events, "source": {"generator": "tests"}}
    return {
        "mp4": encode_video_bytes(frames, fps, threads=1),
        "flac": encode_audio_bytes(audio, sample_rate),
        "json": meta,
        "truth": {"audio": audio, "frame_times": times, "sample_rate": sample_rate},
    }


def write_shards(out_dir, clips: list[dict], shard_size: int = 2) -> None:
    from foley.io.shards import ShardWriter

    with ShardWriter(out_dir, shard_size=shard_size) as writer:
        for clip in clips:
            writer.write(clip["json"]["key"], {k: v for k, v in clip.items() if k != "truth"})
