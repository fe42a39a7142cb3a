"""``make demo``: the whole product on the built-in synthetic world, on a CPU, no downloads.

Every step runs the real ``foley`` command in a subprocess (so Lightning's progress bars
show), with the tiny configs in ``configs/tiny/``:

1. ``foley synth``: train / val / held-out test splits of the synthetic world.
2. ``foley fit`` stage 1 (codec: Mel-VAE with the training-free Griffin-Lim vocoder, see
   ``configs/demo/stage1.yaml``), ``foley extract`` (frozen encoder features and codec
   latents, once), ``foley fit`` stage 2 (MM-DiT flow matching on those features) and
   stage 3 (Mono2Stereo).
3. ``foley generate`` on the held-out test videos, and on the same videos with their
   frames shuffled in time (the baseline: same model, same pictures, no timing).
4. Scores both against the ground-truth events with the exact synthetic-world evaluator
   (onset F1 ±50 ms, sync offset, stereo pan correlation), draws one PNG per clip and
   writes ``report.md`` / ``report.json``.
5. ``foley export``: the trained stages as one model folder, ``demo_out/model/``
   (``FoleyPipeline.from_pretrained("demo_out/model")``, ``foley generate --model``).

Run ``python -m foley.demo --help`` for the knobs; ``--quick`` is a seconds-long version
used by the test suite.
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import logging
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from foley.io.atomic import atomic_write_json, atomic_write_text
from foley.io.media import read_audio, write_video
from foley.io.shards import list_shards
from foley.quiet import silence_expected_warnings

logger = logging.getLogger(__name__)


def config_file(name: str) -> Path:
    """Path of a config shipped with foley, e.g. ``"tiny/stage2.yaml"``.

    The repository's ``configs/`` folder is installed as the package ``foley.configs``
    (setup.cfg), so this finds it from a wheel as from an editable install, whatever the
    working directory.

    Raises:
        FileNotFoundError: foley ships no such config.
    """
    path = importlib.resources.files("foley.configs").joinpath(name)
    # The `foley` subprocesses need a real file: installs are unpacked folders, never zips.
    if not isinstance(path, Path) or not path.is_file():
        raise FileNotFoundError(f"foley ships no config {name!r} (looked for {path})")
    return path


@dataclass
class DemoSettings:
    """Sizes of the demo run.

    Args:
        out: output folder (created; existing content of a previous demo is reused only
            for the synthetic data, runs are redone).
        train_clips / val_clips / test_clips: clips per split.
        seconds: clip length in seconds (train crops and generation length).
        size: video frame size of the synthetic world.
        stage1_epochs / stage2_epochs / stage3_epochs: training epochs per stage.
        stage2_batch_size: clips per stage-2 training batch.
        stage3_seconds: stage-3 training crop (Mono2Stereo is convolutional: random 2 s crops
            train as well as whole 4 s clips, in 30 % less time).
        steps: flow sampling steps at generation.
        cfg: classifier-free guidance strength at generation.
        seed: seed of everything.
        long_video_seconds: length of the synthetic video generated in windows for the drift check.
    """

    out: Path = Path("demo_out")
    train_clips: int = 512
    val_clips: int = 8
    test_clips: int = 32
    seconds: float = 4.0
    size: int = 64
    stage1_epochs: int = 4
    stage2_epochs: int = 30
    stage3_epochs: int = 30
    stage3_seconds: float = 2.0
    stage2_batch_size: int = 8
    steps: int = 16
    cfg: float = 3.0
    seed: int = 0
    long_video_seconds: float = 60.0

    @classmethod
    def quick(cls, out: Path) -> DemoSettings:
        return cls(out=out, train_clips=4, val_clips=2, test_clips=2, seconds=2.0, size=64,
                   stage1_epochs=1, stage2_epochs=1, stage3_epochs=1, stage2_batch_size=2, steps=2, cfg=2.0,
                   long_video_seconds=12.0)


def _foley(*args: str, log: Path) -> None:
    """Run one ``foley`` command, echoing it.

    On a terminal the command writes straight to it, so Lightning's live progress bars
    render; otherwise (CI, tests, ``| tee``) its output is copied to the screen and ``log``.
    """
    cmd = [sys.executable, "-m", "foley.cli", *args]
    line = "$ foley " + " ".join(args)
    sys.stdout.write("\n" + line + "\n")
    sys.stdout.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as sink:
        sink.write((line + "\n").encode())
        if sys.stdout.isatty():
            returncode = subprocess.run(cmd, env=env).returncode
        else:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                sink.write(chunk)
            returncode = proc.wait()
    if returncode != 0:
        raise RuntimeError(f"`{line}` failed with exit code {returncode}; see {log}")


def _latest_checkpoint(run_dir: Path) -> Path:
    ckpts = sorted(run_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise FileNotFoundError(f"training wrote no checkpoint under {run_dir}")
    return ckpts[-1]


def _synth(settings: DemoSettings, name: str, clips: int, seed: int, log: Path) -> Path:
    """Synthesises a split, or reuses the one a previous demo wrote with the same settings."""
    out = settings.out / "data" / name
    recipe = {"clips": clips, "seconds": settings.seconds, "seed": seed, "size": settings.size}
    marker = out / "demo_recipe.json"
    if (out / "index.json").exists() and marker.exists() and json.loads(marker.read_text()) == recipe:
        return out
    _foley("synth", "--out", str(out), "--clips", str(clips), "--seconds", str(settings.seconds),
           "--seed", str(seed), "--size", str(settings.size), "--shard_size", "64", "--workers", "2",
           "--overwrite", "true", log=log)
    atomic_write_json(marker, recipe)
    return out


def _fit(config: str | list[str], run_dir: Path, epochs: int, settings: DemoSettings, data: dict[str, Path],
         extra: list[str], log: Path) -> Path:
    """``foley fit`` with ``config`` (or several stacked overlays) and the demo's data and epochs."""
    configs = [config] if isinstance(config, str) else config
    args = ["fit", *[arg for name in configs for arg in ("--config", str(config_file(name)))],
            f"--data.init_args.train_shards={data['train']}", f"--data.init_args.val_shards={data['val']}",
            f"--data.init_args.clip_seconds={settings.seconds}",
            f"--trainer.default_root_dir={run_dir}", f"--trainer.max_epochs={epochs}",
            "--trainer.limit_train_batches=null", "--trainer.enable_progress_bar=true",
            f"--seed_everything={settings.seed}", *extra]
    _foley(*args, log=log)
    return _latest_checkpoint(run_dir)


