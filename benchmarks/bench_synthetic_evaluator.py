"""How well the exact synthetic-world evaluator separates right from wrong audio.

Scores ground-truth audio of synthetic clips against their own events, and against
corrupted versions: a clip from another seed (wrong events), the truth delayed by 30 / 60 /
100 ms, and the truth mixed to a centred mono (no pan). Prints one row per condition and
the evaluator's speed.

    python benchmarks/bench_synthetic_evaluator.py --clips 60 --seconds 4
"""

from __future__ import annotations

import argparse
import time

import torch

from foley.metrics.synthetic import SyntheticWorldMetric
from foley.synth.world import CATEGORIES, render_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sr = args.sample_rate
    conditions = ["truth", "other seed", "delay 30 ms", "delay 60 ms", "delay 100 ms", "centred mono"]
    scores = {name: SyntheticWorldMetric(categories=CATEGORIES) for name in conditions}
    seconds_scored = 0.0
    elapsed = 0.0
    for index in range(args.clips):
        clip = render_clip(index, seed=args.seed, seconds=args.seconds, fps=8.0, size=32, sample_rate=sr)
        other = render_clip(index, seed=args.seed + 1000, seconds=args.seconds, fps=8.0, size=32, sample_rate=sr)
        truth = torch.from_numpy(clip.audio)[None]
        batch = {"audio": truth, "meta": [clip.meta]}

        def delayed(ms: float) -> torch.Tensor:
            return torch.nn.functional.pad(truth, (round(ms / 1000 * sr), 0))[..., : truth.shape[-1]]

        variants = {
            "truth": truth,
            "other seed": torch.from_numpy(other.audio)[None][..., : truth.shape[-1]],
            "delay 30 ms": delayed(30),
            "delay 60 ms": delayed(60),
            "delay 100 ms": delayed(100),
            "centred mono": truth.mean(1, keepdim=True).expand(-1, 2, -1).contiguous(),
        }
        for name, audio in variants.items():
            start = time.perf_counter()
            scores[name].update(audio, batch, sr)
            elapsed += time.perf_counter() - start
            seconds_scored += args.seconds
    print(f"{args.clips} clips x {args.seconds} s at {sr} Hz, seed {args.seed}")
    print(f"{'condition':14s} {'onset F1':>9s} {'precision':>9s} {'recall':>7s} {'offset ms':>9s} {'pan corr':>8s}")
    for name in conditions:
        r = {k: float(v) for k, v in scores[name].compute().items()}
        print(f"{name:14s} {r['onset_f1']:9.3f} {r['onset_precision']:9.3f} {r['onset_recall']:7.3f} "
              f"{1000 * r['sync_offset']:9.1f} {r['pan_corr']:8.3f}")
    truth_scores = {k: float(v) for k, v in scores["truth"].compute().items()}
    print("per category (truth): " + ", ".join(
        f"{c} {truth_scores.get('onset_f1/' + c, float('nan')):.3f}" for c in CATEGORIES))
    print(f"evaluator speed: {seconds_scored / elapsed:.0f} s of audio per second (CPU, 1 process)")


if __name__ == "__main__":
    main()
