"""Ablations and ceilings on the data and checkpoints of a finished demo run.

docs/benchmarks.md ("The demo") quotes these numbers, each with its command. Every
command reads the folder that ``make demo`` (= ``python -m foley.demo --out demo_out``)
wrote: ``data/{train,val,test}`` shards, ``features/{train,val}`` from ``foley extract``,
the three stage checkpoints (``report.json``), and writes into ``DEMO_OUT/ablations/NAME``.

    codec-ceiling  onset scores of the held-out clips' true mono mix after the stage-1
                   codec round trip (Mel-VAE + Griffin-Lim): what stage 2 can reach through it.
    sync-probe     how visible event timing is in the frozen tiny Synchformer's tokens of the
                   training features: token statistics, and linear / MLP probes that find the
                   token holding an event onset from that token alone or with its ±1 neighbours.
    stage3         trains a Mono2Stereo variant on the demo's clips with ``foley fit`` (the
                   demo's own settings plus ``--config`` overlays and ``--set`` overrides) and
                   scores stage 3 alone (true mono in) on the held-out clips.
    stage2         trains an MM-DiT variant on the demo's features, keeps a checkpoint every
                   ``--every`` epochs, and for each one generates the held-out videos and their
                   frame-shuffled copies with the demo's stage 1 and 3 (``foley generate``), then
                   scores both with the exact evaluator.

Examples (after ``make demo``):

    python benchmarks/bench_demo_ablations.py codec-ceiling --demo_out demo_out
    python benchmarks/bench_demo_ablations.py stage3 --name tiny-6 --config tiny/stage3.yaml --epochs 6 --seconds 4

The training and scoring steps are the demo's own functions (``foley.demo``), so a variant
differs from the demo only in what its flags say.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foley.demo import DemoSettings, _export_test_videos, _fit, _foley, _latest_checkpoint, _score, _score_stage3_alone, _synth
from foley.io.atomic import atomic_write_json
from foley.io.media import write_audio
from foley.io.shards import list_shards, read_shard

TEXTURED = ("engine", "rain")  # event types whose clips the onset scores leave out (as the demo's evaluator)
STAGE_RUNS = {"codec": "stage1", "flow": "stage2", "stereo": "stage3"}  # demo checkpoint name -> runs/ folder


class Demo:
    """What a demo run left in ``root``.

    A finished run names its checkpoints and settings in ``report.json``. Before that (a
    demo stopped after stage 1, say), a stage's checkpoint is the newest one in
    ``runs/stageN``, the one the demo itself passes on, and the settings are the demo's
    defaults with the clip length, size and seed its data was synthesised with.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = {split: root / "data" / split for split in ("train", "val", "test")}
        self.features = {split: root / "features" / split for split in ("train", "val")}
        report = root / "report.json"
        self._report = json.loads(report.read_text()) if report.is_file() else None

    def checkpoint(self, name: str) -> Path:
        """The demo's ``codec``, ``flow`` or ``stereo`` checkpoint."""
        if self._report is not None:
            return Path(self._report["checkpoints"][name])
        try:
            return _latest_checkpoint(self.root / "runs" / STAGE_RUNS[name])
        except FileNotFoundError:
            raise SystemExit(f"{self.root}: the demo has no {name} checkpoint yet; run `make demo` "
                             f"(python -m foley.demo --out {self.root}) first") from None

    @property
    def settings(self) -> DemoSettings:
        """The demo's settings (clip length, epochs, sampling), with ``out`` = this folder."""
        known = set(DemoSettings.__dataclass_fields__)
        if self._report is not None:
            stored = self._report["settings"]
        else:
            recipe = self.data["train"] / "demo_recipe.json"
            if not recipe.is_file():
                raise SystemExit(f"{recipe} does not exist: run `make demo` (python -m foley.demo --out {self.root}) first")
            stored = {k: v for k, v in json.loads(recipe.read_text()).items() if k in ("seconds", "size", "seed")}
        return DemoSettings(out=self.root, **{k: v for k, v in stored.items() if k in known and k != "out"})

    def test_split(self, seed: int | None) -> Path:
        """The demo's held-out split, or (``seed``) one of the same size synthesised with that seed."""
        if seed is None:
            return self.data["test"]
        log = self.folder(f"test-seed{seed}") / "log.txt"
        return _synth(self.settings, f"test-seed{seed}", self.settings.test_clips, seed, log)

    def folder(self, name: str) -> Path:
        path = self.root / "ablations" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _write_result(folder: Path, result: dict[str, Any]) -> None:
    atomic_write_json(folder / "result.json", result)
    sys.stdout.write(json.dumps(result, indent=1) + "\n")


