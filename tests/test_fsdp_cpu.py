"""Stage 2 under FSDP on CPU: two gloo processes through ``foley fit``, compared with DDP, and its
checkpoint used in one process.

FSDP here is torch's FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy``
(configs/tiny/fsdp.yaml; ``FlowModule.configure_model`` shards the MM-DiT and its EMA). Lightning's
``fsdp`` strategy (``FSDPStrategy``, torch FSDP1) cannot run on a CPU with the pinned lightning 2.6.6
and torch 2.14.1: the Trainer refuses it (``_check_strategy_and_fallback`` in
lightning/pytorch/trainer/connectors/accelerator_connector.py: "The strategy `fsdp` requires a GPU
accelerator, but received `accelerator='cpu'`"), and torch's FSDP1, given Lightning's
``device_id=None`` on a CPU, raises "FSDP needs a non-CPU accelerator device" (docs/scaling.md).

Runs (tiny stage 2 on the suite's 6 synthetic clips, 8 samples per epoch: 2 steps per epoch per
rank; gradient clipping at 0.1 acts at every step, as the gradient norms are 0.39-0.44, so the norm,
which FSDP reduces in another order than DDP, is part of the comparison):

- DDP, 2 processes, 3 epochs (6 optimiser steps);
- FSDP, 2 processes, 2 epochs writing sharded checkpoints, then resumed from its sharded last.ckpt
  for the third epoch, writing one gathered checkpoint file;
- one process resumed from that FSDP file, and one from DDP's last.ckpt, for a fourth epoch.

Slow suite: 3.7 to 6.6 minutes on the 2 shared cores (measured 2026-12-02; default-suite tests
stay under about 60 s). `pytest -m slow tests/test_fsdp_cpu.py` runs it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from helpers.stage2_parts import save_tiny_codec

REPO = Path(__file__).resolve().parents[1]
STAGE2 = str(REPO / "configs/tiny/stage2.yaml")
FSDP = str(REPO / "configs/tiny/fsdp.yaml")
# Unit roundoff of float32.
U32 = 2.0**-24


class GatheredWeights(Callback):
    """At the end of training, every rank writes its whole state dict (FSDP shards gathered) to
    ``out/rank{r}.pt``: what the ranks trained, to compare with each other and with the checkpoint."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        from torch.distributed.tensor import DTensor

        state = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
                 for k, v in pl_module.state_dict().items()}
        torch.save(state, Path(self.out) / f"rank{trainer.global_rank}.pt")


def _fit(shards: dict, codec: str, root: Path, epochs: int, *extra: str) -> subprocess.Popen:
    """Start ``foley fit`` of tiny stage 2 in its own process group (the test stops what it started)."""
    args = [
        "fit", "--config", STAGE2,
        f"--model.init_args.codec_checkpoint={codec}",
        f"--data.init_args.train_shards={shards['train']}", f"--data.init_args.val_shards={shards['val']}",
        "--data.init_args.samples_per_epoch=8", "--trainer.limit_train_batches=null",
        f"--trainer.max_epochs={epochs}", "--trainer.gradient_clip_val=0.1",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.logger.init_args.version=v", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           # The child imports this module for GatheredWeights (and helpers, as pytest does).
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    root.mkdir(parents=True, exist_ok=True)
    with (root / "stderr.txt").open("w") as stderr:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, "-m", "foley.cli", *args], cwd=root, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    _STARTED.append(process)
    return process


_STARTED: list[subprocess.Popen] = []


