"""Few-step generation on the synthetic world: distil the demo's generator, score 1, 2 and 4 steps.

The teacher is the demo's model (``python -m foley.demo --out DEMO_OUT``). This script

1. distils it (``foley fit --config configs/distill/fewstep.yaml --config configs/distill/demo.yaml``)
   on the demo's training features for ``--max_steps`` steps and records the time it took;
2. exports the student (``foley export --flow_ckpt``) into ``OUT/model`` (defaults: 4 steps, cfg 1);
3. generates the demo's held-out test clips, and the same clips with their frames shuffled in
   time, with the teacher at 25 steps (guided, the reference) and at its stored default, the
   teacher at 4, 2 and 1 guided steps (few steps without distillation), and the student at 1, 2
   and 4 steps, and scores each with the demo's evaluator (onset F1, precision, recall, sync
   offset, pan correlation) and by its log-mel distance to the 25-step teacher's sample of the
   same clip from the same noise;
4. writes ``OUT/report.json`` and ``OUT/report.md`` (target: the student's onset F1 at 4 steps
   >= 95 % of the 25-step teacher's, with the shuffled-frames baseline staying low).

    python benchmarks/bench_fewstep.py --demo_out demo_out --out bench_fewstep

Sampling speed at the small size (8 s) is ``benchmarks/bench_mmdit.py --fewstep``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
METRICS = ("onset_f1", "onset_precision", "onset_recall", "sync_offset", "pan_corr")

logger = logging.getLogger("bench_fewstep")


def _foley(*args: str, log: Path) -> None:
    from foley.demo import _foley as run

    run(*args, log=log)


def distil(demo: Path, out: Path, max_steps: int, batch_size: int, lr: float, log: Path) -> dict[str, Any]:
    """``foley fit`` of the student; returns its checkpoint, steps and times."""
    from foley.demo import config_file

    run_dir = out / "run"
    started, cpu = time.perf_counter(), os.times()
    _foley("fit", "--config", str(config_file("distill/fewstep.yaml")), "--config", str(config_file("distill/demo.yaml")),
           f"--model.init_args.init_from={demo / 'model'}", f"--data.init_args.train_shards={demo / 'features' / 'train'}",
           f"--trainer.max_steps={max_steps}", f"--data.init_args.batch_size={batch_size}",
           f"--model.init_args.optimizer.init_args.lr={lr}", f"--trainer.default_root_dir={run_dir}",
           "--trainer.enable_progress_bar=false", log=log)
    ended = os.times()
    checkpoint = sorted(run_dir.rglob("last.ckpt"))[-1]
    return {"checkpoint": str(checkpoint), "steps": max_steps, "batch_size": batch_size, "lr": lr,
            "wall_seconds": time.perf_counter() - started,
            "cpu_seconds": (ended.children_user + ended.children_system) - (cpu.children_user + cpu.children_system)}


def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate and score one variant on the video and shuffled-frame test clips (one thread)."""
    import torch

    from foley.demo import _export_test_videos, _score
    from foley.generate import generate_with
    from foley.pipeline import FoleyPipeline

    torch.set_num_threads(1)
    out = Path(spec["out"])
    videos, shuffled = out / "videos" / spec["name"], out / "videos" / f"{spec['name']}_shuffled"
    metas = _export_test_videos(Path(spec["test_shards"]), videos, shuffled, spec["seed"])
    pipeline = FoleyPipeline.from_pretrained(spec["model"])
    rows: dict[str, Any] = {}
    for label, source in (("video", videos), ("shuffled", shuffled)):
        target = out / "generated" / spec["name"] / label
        started = time.perf_counter()
        report = generate_with(pipeline, [source], target, steps=spec["steps"], cfg=spec["cfg"], seed=spec["seed"],
                               overwrite=True, progress=False)
        if report.failed:
            raise RuntimeError(f"{spec['name']}: generation failed: {report.failed}")
        rows[label] = _score(target, metas)
        rows[f"{label}_seconds_per_clip"] = (time.perf_counter() - started) / len(metas)
    return rows