# --------------------------------------------------------------------------- codec ceiling
def codec_ceiling(demo: Demo, test: Path) -> dict[str, Any]:
    """Scores of the ground-truth mono mix of the ``test`` clips after the stage-1 round trip
    (both channels equal)."""
    from foley.models.codec import Codec

    folder = demo.folder("codec_ceiling")
    metas = _export_test_videos(test, folder / "videos", folder / "videos_shuffled", demo.settings.seed)
    codec = Codec.from_checkpoint(demo.checkpoint("codec")).eval()
    with torch.no_grad():
        for meta in metas:
            mono = torch.from_numpy(meta["_audio"]).mean(0, keepdim=True)
            wave = codec(mono)[0].clamp(-1.0, 1.0)
            write_audio(folder / "roundtrip" / f"{meta['key']}.wav", torch.stack([wave, wave]).numpy(), meta["_sr"])
    scores = _score(folder / "roundtrip", metas)
    return {"benchmark": "codec-ceiling", "codec": str(demo.checkpoint("codec")), "test": str(test), "clips": len(metas),
            **{k: v for k, v in scores.items() if k.startswith(("onset", "sync_offset"))}}


# --------------------------------------------------------------------------- sync probe
def _sync_tokens(shards: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(key, tokens (T, D), onset label per token)`` of the clips without textured events."""
    members: dict[str, dict[str, bytes]] = {}
    for shard in list_shards(str(shards)):
        for key, parts in read_shard(shard):
            members[key] = parts
    clips = []
    for key in sorted(members):
        meta = json.loads(members[key]["json"])
        if any(event["type"] in TEXTURED for event in meta["events"]):
            continue
        tokens = torch.load(io.BytesIO(members[key]["sync_features.pth"]), weights_only=True).float().numpy()
        rate = len(tokens) / float(meta["duration"])  # tokens per second (12.5 for the tiny Synchformer)
        labels = np.zeros(len(tokens), dtype=np.float32)
        for event in meta["events"]:
            index = int(np.floor(float(event["onset"]) * rate + 1e-9))
            if 0 <= index < len(tokens):
                labels[index] = 1.0
        clips.append((key, tokens, labels))
    return clips


def _with_neighbours(tokens: np.ndarray, context: int) -> np.ndarray:
    """Concatenate each token with its ``context`` neighbours on each side (edges repeated)."""
    padded = np.pad(tokens, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([padded[i : i + len(tokens)] for i in range(2 * context + 1)], axis=1)


def _probe_f1(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              hidden: int | None) -> tuple[float, float]:
    """Held-out and training F1 at probability 0.5 of a logistic (``hidden=None``) or
    one-hidden-layer probe, trained full-batch (500 Adam steps) on class-balanced binary
    cross-entropy. The training F1 shows how much of a probe's fit does not generalise."""
    torch.manual_seed(0)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    layers: list[torch.nn.Module] = [torch.nn.Linear(x.shape[1], 1)] if hidden is None else [
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)]
    probe = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(y.numel() - y.sum()) / y.sum().clamp_min(1.0))
    for _ in range(500):
        optimizer.zero_grad()
        loss_fn(probe(x).squeeze(1), y).backward()
        optimizer.step()

    def f1(features: np.ndarray, labels: np.ndarray) -> float:
        with torch.no_grad():
            predicted = probe(torch.from_numpy(features)).squeeze(1) > 0
        truth = torch.from_numpy(labels) > 0.5
        return 2 * float((predicted & truth).sum()) / max(1.0, float(predicted.sum() + truth.sum()))

    return f1(test_x, test_y), f1(train_x, train_y)