@pytest.fixture
def stop_runs_on_exit():
    """Stop the runs a failed test leaves behind (each with the worker processes it started)."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _finish(process: subprocess.Popen, root: Path) -> None:
    assert process.wait(timeout=1200) == 0, (root / "stderr.txt").read_text()[-4000:]


def _gather_callback(out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    return "--trainer.callbacks+=" + json.dumps({"class_path": "test_fsdp_cpu.GatheredWeights", "init_args": {"out": str(out)}})


def _losses(root: Path) -> dict[tuple[int, str], float]:
    """``{(step, "train/loss" | "val/loss"): value}`` of a run's CSV log."""
    values = {}
    with (root / "lightning_logs" / "v" / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            for name in ("train/loss", "val/loss"):
                if row.get(name):
                    values[(int(row["step"]), name)] = float(row[name])
    return values


def _tolerance(key: tuple[int, str], bound: dict[str, float]) -> float:
    """A logged loss's bound: the trained network's (training) or the EMA's (validation) per-step
    bound, times the optimiser steps before it."""
    return _updates(key) * bound["network." if key[1] == "train/loss" else "ema_network."]


def _updates(key: tuple[int, str]) -> int:
    """Optimiser steps before a logged loss: a training loss at step s comes before update s; a
    validation loss is logged with the step of the epoch's last update."""
    step, name = key
    return step if name == "train/loss" else step + 1


def _checkpoint(root: Path) -> Path:
    return root / "lightning_logs" / "v" / "checkpoints" / "last.ckpt"


def _adam_step_bound(betas: tuple[float, float], steps: int) -> float:
    """Largest ``|m_hat / sqrt(v_hat)|`` of Adam in its first ``steps`` steps, for any gradients.

    By Cauchy-Schwarz, ``|sum_j b1^j g_j| <= sqrt(sum_j (b1^2/b2)^j) sqrt(sum_j b2^j g_j^2)``, so
    ``|m_hat|/sqrt(v_hat) <= (1-b1)/(1-b1^t) sqrt((1-b2^t)/(1-b2)) sqrt(sum_{j<t} (b1^2/b2)^j)``
    (eps only makes it smaller); 1.0 at t = 1 and at most 1.02 for betas (0.9, 0.95), t <= 10.
    """
    b1, b2 = betas
    return max((1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt(sum((b1 * b1 / b2) ** j for j in range(t)))
               for t in range(1, steps + 1))


def _per_step_bound(checkpoint: dict, prefix: str, steps: int = 10) -> float:
    """Bound on how far one optimiser step moves the FSDP run's weights (``network.`` or
    ``ema_network.``) from the DDP run's, in the 2-norm, and so on the change of a loss.

    With 2 ranks both runs reduce gradients exactly (the sum of two float32 numbers does not
    depend on order, and halving is exact), and the first step's weights are equal. What can
    differ: (a) the clipping norm, which DDP takes over whole gradients and FSDP over shards
    before reducing across ranks: each is within (ceil(log2 N) + 2) u of the exact norm
    (pairwise summation of N squares, a square root, a division), so the two clip
    coefficients differ by delta_c <= 2 (ceil(log2 N) + 2) u; (b) where a shard starts, which
    moves SIMD tails, so each of AdamW's <= 8 elementwise roundings may fall differently (8 u).
    The gradient scale enters Adam's step m/sqrt(v) at most twice (m and v), so each element's
    step, lr |m/sqrt(v)| <= lr A (:func:`_adam_step_bound`), changes by <= lr A (2 delta_c + 8 u);
    over N elements the 2-norm of that is <= sqrt(N) lr A (2 delta_c + 8 u). Rounding w + step to
    float32 may then land one ulp apart, <= 2 u |w| per element, <= 2 u ||w|| in norm. A loss
    moves by at most its gradient norm (the averaged loss's is 0.39-0.44 here; we take 1 for
    either rank's loss) times that, to first order: the weights agree to ~1e-7 relative, so
    second-order terms are ~1e-14. The bound is ~1e-5 per step for the tiny network (N = 364k,
    ||w|| = 46); the measured differences are below 1.2e-7 (losses) and 7.3e-7 (weights after
    6 steps).
    """
    optimizer = checkpoint["hyper_parameters"]["optimizer"]["init_args"]
    lr, betas = float(optimizer["lr"]), tuple(float(b) for b in optimizer["betas"])
    params = [v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix) and v.dtype == torch.float32]
    count = sum(p.numel() for p in params)
    norm = math.sqrt(sum(float(p.double().square().sum()) for p in params))
    delta_c = 2 * (math.ceil(math.log2(count)) + 2) * U32
    return lr * _adam_step_bound(betas, steps) * math.sqrt(count) * (2 * delta_c + 8 * U32) + 2 * U32 * norm


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp_matches_ddp_and_its_checkpoint_loads_in_one_process(synth_shards, tmp_path, stop_runs_on_exit):
    codec = save_tiny_codec(tmp_path / "codec.pt")
    ddp, fsdp, fsdp_resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "fsdp_resumed"
    ddp_run = _fit(synth_shards, codec, ddp, 3, "--trainer.strategy=ddp", "--trainer.devices=2")
    fsdp_run = _fit(synth_shards, codec, fsdp, 2, "--config", FSDP, _gather_callback(fsdp / "gathered"))
    _finish(fsdp_run, fsdp)
    assert _checkpoint(fsdp).is_dir(), "the FSDP run wrote no sharded checkpoint"
    resumed_run = _fit(synth_shards, codec, fsdp_resumed, 3, "--config", FSDP,
                       "--trainer.strategy.init_args.save_distributed_checkpoint=false",
                       f"--ckpt_path={_checkpoint(fsdp)}", _gather_callback(fsdp_resumed / "gathered"))
    # One process continues each run for a fourth epoch (4 steps: one rank reads all 8 samples).
    single = {"fsdp": tmp_path / "single_fsdp", "ddp": tmp_path / "single_ddp"}
    _finish(ddp_run, ddp)
    single_runs = {"ddp": _fit(synth_shards, codec, single["ddp"], 4, "--trainer.devices=1", f"--ckpt_path={_checkpoint(ddp)}")}
    _finish(resumed_run, fsdp_resumed)
    single_runs["fsdp"] = _fit(synth_shards, codec, single["fsdp"], 4, "--trainer.devices=1",
                               f"--ckpt_path={_checkpoint(fsdp_resumed)}")

    ddp_checkpoint = torch.load(_checkpoint(ddp), map_location="cpu", weights_only=True)
    ddp_state = ddp_checkpoint["state_dict"]
    bound = {prefix: _per_step_bound(ddp_checkpoint, prefix) for prefix in ("network.", "ema_network.")}

    # Losses: the first is computed from identical weights by identical kernels, so it is equal;
    # later ones within the bound per optimiser step before them (with EMA decay, validation
    # weights are averages of the trained ones, within the same bound).
    ddp_losses = _losses(ddp)
    fsdp_losses = {**_losses(fsdp), **_losses(fsdp_resumed)}
    assert sorted(fsdp_losses) == sorted(ddp_losses) and len(ddp_losses) == 9, (sorted(fsdp_losses), sorted(ddp_losses))
    assert fsdp_losses[(0, "train/loss")] == ddp_losses[(0, "train/loss")]
    for key, value in sorted(ddp_losses.items()):
        assert abs(fsdp_losses[key] - value) <= _tolerance(key, bound), (key, fsdp_losses[key], value)

    # Both FSDP ranks hold the same model (parameters, EMA and the buffers training updates).
    for run in (fsdp, fsdp_resumed):
        rank0, rank1 = (torch.load(run / "gathered" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
        assert rank0.keys() == rank1.keys()
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    trained = torch.load(fsdp_resumed / "gathered" / "rank0.pt", weights_only=True)

    # After 6 steps the FSDP weights are within 6 steps' bound of DDP's; the buffers (the sync
    # standardiser's statistics: int64 and float64 sums of the frozen encoder's features on the same
    # clips) are equal.
    for prefix, per_step in bound.items():
        keys = [k for k in ddp_state if k.startswith(prefix)]
        floats = [k for k in keys if ddp_state[k].dtype == torch.float32]
        distance = math.sqrt(sum(float((trained[k].double() - ddp_state[k].double()).square().sum()) for k in floats))
        assert distance <= 6 * per_step, (prefix, distance, 6 * per_step)
        assert all(torch.equal(trained[k], ddp_state[k]) for k in set(keys) - set(floats))

    # The gathered checkpoint file holds exactly the trained weights, and loads in one process.
    checkpoint = torch.load(_checkpoint(fsdp_resumed), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 6
    assert checkpoint["state_dict"].keys() == trained.keys()
    assert all(torch.equal(checkpoint["state_dict"][k], trained[k]) for k in trained)
    from foley.stages.flow_module import FlowModule

    module = FlowModule.load_from_checkpoint(_checkpoint(fsdp_resumed), map_location="cpu")
    loaded = module.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained), [k for k in trained if not torch.equal(loaded[k], trained[k])]

    # A single-process fit resumed from the FSDP file continues as one resumed from DDP's
    # (same data, same draws; the starting weights and Adam moments differ only within the bound).
    for name, root in single.items():
        _finish(single_runs[name], root)
    from_fsdp, from_ddp = _losses(single["fsdp"]), _losses(single["ddp"])
    assert sorted(from_fsdp) == sorted(from_ddp) == [(6, "train/loss"), (7, "train/loss"), (8, "train/loss"),
                                                     (9, "train/loss"), (9, "val/loss")]
    for key, value in from_ddp.items():
        assert abs(from_fsdp[key] - value) <= _tolerance(key, bound), (key, from_fsdp[key], value)
