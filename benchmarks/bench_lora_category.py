"""Teach a trained model a sound it never heard: LoRA on a held-out synthetic category.

The base is the demo's model (stages 1-3 at demo sizes, ``python -m foley.demo --out DEMO_OUT``),
trained on the default synthetic world, which has no bells. This script

1. synthesises ``--clips`` clips of the held-out ``bell`` category (a bell struck by a hammer,
   ``foley synth --categories '[bell]'``) to train on and ``--test_clips`` more to score;
2. extracts their features with the base's frozen encoders and codec (``foley extract`` with
   ``configs/finetune/lora.yaml`` and ``init_from``);
3. trains a LoRA adapter (``configs/finetune/lora.yaml`` + ``configs/finetune/demo.yaml``) until
   ``--budget`` CPU seconds of training are spent (process CPU time, all threads; one thread);
4. fully fine-tunes the same generator on the same data within the same CPU budget (same config,
   ``adapter: null``, so every generator weight trains), for the forgetting comparison;
5. generates the bell test videos and ``--world_clips`` held-out clips of the default world (the
   six default categories) with the base, the base + adapter (applied unmerged, ``foley.adapters.load_adapter``)
   and the fully fine-tuned generator, and scores onset F1 per category with the exact evaluator;
6. writes ``OUT/report.json`` and ``OUT/report.md`` (targets: bell F1 >= 0.8, every other
   category within 0.05 of the base, trainable parameters < 5 %; adapter file size).

    python benchmarks/bench_lora_category.py --demo_out demo_out --out bench_lora

The generation and scoring are the demo's own (``foley.demo``: test-video export, evaluator).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "bell"

logger = logging.getLogger("bench_lora_category")


def _configs() -> list[str]:
    from foley.demo import config_file

    return ["--config", str(config_file("finetune/lora.yaml")), "--config", str(config_file("finetune/demo.yaml"))]


def _foley(*args: str, log: Path) -> None:
    from foley.demo import _foley as run

    run(*args, log=log)


def _holds(folder: Path, clips: int) -> bool:
    """``folder`` already holds a synthetic set of ``clips`` clips (an earlier run's, reused)."""
    index = folder / "index.json"
    return index.is_file() and json.loads(index.read_text()).get("total") == clips


# ------------------------------------------------------------------------------------- fit
def fit_with_budget(args: list[str], budget: float, out_json: Path, checkpoint: Path) -> None:
    """``foley fit`` in this process, stopped once training has used ``budget`` CPU seconds."""
    import torch
    from lightning.pytorch import Callback

    from foley.adapters.lora import trainable_fraction
    from foley.cli import FoleyCLI

    class CpuBudget(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.cpu, self.wall = time.process_time(), time.perf_counter()

        def on_train_batch_end(self, trainer: Any, *rest: Any) -> None:
            if time.process_time() - self.cpu >= budget:
                trainer.should_stop = True

    torch.set_num_threads(1)
    budget_callback = CpuBudget()
    cli = FoleyCLI(args=args, run=False)
    cli.trainer.callbacks.append(budget_callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(checkpoint)
    trainable, total = trainable_fraction(cli.model.network)
    adapter = cli.model.adapter_settings
    if adapter is not None:
        trainable = sum(p.numel() for n, p in cli.model.network.named_parameters() if ".lora_" in n)
        total = sum(p.numel() for n, p in cli.model.network.named_parameters() if ".lora_" not in n)
    report = {
        "steps": int(cli.trainer.global_step),
        "cpu_seconds": time.process_time() - budget_callback.cpu,
        "wall_seconds": time.perf_counter() - budget_callback.wall,
        "trainable_parameters": int(trainable),
        "generator_parameters": int(total),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "checkpoint": str(checkpoint),
        "checkpoint_bytes": checkpoint.stat().st_size,
    }
    out_json.write_text(json.dumps(report, indent=2))


def _fit_subprocesses(fits: dict[str, list[str]], budget: float, out: Path, log: Path,
                      reuse: bool = False) -> dict[str, dict[str, Any]]:
    """Run the fits side by side (each in its own one-thread process, each stopped by its own CPU budget)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running: dict[str, tuple[subprocess.Popen, Path, Any]] = {}
    for name, args in fits.items():
        result = out / "runs" / name / "fit.json"
        checkpoint = out / "runs" / name / "final.ckpt"
        if reuse and result.is_file() and checkpoint.is_file():
            continue
        result.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "_fit", "--budget", str(budget), "--result", str(result),
               "--checkpoint", str(checkpoint), "--", *args]
        sink = open(out / "runs" / name / "fit.log", "wb")
        with open(log, "ab") as main_log:
            main_log.write(("$ " + " ".join(cmd) + "\n").encode())
        running[name] = (subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env), result, sink)
    for name, (process, _, sink) in running.items():
        code = process.wait()
        sink.close()
        if code != 0:
            raise RuntimeError(f"{name} fit failed ({code}); see {out / 'runs' / name / 'fit.log'}")
    return {name: json.loads((out / "runs" / name / "fit.json").read_text()) for name in fits}


# ---------------------------------------------------------------------------- evaluation
def _generate_and_score(pipeline: Any, videos: Path, metas: list[dict], out: Path, steps: int, cfg: float,
                        seed: int) -> dict[str, float]:
    from foley.demo import _score
    from foley.generate import generate_with

    report = generate_with(pipeline, [videos], out, steps=steps, cfg=cfg, seed=seed, overwrite=True, progress=False)
    if report.failed:
        raise RuntimeError(f"generation failed: {report.failed}")
    return _score(out, metas)


def _f1_rows(scores: dict[str, float]) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in scores.items() if k.startswith("onset_f1/") and v == v}


def evaluate_variant(variant: str, base_model: Path, adapter: Path, full_checkpoint: Path,
                     sets: dict[str, tuple[Path, list[dict]]], out: Path, steps: int, cfg: float, seed: int) -> dict[str, float]:
    """Onset F1 per category of one variant: ``base``, ``lora`` (base + adapter, unmerged) or ``full``."""
    import torch

    from foley.adapters.folder import load_adapter
    from foley.pipeline import FoleyPipeline
    from foley.stages.flow_module import FlowModule

    torch.set_num_threads(1)
    pipeline = FoleyPipeline.from_pretrained(base_model)
    if variant == "lora":
        load_adapter(pipeline, adapter, name="bell")
    elif variant == "full":
        full = FlowModule.load_from_checkpoint(full_checkpoint, map_location="cpu", weights_only=True)
        pipeline.flow.network = full.inference_network.eval()
    rows: dict[str, float] = {}
    for name, (videos, metas) in sets.items():
        started = time.perf_counter()
        scores = _generate_and_score(pipeline, videos, metas, out / "generated" / variant / name, steps, cfg, seed)
        rows.update(_f1_rows(scores))
        logger.info("%s on %s: %s (%.0f s)", variant, name, {k: round(v, 3) for k, v in _f1_rows(scores).items()},
                    time.perf_counter() - started)
    return rows


def evaluate(base_model: Path, adapter: Path, full_checkpoint: Path, sets: dict[str, Path], out: Path,
             steps: int, cfg: float, seed: int, log: Path) -> dict[str, Any]:
    """The three variants side by side, one process each (see :func:`evaluate_variant`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running = {}
    for variant in ("base", "lora", "full"):
        result = out / "eval" / f"{variant}.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        spec = {"variant": variant, "base_model": str(base_model), "adapter": str(adapter),
                "full_checkpoint": str(full_checkpoint), "sets": {k: str(v) for k, v in sets.items()},
                "out": str(out), "steps": steps, "cfg": cfg, "seed": seed, "result": str(result)}
        sink = open(out / "eval" / f"{variant}.log", "wb")
        running[variant] = (subprocess.Popen([sys.executable, __file__, "_eval", json.dumps(spec)], stdout=sink,
                                             stderr=subprocess.STDOUT, env=env), sink)
    for variant, (process, sink) in running.items():
        code = process.wait()
        sink.close()
        if code != 0:
            raise RuntimeError(f"evaluating {variant} failed ({code}); see {out / 'eval' / (variant + '.log')}")
    return {variant: json.loads((out / "eval" / f"{variant}.json").read_text()) for variant in running}


def _eval_main(spec: dict[str, Any]) -> None:
    from foley.demo import _export_test_videos

    sets = {}
    for name, shards in spec["sets"].items():
        videos = Path(spec["out"]) / "videos" / name
        # Writes the same files in every process (deterministic); each reads its own metas.
        metas = _export_test_videos(Path(shards), videos.with_name(f"{name}_{spec['variant']}"),
                                    videos.with_name(f"{name}_{spec['variant']}_shuffled"), spec["seed"])
        sets[name] = (videos.with_name(f"{name}_{spec['variant']}"), metas)
    rows = evaluate_variant(spec["variant"], Path(spec["base_model"]), Path(spec["adapter"]),
                            Path(spec["full_checkpoint"]), sets, Path(spec["out"]), spec["steps"], spec["cfg"], spec["seed"])
    Path(spec["result"]).write_text(json.dumps(rows, indent=2))


# -------------------------------------------------------------------------------- report
def _markdown(report: dict[str, Any]) -> str:
    f1 = report["onset_f1"]
    categories = [CATEGORY] + sorted(c for c in f1["base"] if c != CATEGORY)
    lines = ["| category | base | base + LoRA | Δ LoRA | full fine-tune | Δ full |", "|---|---|---|---|---|---|"]
    for c in categories:
        b, lo, fu = f1["base"].get(c, float("nan")), f1["lora"].get(c, float("nan")), f1["full"].get(c, float("nan"))
        lines.append(f"| {c}{' (new)' if c == CATEGORY else ''} | {b:.3f} | {lo:.3f} | {lo - b:+.3f} | {fu:.3f} | {fu - b:+.3f} |")
    lora, full = report["fits"]["lora"], report["fits"]["full"]
    lines += [
        "",
        f"Training data of both fits: {report['clips']} bell clips read {report['bell_weight']}x per pass"
        + (f" and {report['replay_clips']} replay clips of the default world" if report["replay_clips"] else "")
        + f"; other categories scored on {report['world_clips'] or 'the demo test set'} held-out clips.",
        f"LoRA: rank {report['rank']}, {lora['trainable_parameters']:,} trainable parameters "
        f"({100 * report['trainable_fraction']:.2f} % of the generator's {lora['generator_parameters']:,}); "
        f"{lora['steps']} steps in {lora['cpu_seconds']:.0f} CPU s ({lora['wall_seconds']:.0f} s wall), peak RSS "
        f"{lora['peak_rss_mb']:.0f} MB; adapter folder {report['adapter_bytes'] / 1024:.1f} KiB, checkpoint "
        f"{lora['checkpoint_bytes'] / 1024:.1f} KiB.",
        f"Full fine-tune: {full['trainable_parameters']:,} trainable parameters, {full['steps']} steps in "
        f"{full['cpu_seconds']:.0f} CPU s ({full['wall_seconds']:.0f} s wall), peak RSS {full['peak_rss_mb']:.0f} MB, "
        f"checkpoint {full['checkpoint_bytes'] / 1024:.1f} KiB.",
        "",
        "Targets: new category F1 >= 0.8: " + ("met" if report["targets"]["new_category"] else "NOT met")
        + f"; other categories within 0.05 of the base: {'met' if report['targets']['others_kept'] else 'NOT met'}"
        + f" (largest drop {report['largest_drop_lora']:+.3f} with LoRA, {report['largest_drop_full']:+.3f} with full fine-tuning)"
        + f"; trainable < 5 %: {'met' if report['targets']['trainable'] else 'NOT met'}.",
    ]
    return "\n".join(lines) + "\n"


def run(ns: argparse.Namespace) -> dict[str, Any]:
    from foley.demo import DemoSettings

    started = time.perf_counter()
    demo, out = Path(ns.demo_out), Path(ns.out)
    base_model = demo / "model"
    if not (base_model / "pipeline.json").is_file():
        raise SystemExit(f"{base_model}: no model folder; run `python -m foley.demo --out {demo}` first")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    settings = DemoSettings()
    seconds, size = ns.seconds or settings.seconds, settings.size
    data = {}
    for split, clips, seed in (("train", ns.clips, 100), ("test", ns.test_clips, 101)):
        data[split] = out / "data" / f"{CATEGORY}_{split}"
        if not _holds(data[split], clips):
            _foley("synth", "--out", str(data[split]), "--clips", str(clips), "--seconds", str(seconds), "--seed", str(seed),
                   "--size", str(size), "--categories", json.dumps([CATEGORY]), "--shard_size", "64", "--workers", "1",
                   "--overwrite", "true", log=log)
    # The other categories are scored on a larger held-out set of the default world than the
    # demo's 32 test clips (5 lamp clips there hold 13 onsets: one onset moves F1 by ~0.04, as
    # much as the 0.05 the target allows).
    world = out / "data" / "world_test"
    if ns.world_clips and not _holds(world, ns.world_clips):
        _foley("synth", "--out", str(world), "--clips", str(ns.world_clips), "--seconds", str(seconds), "--seed", "102",
               "--size", str(size), "--shard_size", "64", "--workers", "1", "--overwrite", "true", log=log)
    sets = {"bell_test": data["test"], "world_test": world if ns.world_clips else demo / "data" / "test"}
    if ns.codec_ceiling:
        rows = codec_ceiling(base_model, sets)
        (out / "codec_ceiling.json").write_text(json.dumps(rows, indent=2))
        sys.stdout.write(f"codec round trip of the true audio, onset F1: {json.dumps(rows)}\n")
        return {"codec_ceiling": rows}
    init = f"--model.init_args.init_from={base_model}"
    # Replay: clips of the default world (the base's own domain, not the scoring clips) mixed
    # into the adapter's training set, so that it learns the bell where a bell is on screen
    # instead of "there is always a bell ringing" (which gives sound to silent clips).
    if ns.replay_clips:
        data["replay"] = out / "data" / "world_replay"
        if not _holds(data["replay"], ns.replay_clips):
            _foley("synth", "--out", str(data["replay"]), "--clips", str(ns.replay_clips), "--seconds", str(seconds),
                   "--seed", "103", "--size", str(size), "--shard_size", "64", "--workers", "1", "--overwrite", "true",
                   log=log)
    features = {}
    counts = {"train": ns.clips, "replay": ns.replay_clips}
    for split in ("train", "replay") if ns.replay_clips else ("train",):
        features[split] = out / "features" / data[split].name
        if not (ns.reuse_fits and _holds(features[split], counts[split])):
            _foley("extract", "--fit_config", str(_configs()[1]), "--shards", str(data[split]), "--out",
                   str(features[split]),
                   "--overrides", json.dumps([*_configs()[2:], init, f"--data.init_args.clip_seconds={seconds}"]),
                   "--num_workers", "0", "--accelerator", "cpu", "--devices", "1", "--overwrite", "true", log=log)
    # Each shard folder is one stream of the shuffled mix; listing the bell's `bell_weight` times
    # reads it that many times per epoch.
    train_shards = [str(features["train"])] * ns.bell_weight + ([str(features["replay"])] if ns.replay_clips else [])
    common = [*_configs(), init, f"--data.init_args.train_shards={json.dumps(train_shards)}", "--trainer.max_steps=100000",
              f"--data.init_args.clip_seconds={seconds}",
              f"--data.init_args.batch_size={ns.batch_size}", f"--seed_everything={ns.seed}",
              "--trainer.enable_checkpointing=false", "--trainer.logger=false", "--trainer.callbacks=[]"]
    fits = _fit_subprocesses({
        "lora": [*common, f"--model.init_args.adapter.rank={ns.rank}", f"--model.init_args.adapter.alpha={ns.rank}",
                 f"--model.init_args.optimizer.init_args.lr={ns.lr}",
                 *(["--model.init_args.lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR",
                     f"--model.init_args.lr_scheduler.init_args.T_max={ns.cosine_steps}"] if ns.cosine_steps else []),
                 *([f"--model.init_args.adapter.targets={ns.targets}"] if ns.targets else [])],
        "full": [*common, "--model.init_args.adapter=null", f"--model.init_args.optimizer.init_args.lr={ns.full_lr}"],
    }, ns.budget, out, log, ns.reuse_fits)
    adapter = out / "adapter"
    _foley("export", "--flow_ckpt", fits["lora"]["checkpoint"], "--out", str(adapter), "--overwrite", "true", log=log)
    adapter_bytes = sum(p.stat().st_size for p in adapter.rglob("*") if p.is_file())

    f1 = evaluate(base_model, adapter, Path(fits["full"]["checkpoint"]), sets, out, ns.steps, ns.cfg, ns.seed, log)
    others = [c for c in f1["base"] if c != CATEGORY]
    drop = {v: min((f1[v][c] - f1["base"][c] for c in others), default=0.0) for v in ("lora", "full")}
    fraction = fits["lora"]["trainable_parameters"] / fits["lora"]["generator_parameters"]
    report = {
        "command": "python benchmarks/bench_lora_category.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores ({_cpu_name()}), shared",
        "demo_out": str(demo), "clips": ns.clips, "test_clips": ns.test_clips, "world_clips": ns.world_clips, "replay_clips": ns.replay_clips, "bell_weight": ns.bell_weight, "budget_cpu_seconds": ns.budget,
        "rank": ns.rank, "lr": ns.lr, "targets": ns.targets or "configs/finetune/lora.yaml", "full_lr": ns.full_lr, "steps": ns.steps, "cfg": ns.cfg,
        "fits": fits, "adapter_bytes": adapter_bytes, "trainable_fraction": fraction, "onset_f1": f1,
        "largest_drop_lora": drop["lora"], "largest_drop_full": drop["full"],
        "targets": {"new_category": f1["lora"].get(CATEGORY, 0.0) >= 0.8, "others_kept": drop["lora"] >= -0.05,
                    "trainable": fraction < 0.05},
        "wall_seconds": time.perf_counter() - started,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    sys.stdout.write(_markdown(report))
    return report


def codec_ceiling(base_model: Path, sets: dict[str, Path]) -> dict[str, float]:
    """Onset F1 per category of the test clips' true mono mix after the base's codec round trip
    (encode, decode, vocode): what any generator can reach through this codec."""
    import torch

    from foley.io.media import read_audio
    from foley.io.shards import list_shards, read_shard
    from foley.metrics.synthetic import SyntheticWorldMetric
    from foley.pipeline import FoleyPipeline

    torch.set_num_threads(1)
    codec = FoleyPipeline.from_pretrained(base_model).flow.codec
    rows: dict[str, float] = {}
    for folder in sets.values():
        metas, waves = [], []
        for shard in list_shards(str(folder)):
            for _, members in read_shard(shard):
                audio, sample_rate = read_audio(members["flac"])
                mono = torch.from_numpy(audio).float().mean(0, keepdim=True)[None]
                with torch.no_grad():
                    waves.append(codec.vocode(codec.decode_mel(codec.encode(mono)))[..., : mono.shape[-1]].reshape(1, 1, -1))
                metas.append(json.loads(members["json"]))
        metric = SyntheticWorldMetric(categories=sorted({m["category"] for m in metas}))
        for meta, wave in zip(metas, waves):
            metric.update(wave, {"meta": [meta]}, sample_rate)
        rows.update(_f1_rows({k: float(v) for k, v in metric.compute().items()}))
    return rows


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from foley.quiet import silence_expected_warnings

    silence_expected_warnings()
    if argv and argv[0] == "_eval":
        _eval_main(json.loads(argv[1]))
        return
    if argv and argv[0] == "_fit":
        split = argv.index("--")
        parser = argparse.ArgumentParser()
        parser.add_argument("--budget", type=float, required=True)
        parser.add_argument("--result", type=Path, required=True)
        parser.add_argument("--checkpoint", type=Path, required=True)
        ns = parser.parse_args(argv[1:split])
        fit_with_budget(argv[split + 1:], ns.budget, ns.result, ns.checkpoint)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo_out", type=Path, default=Path("demo_out"), help="a finished demo run (its model/ and data/test)")
    parser.add_argument("--out", type=Path, default=Path("bench_lora"))
    parser.add_argument("--clips", type=int, default=48, help="bell clips to fine-tune on")
    parser.add_argument("--test_clips", type=int, default=16, help="bell clips to score")
    parser.add_argument("--world_clips", type=int, default=128,
                        help="held-out clips of the default world to score the other categories on (0: the demo's test set)")
    parser.add_argument("--replay_clips", type=int, default=48,
                        help="default-world clips mixed into the training set of both fits (0: the bell clips alone)")
    parser.add_argument("--bell_weight", type=int, default=2, help="times the bell clips are read per pass over the replay clips")
    parser.add_argument("--budget", type=float, default=300.0, help="CPU seconds of training per fit")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3, help="LoRA learning rate")
    parser.add_argument("--cosine_steps", type=int, default=0,
                        help="LoRA lr: cosine decay to 0 over this many steps (about the steps the budget buys) "
                             "instead of a constant lr after warm-up")
    parser.add_argument("--targets", default=None, help="LoRA target expression (default: configs/finetune/lora.yaml's)")
    parser.add_argument("--full_lr", type=float, default=1e-3, help="full fine-tuning learning rate (the base's own)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16, help="sampler steps (the demo's)")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance (the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default: the demo's, 4 s)")
    parser.add_argument("--reuse_fits", action="store_true", help="keep features and fits of an earlier run in --out")
    parser.add_argument("--codec_ceiling", action="store_true",
                        help="only score the test clips' true audio through the base's codec (after synth)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