def sync_probe(demo: Demo, held_out: float = 0.25) -> dict[str, Any]:
    """Token statistics and probe F1 on the training features (the last ``held_out`` of the
    clips, by key, are the probes' test set)."""
    clips = _sync_tokens(demo.features["train"])
    split = int(round(len(clips) * (1.0 - held_out)))
    raw = np.concatenate([tokens for _, tokens, _ in clips[:split]])
    mean, std = raw.mean(0), raw.std(0) + 1e-6

    def temporal_std(tokens: list[np.ndarray]) -> float:
        return float(np.mean([t.std(0).mean() for t in tokens]))

    stats = {
        # How much a clip's tokens move in time (std over time, mean over channels and clips) ...
        "temporal_std": temporal_std([t for _, t, _ in clips[:split]]),
        # ... against the part they share within the clip (RMS over channels of the time mean).
        "constant_rms": float(np.mean([np.sqrt((t.mean(0) ** 2).mean()) for _, t, _ in clips[:split]])),
        # The same temporal std after per-channel standardisation over all training tokens.
        "temporal_std_standardised": temporal_std([(t - mean) / std for _, t, _ in clips[:split]]),
    }
    result: dict[str, Any] = {"benchmark": "sync-probe", "clips": len(clips), "train_clips": split,
                              "test_clips": len(clips) - split, **stats}
    for context in (0, 1):
        def stack(part: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
            x = np.concatenate([_with_neighbours((t - mean) / std, context) for _, t, _ in part]).astype(np.float32)
            return x, np.concatenate([labels for _, _, labels in part])

        (train_x, train_y), (test_x, test_y) = stack(clips[:split]), stack(clips[split:])
        result["onset_tokens_test"] = int(test_y.sum())
        for probe, hidden in (("linear", None), ("mlp", 64)):
            held_out_f1, train_f1 = _probe_f1(train_x, train_y, test_x, test_y, hidden=hidden)
            result[f"{probe}_f1_context{context}"] = held_out_f1
            result[f"{probe}_f1_context{context}_train"] = train_f1
    return result


# --------------------------------------------------------------------------- stage 3
def stage3(demo: Demo, name: str, configs: list[str], epochs: int, seconds: float, overrides: list[str],
           test: Path) -> dict[str, Any]:
    """Train a Mono2Stereo variant as the demo trains its stage 3, then score it alone."""
    folder = demo.folder(name)
    start = time.perf_counter()
    extra = [f"--model.init_args.codec_checkpoint={demo.checkpoint('codec')}", f"--data.init_args.clip_seconds={seconds}",
             *[f"--{item}" for item in overrides]]
    stereo = _fit(configs, folder / "run", epochs, demo.settings, demo.data, extra, folder / "log.txt")
    trained = time.perf_counter() - start
    scores = _score_stage3_alone(stereo, demo.checkpoint("codec"), test, demo.settings.seconds)
    return {"benchmark": "stage3", "name": name, "configs": configs, "epochs": epochs, "crop_seconds": seconds, "test": str(test),
            "overrides": overrides, "checkpoint": str(stereo), "train_seconds": trained,
            "wall_seconds": time.perf_counter() - start, **scores}


# --------------------------------------------------------------------------- stage 2
def stage2(demo: Demo, name: str, epochs: int, every: int, overrides: list[str], test: Path) -> dict[str, Any]:
    """Train an MM-DiT variant as the demo trains its stage 2; generate and score every ``every`` epochs."""
    folder = demo.folder(name)
    settings = demo.settings
    keep = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_epochs": every, "save_top_k": -1, "filename": "ablation-{epoch}"}}
    extra = [f"--model.init_args.codec_checkpoint={demo.checkpoint('codec')}", "--data.init_args.load_video=false",
             f"--data.init_args.batch_size={settings.stage2_batch_size}", f"--trainer.callbacks+={json.dumps(keep)}",
             *[f"--{item}" for item in overrides]]
    start = time.perf_counter()
    log = folder / "log.txt"
    _fit("tiny/stage2.yaml", folder / "run", epochs, settings, demo.features, extra, log)
    metas = _export_test_videos(test, folder / "videos", folder / "videos_shuffled", settings.seed)
    rows = []
    for checkpoint in sorted((folder / "run").rglob("ablation-epoch=*.ckpt"), key=lambda p: int(p.stem.split("=")[1])):
        epoch = int(checkpoint.stem.split("=")[1]) + 1
        common = ["--codec_ckpt", str(demo.checkpoint("codec")), "--flow_ckpt", str(checkpoint),
                  "--stereo_ckpt", str(demo.checkpoint("stereo")), "--steps", str(settings.steps),
                  "--cfg", str(settings.cfg), "--seed", str(settings.seed), "--overwrite", "true"]
        row: dict[str, Any] = {"epochs": epoch}
        for video_folder, label in ((folder / "videos", "video"), (folder / "videos_shuffled", "shuffled")):
            generated = folder / f"generated-{epoch}-{label}"
            _foley("generate", str(video_folder), "--out", str(generated), *common, log=log)
            scores = _score(generated, metas)
            row[f"onset_f1_{label}"] = scores["onset_f1"]
        rows.append(row)
    return {"benchmark": "stage2", "name": name, "epochs": epochs, "every": every, "overrides": overrides,
            "test": str(test), "test_clips": len(metas),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            "wall_seconds": time.perf_counter() - start, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_demo_ablations.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("codec-ceiling", "sync-probe", "stage3", "stage2"):
        sub = commands.add_parser(name)
        sub.add_argument("--demo_out", type=Path, default=Path("demo_out"), help="folder of a finished demo run")
        if name != "sync-probe":
            sub.add_argument("--test_seed", type=int, default=None,
                             help="score on clips synthesised with this seed (as many as the demo's test split, "
                                  "written to DEMO_OUT/data/test-seedN) instead of the demo's test split")
        if name in ("stage3", "stage2"):
            sub.add_argument("--name", required=True, help="subfolder of DEMO_OUT/ablations for this variant")
            sub.add_argument("--epochs", type=int, required=True)
            sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="extra `foley fit` override without the leading --, e.g. model.init_args.network.init_args.hidden=96")
        if name == "stage3":
            sub.add_argument("--config", dest="configs", action="append", required=True,
                             help="config under configs/ (repeat to overlay), e.g. tiny/stage3.yaml")
            sub.add_argument("--seconds", type=float, required=True, help="training crop length in seconds")
        if name == "stage2":
            sub.add_argument("--every", type=int, default=15,
                             help="score a checkpoint every this many epochs (at least 2: the config's own "
                                  "checkpoint already saves every epoch, and Lightning refuses two alike)")
    args = parser.parse_args(argv)
    if args.command == "stage2" and args.every < 2:
        parser.error("--every must be at least 2")
    demo = Demo(args.demo_out)
    if args.command == "sync-probe":
        name, result = "sync_probe", sync_probe(demo)
    elif args.command == "codec-ceiling":
        name, result = "codec_ceiling", codec_ceiling(demo, demo.test_split(args.test_seed))
    elif args.command == "stage3":
        name = args.name
        result = stage3(demo, name, args.configs, args.epochs, args.seconds, args.overrides, demo.test_split(args.test_seed))
    else:
        name = args.name
        result = stage2(demo, name, args.epochs, args.every, args.overrides, demo.test_split(args.test_seed))
    _write_result(demo.folder(name), result)
    return result


if __name__ == "__main__":
    main()
