"""A `foley fit` stopped at a random step and resumed from its last checkpoint (``--ckpt_path
last``) logs exactly the per-step losses of an uninterrupted run (tiny stage 2, synthetic shards).

Stops run in subprocesses, in parallel with the uninterrupted fits (in this process, one
intra-op thread everywhere), and are stopped once their CSV log shows a randomly chosen
step: SIGKILL to the whole process group (trainer and DataLoader workers, like a lost node)
with the last every-step checkpoint, and SIGTERM to the trainer (preemption notice), where
Lightning finishes the step and the config's checkpoint callback writes last.ckpt on the way
out. The settings cover a loader without a length (Lightning fetches a batch ahead; no
workers) and one with a length from ``samples_per_epoch`` over two persistent worker
processes, each reading its shard twice per epoch.
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


from helpers.stage2_parts import save_tiny_codec

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/tiny/stage2.yaml")

SETTINGS = {
    # 6 clips, batch 2: 3 batches per epoch, one pass; the loader has no length.
    "workers0": {"workers": 0, "epochs": 3, "steps": 9, "extra": []},
    # 8 samples per epoch over 2 workers (2 shards of 3 clips): 4 batches per epoch.
    "workers2": {"workers": 2, "epochs": 2, "steps": 8, "extra": ["--data.init_args.samples_per_epoch=8"]},
}
# (settings, signal, whole process group)
STOPS = {
    "sigkill-workers0": ("workers0", signal.SIGKILL, True),
    "sigkill-workers2": ("workers2", signal.SIGKILL, True),
    "sigterm-workers2": ("workers2", signal.SIGTERM, False),
}


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> str:
    return save_tiny_codec(tmp_path_factory.mktemp("resume") / "codec.pt")


def _args(shards: dict, codec: str, root: Path, version: str, case: dict, every: int = 1) -> list[str]:
    return [
        "fit", "--config", CONFIG,
        f"--model.init_args.codec_checkpoint={codec}",
        f"--data.init_args.train_shards={shards['train']}", f"--data.init_args.val_shards={shards['val']}",
        f"--data.init_args.num_workers={case['workers']}", *case["extra"],
        f"--trainer.default_root_dir={root}", f"--trainer.max_epochs={case['epochs']}",
        "--trainer.limit_train_batches=null",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.logger.init_args.version={version}", "--trainer.logger.init_args.flush_logs_every_n_steps=1",
        # The config's last callback writes last.ckpt (here every `every` steps) into a folder
        # that the resumed run shares with the stopped one, so `--ckpt_path last` finds it.
        f"--trainer.callbacks.init_args.every_n_train_steps={every}", f"--trainer.callbacks.init_args.dirpath={root / 'ckpt'}",
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


_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}


def _fit_to_the_end(args: list[str], cwd: Path) -> None:
    """Run ``foley fit`` to the end in a process like the stopped one (same environment, one thread).

    Not in this process: DataLoader workers forked from pytest would inherit its BLAS/OpenMP
    thread set-up (e.g. OMP_NUM_THREADS=2 with OPENBLAS_CORETYPE set), and a validation loss
    then differed from the stopped run's in its last bit.
    """
    subprocess.run([sys.executable, "-m", "foley.cli", *args], cwd=cwd, env=_ENV, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_at(process: subprocess.Popen, root: Path, step: int, signum: int, group: bool) -> None:
    """Signal the run once its CSV log holds the training loss of ``step``."""
    while process.poll() is None and (step, "train/loss") not in _metrics(root, "stopped"):
        time.sleep(0.02)
    if process.poll() is None:
        (os.killpg if group else os.kill)(process.pid, signum)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_stopped_run_resumes_with_identical_losses(synth_shards, codec, tmp_path):
    started = time.monotonic()
    env = _ENV
    runs = {}
    for name, (settings, signum, group) in STOPS.items():
        case, root = SETTINGS[settings], tmp_path / name
        stop_after = random.randint(1, case["steps"] - 3)
        # SIGTERM runs write no periodic checkpoint: the one to resume from must be the SIGTERM one.
        every = 1 if signum == signal.SIGKILL else 1000
        process = subprocess.Popen(
            [sys.executable, "-m", "foley.cli", *_args(synth_shards, codec, root, "stopped", case, every)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        stopper = threading.Thread(target=_stop_at, args=(process, root, stop_after, signum, group), daemon=True)
        stopper.start()
        runs[name] = {"root": root, "case": case, "settings": settings, "stop_after": stop_after, "signal": signum,
                      "process": process, "stopper": stopper}
    for settings, case in SETTINGS.items():
        _fit_to_the_end(_args(synth_shards, codec, tmp_path / settings, "full", case), tmp_path)
    for name, run in runs.items():
        run["stopper"].join(timeout=600)
        process = run["process"]
        stderr = process.communicate()[1].decode()
        expected = -signal.SIGKILL if run["signal"] == signal.SIGKILL else 128 + signal.SIGTERM
        assert process.returncode == expected, f"{name}: exit status {process.returncode}:\n{stderr[-3000:]}"
        checkpoint = torch.load(run["root"] / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
        run["checkpoint_step"] = checkpoint["global_step"]
        _fit_to_the_end(_args(synth_shards, codec, run["root"], "resumed", run["case"]) + ["--ckpt_path=last"], tmp_path)

    for name, run in runs.items():
        full = _metrics(tmp_path / run["settings"], "full")
        stopped, resumed = _metrics(run["root"], "stopped"), _metrics(run["root"], "resumed")
        steps = run["case"]["steps"]
        assert sorted(step for step, metric in full if metric == "train/loss") == list(range(steps)), name
        stopped_steps = sorted(step for step, metric in stopped if metric == "train/loss")
        resumed_steps = sorted(step for step, metric in resumed if metric == "train/loss")
        assert run["checkpoint_step"] > run["stop_after"]
        if run["signal"] == signal.SIGTERM:
            # The step in progress finished, was logged and checkpointed; nothing after it ran.
            assert stopped_steps == list(range(run["checkpoint_step"])), (name, run["checkpoint_step"])
        # Resumed right after the checkpoint, to the end, with every loss of the uninterrupted run.
        assert resumed_steps == list(range(run["checkpoint_step"], steps)), (name, run["checkpoint_step"])
        assert {k: full[k] for k in stopped} == stopped, f"{name}: the stopped run differs before the stop"
        assert {k: full[k] for k in resumed} == resumed, (
            f"{name}: stopped after step {run['stop_after']}, resumed from step {run['checkpoint_step']}:\n"
            + "\n".join(f"  {k}: uninterrupted {full[k]!r} resumed {v!r}" for k, v in sorted(resumed.items()))
        )
        print(f"{name}: stopped after step {run['stop_after']}, resumed at step {run['checkpoint_step']}; "
              "uninterrupted/resumed losses " + ", ".join(
                  f"{step}: {full[(step, 'train/loss')]!r}/{resumed[(step, 'train/loss')]!r}" for step in resumed_steps[:3]))
    print(f"resume test: {time.monotonic() - started:.1f} s")
