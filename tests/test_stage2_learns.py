"""Stage 2 learns the timing from the video (default suite): the model learns, not only runs.

The demo's chain, shrunk and run in-process (no ``foley`` subprocesses): ``foley synth``
writes a small training set and a held-out test set of clips whose sounds are impacts
(bouncing ball, drum, lamp switch); ``foley fit`` trains the stage-1 codec of
``configs/demo/stage1.yaml`` (Mel-VAE + training-free Griffin-Lim) and, after ``foley
extract``, the tiny stage 2 of ``configs/tiny/stage2.yaml``. The trained model then
generates the held-out clips from their frames, and from the same frames shuffled in time
(same model, same pictures, no timing), and the exact synthetic-world evaluator scores both
against the true onsets (F1, ±50 ms).

The margin comes from the spread over seeds of the whole run (data, codec, model and noise
draws), measured with ``python tests/test_stage2_learns.py --seeds 0 1 2 3 4 5 6 7``; the
table is in the ``MARGIN`` comment. The second test shows the check can fail: the same
model generating without its sync stream (the placeholder it was trained with under
condition dropout) does not pass it.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from foley.stages.flow_module import FlowModule

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CATEGORIES = ["bouncing_ball", "drum", "lamp"]  # clear onsets; rain and engines are not onset-scored
SECONDS = 2.0
TRAIN_CLIPS = 256  # measured at 320 steps: 256 clips x 10 epochs F1 0.64-0.72, 128 x 20 epochs 0.62
TEST_CLIPS = 32
SIZE = 32  # the tiny encoders read 32 px frames; rendering at that size skips resizing
STAGE1_EPOCHS = 2  # 64 steps: the true audio through the codec scores onset F1 0.87-0.96 (one epoch: 0.92 at seed 0)
STAGE2_EPOCHS = 10  # 320 steps of batch 8
STAGE2_BATCH = 8
# The config's 1e-3 is for the demo's 1920 steps; at these 320 steps 3e-3 gave onset F1 0.64 and
# 0.72 (two runs), 1e-3 0.65, 5e-3 0.53.
STAGE2_LR = 3e-3
SAMPLING = {"steps": 8, "cfg": 3.0}
# Griffin-Lim is most of the scoring time; onset scores need only its magnitudes (seed 0: codec
# ceiling 0.963 with 4 to 32 iterations; gap 0.446 with 4, 0.427 with 8).
GRIFFIN_LIM_ITERATIONS = 4
WORKERS = 1  # one DataLoader process decodes while the trainer computes: both of CI's 2 cores work

# Onset F1 from the video minus onset F1 from time-shuffled frames (same model, clips and noise),
# measured over 8 seeds of the whole run (`python tests/test_stage2_learns.py --seeds 0 1 2 3 4 5 6 7`):
#
#   seed               0     1     2     3     4     5     6     7   mean  std
#   from the video   0.667 0.536 0.641 0.541 0.537 0.454 0.534 0.605 0.564 0.069
#   shuffled frames  0.252 0.144 0.166 0.156 0.133 0.182 0.169 0.132 0.167 0.039
#   gap              0.415 0.393 0.475 0.385 0.405 0.272 0.365 0.472 0.398 0.064
#   gap, no sync     0.000 in every seed (the same F1 from real and shuffled frames)
#   codec ceiling    0.963 0.889 0.909 0.905 0.869 0.866 0.880 0.910 0.899 0.031
#
# "no sync": the same trained models generating without their sync stream. A model trained
# without it (sync_encoder: null for extract and fit, seed 0) scored 0.189 from the video and
# 0.189 from shuffled frames: gap 0 too. MARGIN is the mean gap minus 3 standard deviations
# (0.206): 0.07 under the worst seed, 0.2 over every gap without the sync stream. Runs of one
# seed also differ by a few hundredths: x264 encodes some 32 px clips differently from one
# process to the next (the rendered frames are identical).
MARGIN = 0.2
MIN_CEILING = 0.8  # codec round-trip onset F1: mean of the seeds above minus 3 standard deviations


@dataclass
class TrainedRun:
    """A trained tiny stage 2 and the held-out clips it is scored on."""

    module: FlowModule
    test_batches: list[dict]
    seed: int


def _fit(*args: str):
    from foley.cli import main

    return main(["fit", *args, "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                 f"--data.init_args.num_workers={WORKERS}",
                 "--trainer.limit_val_batches=0", "--data.init_args.val_shards=null"])


def train_tiny_stage2(root: Path, seed: int = 0) -> TrainedRun:
    """synth → stage 1 → extract → stage 2, in ``root``; returns the trained FlowModule."""
    from foley.data_modules import FoleyDataModule
    from foley.extract import extract
    from foley.synth.world import synth

    root = Path(root)
    train = synth(out=root / "train", clips=TRAIN_CLIPS, seconds=SECONDS, seed=seed, size=SIZE,
                  shard_size=TRAIN_CLIPS, categories=CATEGORIES, overwrite=True)
    test = synth(out=root / "test", clips=TEST_CLIPS, seconds=SECONDS, seed=seed + 1000, size=SIZE,
                 shard_size=TEST_CLIPS, categories=CATEGORIES, overwrite=True)
    stage1 = _fit("--config", str(CONFIGS / "demo/stage1.yaml"), f"--seed_everything={seed}",
                  f"--data.init_args.train_shards={train}", f"--data.init_args.clip_seconds={SECONDS}",
                  f"--model.init_args.codec.init_args.vocoder.init_args.n_iter={GRIFFIN_LIM_ITERATIONS}",
                  f"--trainer.max_epochs={STAGE1_EPOCHS}", f"--trainer.default_root_dir={root / 'stage1'}")
    codec = root / "codec.pt"
    stage1.model.export_codec(codec)
    common = [f"--seed_everything={seed}", f"--data.init_args.clip_seconds={SECONDS}",
              f"--model.init_args.codec_checkpoint={codec}"]
    features = extract(CONFIGS / "tiny/stage2.yaml", str(train), root / "features", overrides=common,
                       num_workers=WORKERS, accelerator="cpu", devices=1, overwrite=True)
    stage2 = _fit("--config", str(CONFIGS / "tiny/stage2.yaml"), *common, f"--data.init_args.train_shards={features}",
                  "--data.init_args.load_video=false", f"--data.init_args.batch_size={STAGE2_BATCH}",
                  "--data.init_args.shuffle_buffer=64", f"--model.init_args.optimizer.init_args.lr={STAGE2_LR}",
                  f"--trainer.max_epochs={STAGE2_EPOCHS}", "--trainer.limit_train_batches=null",
                  f"--trainer.default_root_dir={root / 'stage2'}")
    module = stage2.model.eval()
    # The held-out clips as the trained model's DataModule decodes them (its frame rates and sizes).
    hparams = stage2.datamodule.hparams
    keep = ("sample_rate", "clip_fps", "clip_size", "clip_crop", "sync_fps", "sync_size")
    datamodule = FoleyDataModule(val_shards=str(test), clip_seconds=SECONDS, batch_size=TEST_CLIPS, num_workers=0,
                                 **{k: hparams[k] for k in keep if k in hparams})
    datamodule.setup("validate")
    return TrainedRun(module, list(datamodule.val_dataloader()), seed)


def shuffled_in_time(batch: dict, seed: int) -> dict:
    """The batch with the frames of each stream in a random order (the same for every clip)."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(batch)
    for name in ("clip_frames", "sync_frames"):
        out[name] = batch[name][:, torch.randperm(batch[name].shape[1], generator=generator)]
    return out