def _evaluate_all(variants: dict[str, dict[str, Any]], out: Path, jobs: int) -> dict[str, dict[str, Any]]:
    """Each variant in its own one-thread process, ``jobs`` at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    pending, running, results = list(variants.items()), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            name, spec = pending.pop(0)
            result = out / "eval" / f"{name}.json"
            result.parent.mkdir(parents=True, exist_ok=True)
            spec = {**spec, "name": name, "result": str(result)}
            sink = open(out / "eval" / f"{name}.log", "wb")
            running[name] = (subprocess.Popen([sys.executable, __file__, "_eval", json.dumps(spec)], stdout=sink,
                                              stderr=subprocess.STDOUT, env=env), sink, result)
        for name, (process, sink, result) in list(running.items()):
            if process.poll() is None:
                continue
            sink.close()
            del running[name]
            if process.returncode != 0:
                raise RuntimeError(f"evaluating {name} failed; see {out / 'eval' / (name + '.log')}")
            results[name] = json.loads(result.read_text())
            logger.info("%s: onset F1 %.3f (shuffled %.3f)", name, results[name]["video"]["onset_f1"],
                        results[name]["shuffled"]["onset_f1"])
        time.sleep(1.0)
    return results


def mel_distance(generated: Path, reference: Path) -> float:
    """Mean L1 distance of log-mel spectrograms (mono mix) between two folders' wavs of the same clips.

    Every variant starts each clip from the same noise (same seed), so this measures how far a
    sampler's result lies from the 25-step teacher's own sample: what distillation should shrink.
    """
    import torch

    from foley.io.media import read_audio
    from foley.models.mel import LogMelSpectrogram

    mel = LogMelSpectrogram(sample_rate=44100, n_fft=2048, hop_length=512, win_length=2048, n_mels=128)
    distances = []
    for path in sorted(reference.glob("*.wav")):
        ours, _ = read_audio(generated / path.name)
        theirs, _ = read_audio(path)
        n = min(ours.shape[-1], theirs.shape[-1])
        a = mel(torch.from_numpy(ours[..., :n]).float().mean(0, keepdim=True))
        b = mel(torch.from_numpy(theirs[..., :n]).float().mean(0, keepdim=True))
        distances.append(float((a - b).abs().mean()))
    return sum(distances) / len(distances)


def _markdown(report: dict[str, Any]) -> str:
    def fmt(x: float) -> str:
        return "n/a" if x != x else f"{x:.3f}"

    lines = ["| sampler | steps | network passes | onset F1 | precision | recall | sync offset (s) | pan corr "
             "| F1, shuffled frames | log-mel L1 to the 25-step teacher's sample | s per 4-s clip |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["results"].items():
        spec = report["variants"][name]
        passes = spec["steps"] * (2 if spec["cfg"] != 1.0 else 1)
        video, shuffled = row["video"], row["shuffled"]
        lines.append(f"| {spec['label']} | {spec['steps']} | {passes} | {fmt(video['onset_f1'])} | "
                     f"{fmt(video['onset_precision'])} | {fmt(video['onset_recall'])} | {fmt(video['sync_offset'])} | "
                     f"{fmt(video.get('pan_corr', float('nan')))} | {fmt(shuffled['onset_f1'])} | "
                     f"{fmt(row['mel_l1_to_teacher_25'])} | {row['video_seconds_per_clip']:.2f} |")
    fit = report["fit"]
    ratio = report["ratio_4_steps_to_teacher_25"]
    lines += ["", f"{report['test_clips']} held-out clips of the demo's test set; the demo's evaluator. "
              f"Distillation: {fit['steps']} steps of batch {fit['batch_size']} in {fit['wall_seconds'] / 60:.1f} min "
              f"wall ({fit['cpu_seconds'] / 60:.1f} CPU min).",
              f"Student at 4 steps / teacher at 25 steps: onset F1 ratio {ratio:.3f} (target >= 0.95: "
              f"{'met' if ratio >= 0.95 else 'NOT met'})."]
    return "\n".join(lines) + "\n"


def run(ns: argparse.Namespace) -> dict[str, Any]:
    demo, out = Path(ns.demo_out), Path(ns.out)
    teacher = demo / "model"
    if not (teacher / "pipeline.json").is_file() or not (demo / "features" / "train").is_dir():
        raise SystemExit(f"{demo}: no finished demo (model/ and features/train); run `python -m foley.demo --out {demo}`")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    fit_json = out / "fit.json"
    if ns.reuse_fit and fit_json.is_file():
        fit = json.loads(fit_json.read_text())
    else:
        fit = distil(demo, out, ns.max_steps, ns.batch_size, ns.lr, log)
        fit_json.write_text(json.dumps(fit, indent=2))
    student = out / "model"
    _foley("export", "--flow_ckpt", fit["checkpoint"], "--out", str(student), "--overwrite", "true", log=log)
    teacher_defaults = json.loads((teacher / "pipeline.json").read_text())["generation"]["init_args"]
    cfg = float(teacher_defaults["cfg"])
    common = {"test_shards": str(demo / "data" / "test"), "out": str(out), "seed": ns.seed}
    variants = {
        "teacher_25": {**common, "label": f"teacher, Euler + CFG {cfg:g}", "model": str(teacher), "steps": 25, "cfg": cfg},
        "teacher_default": {**common, "label": f"teacher, Euler + CFG {cfg:g} (stored default)", "model": str(teacher),
                            "steps": int(teacher_defaults["steps"]), "cfg": cfg},
        **{f"teacher_{n}": {**common, "label": f"teacher, Euler + CFG {cfg:g}", "model": str(teacher), "steps": n, "cfg": cfg}
           for n in (4, 2, 1)},
        **{f"student_{n}": {**common, "label": "student (distilled guidance)", "model": str(student), "steps": n, "cfg": 1.0}
           for n in (4, 2, 1)},
    }
    results = _evaluate_all(variants, out, ns.jobs)
    for name, row in results.items():
        row["mel_l1_to_teacher_25"] = mel_distance(out / "generated" / name / "video", out / "generated" / "teacher_25" / "video")
    report = {"fit": fit, "variants": variants, "results": results,
              "test_clips": len(list((out / "generated" / "teacher_25" / "video").glob("*.wav"))),
              "ratio_4_steps_to_teacher_25": results["student_4"]["video"]["onset_f1"]
              / results["teacher_25"]["video"]["onset_f1"]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    sys.stdout.write(_markdown(report))
    return report


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_eval"]:
        spec = json.loads(argv[1])
        Path(spec["result"]).write_text(json.dumps(evaluate(spec), indent=2))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo_out", type=Path, default=Path("demo_out"), help="a finished demo run")
    parser.add_argument("--out", type=Path, default=Path("bench_fewstep"))
    parser.add_argument("--max_steps", type=int, default=600, help="distillation steps")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="evaluations run side by side (one thread each)")
    parser.add_argument("--reuse_fit", action="store_true", help="keep the distillation of an earlier run in --out")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
