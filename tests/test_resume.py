"""A `foley fit` killed with SIGKILL at a random step and resumed from its last checkpoint
logs exactly the per-step losses of an uninterrupted run (tiny stage 2, synthetic shards).

Each case runs three fits with the same settings: an uninterrupted one and a resumed one in
this process, and one in a subprocess that is killed (process group, SIGKILL) once its
CSV log shows a randomly chosen step. The two cases cover a loader without a length
(Lightning prefetches a batch; num_workers 0) and one with a length from
``samples_per_epoch`` over two persistent worker processes (two passes over the shards per
epoch).
"""
from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from foley.cli import main

from helpers.stage2_parts import save_tiny_codec

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/tiny/stage2.yaml")

CASES = {
    # 6 clips, batch 2: 3 batches per epoch, one pass; the loader has no length.
    "workers0": {"workers": 0, "epochs": 3, "extra": []},
    # 8 samples per epoch over 2 workers: 4 batches per epoch, each worker reads its shard twice.
    "workers2": {"workers": 2, "epochs": 2, "extra": ["--data.init_args.samples_per_epoch=8"]},
}


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> str:
    return save_tiny_codec(tmp_path_factory.mktemp("resume") / "codec.pt")


def _args(shards: dict, codec: str, root: Path, version: str, case: dict) -> list[str]:
    return [
        "fit", "--config", CONFIG,
        f"--model.init_args.codec_checkpoint={codec}",
        f"--data.init_args.train_shards={shards['train']}", f"--data.init_args.val_shards={shards['val']}",
        f"--data.init_args.num_workers={case['workers']}", *case["extra"],
        f"--trainer.default_root_dir={root}", f"--trainer.max_epochs={case['epochs']}",
        "--trainer.limit_train_batches=null",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.logger.init_args.version={version}", "--trainer.logger.init_args.flush_logs_every_n_steps=1",
        # The config's last callback writes last.ckpt; every step here, into a folder that the
        # resumed run shares with the killed one.
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        f"--trainer.callbacks.init_args.dirpath={root / ('ckpt-full' if version == 'full' else 'ckpt')}",
    ]


def _metrics(root: Path, version: str) -> dict[tuple[int, str], float]:
    """``{(step, "train/loss" | "val/loss"): value}`` of one run's CSV log (exact floats)."""
    path = root / "lightning_logs" / version / "metrics.csv"
    values: dict[tuple[int, str], float] = {}
    if not path.exists():
        return values
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for name in ("train/loss", "val/loss"):
                if row.get(name):
                    values[(int(row["step"]), name)] = float(row[name])
    return values


def _fit_here(args: list[str]) -> None:
    # One intra-op thread, as in the subprocess (OMP_NUM_THREADS=1): same float reductions.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(args)
    finally:
        torch.set_num_threads(threads)


def _kill_at(process: subprocess.Popen, root: Path, step: int) -> None:
    """SIGKILL the process group once the run's CSV log holds the training loss of ``step``."""
    while process.poll() is None and (step, "train/loss") not in _metrics(root, "killed"):
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # the trainer and its DataLoader workers, like a lost node


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_killed_run_resumes_with_identical_losses(synth_shards, codec, tmp_path):
    started = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    runs = {}
    # The runs to kill go first, in subprocesses, while this process fits the uninterrupted ones.
    for name, case in CASES.items():
        root = tmp_path / name
        steps = case["epochs"] * (3 if case["workers"] == 0 else 4)
        kill_after = random.randint(1, steps - 3)
        process = subprocess.Popen([sys.executable, "-m", "foley.cli", *_args(synth_shards, codec, root, "killed", case)],
                                   cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        killer = threading.Thread(target=_kill_at, args=(process, root, kill_after), daemon=True)
        killer.start()
        runs[name] = {"root": root, "case": case, "steps": steps, "kill_after": kill_after, "process": process,
                      "killer": killer}
    for run in runs.values():
        _fit_here(_args(synth_shards, codec, run["root"], "full", run["case"]))
    for name, run in runs.items():
        run["killer"].join(timeout=600)
        process = run["process"]
        stderr = process.communicate()[1].decode()
        assert process.returncode == -signal.SIGKILL, f"{name}: the run to kill ended by itself:\n{stderr[-3000:]}"
        checkpoint = torch.load(run["root"] / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
        run["checkpoint_step"] = checkpoint["global_step"]
        _fit_here(_args(synth_shards, codec, run["root"], "resumed", run["case"]) + ["--ckpt_path=last"])

    for name, run in runs.items():
        full, killed, resumed = (_metrics(run["root"], v) for v in ("full", "killed", "resumed"))
        assert sorted(step for step, metric in full if metric == "train/loss") == list(range(run["steps"])), name
        # Resumed right after the checkpoint, to the end, with every loss of the uninterrupted run.
        assert run["checkpoint_step"] > run["kill_after"]
        resumed_steps = sorted(step for step, metric in resumed if metric == "train/loss")
        assert resumed_steps == list(range(run["checkpoint_step"], run["steps"])), (name, run["checkpoint_step"])
        assert {k: full[k] for k in killed} == killed, f"{name}: the killed run differs before the kill"
        assert {k: full[k] for k in resumed} == resumed, (
            f"{name}: killed after step {run['kill_after']}, resumed from step {run['checkpoint_step']}:\n"
            + "\n".join(f"  {k}: uninterrupted {full[k]!r} resumed {v!r}" for k, v in sorted(resumed.items()))
        )
        print(f"{name}: killed after step {run['kill_after']}, resumed at step {run['checkpoint_step']}; "
              "uninterrupted/resumed losses " + ", ".join(
                  f"{step}: {full[(step, 'train/loss')]!r}/{resumed[(step, 'train/loss')]!r}" for step in resumed_steps[:3]))
    print(f"resume test: {time.monotonic() - started:.1f} s")