def without_sync(batch: dict) -> dict:
    """The batch without its sync frame stream: the model uses its learnt placeholder instead."""
    return {k: v for k, v in batch.items() if k not in ("sync_frames", "sync_mask")}


def _no_sync(batch: dict, seed: int) -> dict:
    return without_sync(batch)


def _shuffled_no_sync(batch: dict, seed: int) -> dict:
    return without_sync(shuffled_in_time(batch, seed))


def onset_scores(run: TrainedRun, transform=None, reconstruct: bool = False) -> dict[str, float]:
    """Onset scores of the run's held-out clips: generated from (transformed) frames, or, with
    ``reconstruct``, the true audio through the codec (the ceiling stage 2 can reach)."""
    from foley.metrics.synthetic import SyntheticWorldMetric

    metric = SyntheticWorldMetric(categories=CATEGORIES)
    module = run.module
    for index, batch in enumerate(run.test_batches):
        if reconstruct:
            mono = batch["audio_mono"]
            wave = module.codec.decode(module.codec.encode(mono), mono.shape[-1])[:, None]
        else:
            batch = transform(batch, run.seed + index) if transform is not None else batch
            wave = module.generate(batch, seed=run.seed, **SAMPLING)
        metric.update(wave, batch, module.sample_rate)
    return {k: float(v) for k, v in metric.compute().items()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, single_thread) -> TrainedRun:
    return train_tiny_stage2(tmp_path_factory.mktemp("stage2_learns"), seed=0)


