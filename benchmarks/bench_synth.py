"""Speed of `foley synth`: clips/s and the extrapolated time for 1,000 clips of 8 s.

Runs the real ``synth`` (render + H.264 + FLAC + shard writing) on a sample of clips,
once per requested worker count, and a per-stage breakdown in this process. The
machine's load average is printed because shared machines make timings noisy.

    .venv/bin/python benchmarks/bench_synth.py                   # 24 clips, 8 s, 128 px, workers 1 and 2
    .venv/bin/python benchmarks/bench_synth.py --clips 60 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from foley.io.media import encode_audio_bytes, encode_video_bytes
from foley.synth.world import CATEGORIES, render_clip, synth


def stage_breakdown(clips: int, seconds: float, fps: float, size: int) -> dict[str, float]:
    """Mean CPU seconds per clip of rendering, video encoding and audio encoding (one process).

    CPU time rather than wall time: on a shared machine it is what the work costs, not
    how long it waited for a core.
    """
    totals = {"render": 0.0, "h264": 0.0, "flac": 0.0}
    for index in range(clips):
        start = time.process_time()
        clip = render_clip(index, 0, seconds, fps, size, 44100, categories=CATEGORIES)
        middle = time.process_time()
        encode_video_bytes(clip.frames, fps, threads=1)
        after_video = time.process_time()
        encode_audio_bytes(clip.audio, 44100)
        end = time.process_time()
        totals["render"] += middle - start
        totals["h264"] += after_video - middle
        totals["flac"] += end - after_video
    return {name: value / clips for name, value in totals.items()}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--breakdown-clips", type=int, default=6)
    args = parser.parse_args()

    print(f"cpus={os.cpu_count()} load average before={os.getloadavg()}")
    if args.breakdown_clips:
        stages = stage_breakdown(args.breakdown_clips, args.seconds, args.fps, args.size)
        per_clip = sum(stages.values()) * 8.0 / args.seconds
        print("CPU per clip, one process: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stages.items()))
        print(f"CPU-bound estimate for 1,000 x 8 s on 2 idle cores: {1000 * per_clip / 2 / 60:.1f} min")

    for workers in args.workers:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "synth"
            start, cpu_start = time.perf_counter(), cpu_seconds()
            synth(out, clips=args.clips, seconds=args.seconds, fps=args.fps, size=args.size, shard_size=100, workers=workers)
            elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
            size_mb = sum(p.stat().st_size for p in out.glob("*.tar")) / 1e6
        rate = args.clips / elapsed
        thousand = 1000 / rate * (8.0 / args.seconds)
        print(
            f"workers={workers}: {args.clips} clips x {args.seconds:g} s at {args.size} px {args.fps:g} fps in {elapsed:.1f} s wall "
            f"({cpu:.1f} s CPU incl. workers) -> {rate:.2f} clips/s; 1,000 x 8 s extrapolated: {thousand / 60:.1f} min wall; "
            f"{size_mb / args.clips:.2f} MB/clip; load average after={os.getloadavg()}"
        )


if __name__ == "__main__":
    main()