def _export_test_videos(shards: Path, out: Path, shuffled_out: Path, seed: int) -> list[dict]:
    """Writes each test clip's mp4 (as in the shard) and a copy whose frames are shuffled in time."""
    import decord

    out.mkdir(parents=True, exist_ok=True)
    shuffled_out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips: dict[str, dict] = {}
    for shard in list_shards(str(shards)):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                clips.setdefault(key, {})[ext] = data
    metas = []
    for key, parts in sorted(clips.items()):
        video = out / f"{key}.mp4"
        video.write_bytes(parts["mp4"])
        meta = json.loads(parts["json"])
        audio, sr = read_audio(parts["flac"])
        meta["_audio"], meta["_sr"] = audio, sr
        reader = decord.VideoReader(str(video))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        write_video(shuffled_out / f"{key}.mp4", frames[rng.permutation(len(frames))], fps=float(meta["fps"]))
        metas.append(meta)
    return metas


def _score(generated: Path, metas: list[dict]) -> dict:
    from foley.metrics.synthetic import SyntheticWorldMetric

    categories = sorted({m["category"] for m in metas})
    metric = SyntheticWorldMetric(categories=categories)
    for meta in metas:
        wave, sr = read_audio(generated / f"{meta['key']}.wav")
        truth = torch.from_numpy(meta["_audio"])
        n = min(wave.shape[-1], truth.shape[-1])
        batch = {"audio": truth[None, :, :n], "meta": [meta], "seconds_total": [meta["duration"]]}
        metric.update(torch.from_numpy(wave)[None, :, :n], batch, sr)
    return {k: float(v) for k, v in metric.compute().items()}