# 72 s of CPU (user + system, with the DataLoader worker that runs beside the trainer), 108 s wall
# on 2 cores shared with other jobs (load ~5); the timeout leaves room for a busier machine.
@pytest.mark.timeout(360)
def test_stage2_onsets_follow_the_video_frames(trained_run: TrainedRun) -> None:
    ceiling = onset_scores(trained_run, reconstruct=True)
    # The codec is not the limit: the true audio through it keeps its onsets.
    assert ceiling["onset_f1"] >= MIN_CEILING, ceiling
    video = onset_scores(trained_run)
    shuffled = onset_scores(trained_run, transform=shuffled_in_time)
    logger.info("onset F1: from the video %.3f, shuffled frames %.3f, codec ceiling %.3f",
                video["onset_f1"], shuffled["onset_f1"], ceiling["onset_f1"])
    assert video["onset_f1"] - shuffled["onset_f1"] >= MARGIN, (video, shuffled)


@pytest.mark.timeout(360)  # trains the run too when it is selected alone
def test_the_check_fails_without_the_sync_stream(trained_run: TrainedRun) -> None:
    """Same model, same clips, the sync frames withheld (real and shuffled): the gap is gone."""
    video = onset_scores(trained_run, transform=_no_sync)
    shuffled = onset_scores(trained_run, transform=_shuffled_no_sync)
    assert video["onset_f1"] - shuffled["onset_f1"] < MARGIN, (video, shuffled)


def _measure(seeds: list[int], root: Path) -> None:
    """Per-seed onset F1 from the video and from shuffled frames (the spread behind ``MARGIN``)."""
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        wall, cpu = time.perf_counter(), time.process_time()
        run = train_tiny_stage2(root / f"seed{seed}", seed)
        row = {"seed": seed, "video": onset_scores(run)["onset_f1"],
               "shuffled": onset_scores(run, transform=shuffled_in_time)["onset_f1"],
               "video_no_sync": onset_scores(run, transform=_no_sync)["onset_f1"],
               "shuffled_no_sync": onset_scores(run, transform=_shuffled_no_sync)["onset_f1"],
               "ceiling": onset_scores(run, reconstruct=True)["onset_f1"],
               "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        row["gap"] = row["video"] - row["shuffled"]
        rows.append(row)
        print("ROW", json.dumps(row), flush=True)
    gaps = torch.tensor([r["gap"] for r in rows])
    print(f"gap: min {gaps.min():.3f} mean {gaps.mean():.3f} std {gaps.std():.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=_measure.__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--root", type=Path, default=Path("/tmp/stage2_learns"))
    args = parser.parse_args()
    _measure(args.seeds, args.root)