def _score_stage3_alone(stereo_ckpt: Path, codec_ckpt: Path, test_shards: Path, seconds: float) -> dict:
    """Stage 3 by itself: the ground-truth mono mix of each held-out clip in, stereo out,
    scored against the true stereo (so stage 2's timing errors do not enter the number)."""
    from foley.data_modules import FoleyDataModule
    from foley.metrics.synthetic import SyntheticWorldMetric
    from foley.models.codec import Codec
    from foley.stages.stereo_module import StereoModule

    stereo = StereoModule.from_checkpoint(stereo_ckpt, codec=Codec.from_checkpoint(codec_ckpt))
    data_hparams = torch.load(stereo_ckpt, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    keep = ("sample_rate", "clip_fps", "clip_size", "clip_crop", "sync_fps", "sync_size")
    datamodule = FoleyDataModule(val_shards=str(test_shards), clip_seconds=seconds, batch_size=4, num_workers=0,
                                 **{k: data_hparams[k] for k in keep if k in data_hparams})
    datamodule.setup("validate")
    batches = list(datamodule.val_dataloader())
    categories = sorted({meta["category"] for batch in batches for meta in batch["meta"]})
    metric = SyntheticWorldMetric(categories=categories)
    for batch in batches:
        metric.update(stereo.generate(batch), batch, stereo.sample_rate)
    return {k: float(v) for k, v in metric.compute().items() if k.startswith(("pan_corr", "ild_mae"))}


def _long_video_drift(settings: DemoSettings, common: list[str], log: Path, seconds: float = 60.0) -> dict:
    """Generates a long synthetic video with the trained stages (windows joined by the
    pipeline) and scores onset alignment per 10 s span: drift shows as matches lost or a
    mean offset growing from the first span to the last."""
    from foley.metrics.synthetic import onset_alignment_by_time
    from foley.synth.world import render_clip

    folder = settings.out / "long_video"
    folder.mkdir(parents=True, exist_ok=True)
    clip = render_clip(0, seed=settings.seed + 3, seconds=seconds, fps=25.0, size=settings.size, category="bouncing_ball")
    write_video(folder / "long.mp4", clip.frames, fps=25.0)
    _foley("generate", str(folder / "long.mp4"), "--out", str(folder / "generated"), "--prompt", clip.meta["caption"],
           *common, log=log)
    wave, sr = read_audio(folder / "generated" / "long.wav")
    onsets = [event["onset"] for event in clip.meta["events"]]
    spans = [(start, min(start + 10.0, seconds)) for start in np.arange(0.0, seconds, 10.0)]
    rows = onset_alignment_by_time(torch.from_numpy(wave), onsets, sr, spans)
    return {"seconds": seconds, "category": "bouncing_ball", "samples": int(wave.shape[-1]),
            "spans": [asdict(row) for row in rows]}


def _plot(generated: Path, metas: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for meta in metas:
        wave, sr = read_audio(generated / f"{meta['key']}.wav")
        fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
        t = np.arange(wave.shape[-1]) / sr
        for channel, label in zip(wave, ("left", "right")):
            axes[0].plot(t, channel, lw=0.4, label=label)
        axes[0].set_ylabel("generated")
        axes[0].legend(loc="upper right")
        axes[1].specgram(wave.mean(0), NFFT=1024, Fs=sr, noverlap=768, cmap="magma")
        axes[1].set_ylabel("Hz")
        axes[1].set_xlabel("seconds")
        for event in meta["events"]:
            for ax in axes:
                ax.axvline(event["onset"], color="cyan", lw=0.8, ls="--")
        fig.suptitle(f"{meta['key']}: {meta['caption']}  (dashed: ground-truth onsets)")
        fig.tight_layout()
        tmp = out / f".{meta['key']}.tmp.png"
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, out / f"{meta['key']}.png")
        plt.close(fig)


def _category_rows(scores: dict, first: str, second: str, fmt) -> list[str]:
    """Markdown rows ``| category | scores[first/category] | scores[second/category] |``."""
    categories = sorted(key.split("/", 1)[1] for key in scores if key.startswith(f"{first}/"))
    return [f"| {c} | {fmt(scores[f'{first}/{c}'])} | {fmt(scores.get(f'{second}/{c}', float('nan')))} |" for c in categories]


def _markdown(report: dict) -> str:
    def fmt(x: float) -> str:
        return "n/a" if x != x else f"{x:.3f}"

    real, shuffled = report["generated"], report["shuffled_video_baseline"]
    lines = [
        "# foley demo report", "",
        f"{report['test_clips']} held-out synthetic clips of {report['seconds']} s; "
        f"wall time {report['wall_seconds'] / 60:.1f} min on this machine.", "",
        "| | onset F1 (±50 ms) | precision | recall | sync offset (s) | pan corr |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in (("generated from the video", real), ("same model, frames shuffled in time", shuffled)):
        lines.append(f"| {name} | {fmt(row['onset_f1'])} | {fmt(row['onset_precision'])} | "
                     f"{fmt(row['onset_recall'])} | {fmt(row['sync_offset'])} | {fmt(row.get('pan_corr', float('nan')))} |")
    lines += ["", "Targets: onset F1 ≥ 0.8, shuffled baseline ≤ 0.3, pan correlation ≥ 0.8.", "",
              "Per category (generated):", "", "| category | onset F1 | pan corr |", "|---|---|---|"]
    lines += _category_rows(real, "onset_f1", "pan_corr", fmt)
    alone = report.get("stage3_on_true_mono")
    if alone:
        lines += ["", "Stage 3 alone (the held-out clips' true mono mix in, scored against the true stereo): "
                  f"pan correlation {fmt(alone.get('pan_corr', float('nan')))}, "
                  f"mean |ILD error| {fmt(alone.get('ild_mae_db', float('nan')))} dB.", ""]
        lines += ["| category | pan corr | ILD error (dB) |", "|---|---|---|"]
        lines += _category_rows(alone, "pan_corr", "ild_mae_db", fmt)
    long_video = report.get("long_video")
    if long_video:
        lines += ["", f"Long video: {long_video['seconds']:.0f} s of {long_video['category']}, generated in "
                  "overlapping windows; onsets per span (drift would lose matches or grow the offset):", "",
                  "| span (s) | true onsets | matched ±50 ms | false detections | mean offset (ms) |",
                  "|---|---|---|---|---|"]
        for row in long_video["spans"]:
            lines.append(f"| {row['start']:.0f}–{row['stop']:.0f} | {row['references']} | {row['matched']} | "
                         f"{row['false_positives']} | {fmt(1000 * row['mean_offset'])} |")
    lines += ["", "Checkpoints:", ""] + [f"- {k}: `{v}`" for k, v in report["checkpoints"].items()]
    if "model" in report:
        lines += ["", f"Model folder (`foley export`): `{report['model']}`; `foley generate VIDEOS --model {report['model']}`."]
    return "\n".join(lines) + "\n"


def run(settings: DemoSettings) -> dict:
    """Runs the whole demo and returns the report dict (also written to ``out``)."""
    start = time.perf_counter()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    data = {
        "train": _synth(settings, "train", settings.train_clips, settings.seed, log),
        "val": _synth(settings, "val", settings.val_clips, settings.seed + 1, log),
        "test": _synth(settings, "test", settings.test_clips, settings.seed + 2, log),
    }
    runs = out / "runs"
    codec = _fit("demo/stage1.yaml", runs / "stage1", settings.stage1_epochs, settings, data,
                 [f"--data.init_args.clip_seconds={min(2.0, settings.seconds)}"], log)
    # Stage 2 trains on features precomputed once by `foley extract` (frozen encoders and
    # codec encoder), the way it is meant to run at scale: most of a raw-frame step is
    # spent in the frozen encoders.
    features = {}
    for split in ("train", "val"):
        features[split] = out / "features" / split
        _foley("extract", "--fit_config", str(config_file("tiny/stage2.yaml")), "--shards", str(data[split]),
               "--out", str(features[split]), "--codec_checkpoint", str(codec),
               "--overrides", json.dumps([f"--data.init_args.clip_seconds={settings.seconds}"]),
               "--num_workers", "0", "--accelerator", "cpu", "--devices", "1", "--overwrite", "true", log=log)
    flow = _fit("tiny/stage2.yaml", runs / "stage2", settings.stage2_epochs, settings, features,
                [f"--model.init_args.codec_checkpoint={codec}", "--data.init_args.load_video=false",
                 f"--data.init_args.batch_size={settings.stage2_batch_size}"], log)
    stereo = _fit(["tiny/stage3.yaml", "demo/stage3.yaml"], runs / "stage3", settings.stage3_epochs, settings, data,
                  [f"--model.init_args.codec_checkpoint={codec}",
                   f"--data.init_args.clip_seconds={min(settings.stage3_seconds, settings.seconds)}"], log)

    metas = _export_test_videos(data["test"], out / "test_videos", out / "test_videos_shuffled", settings.seed)
    common = ["--codec_ckpt", str(codec), "--flow_ckpt", str(flow), "--stereo_ckpt", str(stereo),
              "--steps", str(settings.steps), "--cfg", str(settings.cfg), "--seed", str(settings.seed),
              "--overwrite", "true"]
    _foley("generate", str(out / "test_videos"), "--out", str(out / "generated"), *common, log=log)
    _foley("generate", str(out / "test_videos_shuffled"), "--out", str(out / "generated_shuffled"), *common, log=log)

    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "seconds": settings.seconds,
        "test_clips": len(metas),
        "generated": _score(out / "generated", metas),
        "shuffled_video_baseline": _score(out / "generated_shuffled", metas),
        "stage3_on_true_mono": _score_stage3_alone(stereo, codec, data["test"], settings.seconds),
        "long_video": _long_video_drift(settings, common, log, settings.long_video_seconds),
        "checkpoints": {"codec": str(codec), "flow": str(flow), "stereo": str(stereo)},
    }
    _plot(out / "generated", metas, out / "plots")
    # Last: the trained stages as one model folder, with the demo's sampling as stored defaults.
    model = out / "model"
    _foley("export", "--flow_ckpt", str(flow), "--stereo_ckpt", str(stereo), "--codec_ckpt", str(codec),
           "--out", str(model), "--overwrite", "true", "--steps", str(settings.steps), "--cfg", str(settings.cfg), log=log)
    report["model"] = str(model)
    report["wall_seconds"] = time.perf_counter() - start
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    sys.stdout.write("\n" + _markdown(report))
    logger.info(
        "the demo model is in %s. Use it with\n  foley generate VIDEOS --model %s --out OUT\nor in Python:\n"
        "  from foley import FoleyPipeline\n  pipe = FoleyPipeline.from_pretrained(%r)\n"
        "  audio = pipe(\"clip.mp4\", prompt=\"a ball bounces\")  # (2, N) float32 at 44.1 kHz\n"
        "or in the browser (upload a video, hear stereo Foley):\n  foley app --model %s",
        model, model, str(model), model,
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m foley.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke version (tests)")
    for field in ("train_clips", "test_clips", "stage1_epochs", "stage2_epochs", "stage3_epochs", "steps"):
        parser.add_argument(f"--{field}", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    # The demo builds a dataloader in this process too (stage-3-alone scoring), so it hides the
    # same expected dependency messages as the `foley` commands it runs.
    silence_expected_warnings()
    settings = DemoSettings.quick(args.out) if args.quick else DemoSettings(out=args.out)
    for field in ("train_clips", "test_clips", "stage1_epochs", "stage2_epochs", "stage3_epochs", "steps", "seconds"):
        if getattr(args, field) is not None:
            setattr(settings, field, getattr(args, field))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(settings)


if __name__ == "__main__":
    main()
