"""Console script and `foley test` end to end on synthetic shards, through the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from foley.cli import main

REPO = Path(__file__).resolve().parents[1]
FOLEY = str(Path(sys.executable).with_name("foley"))


def test_console_script_exits_zero_on_success(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([FOLEY, "synth", "--out", str(tmp_path / "s"), "--clips", "1", "--seconds", "1",
                             "--size", "32"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([FOLEY, "synth", "--out", str(tmp_path / "s"), "--clips", "1"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "not empty" in result.stderr


def _fit(config: str, shards: dict, root: Path, *extra: str):
    cli = main(["fit", "--config", str(REPO / config),
                f"--data.init_args.train_shards={shards['train']}", f"--data.init_args.val_shards={shards['val']}",
                f"--trainer.default_root_dir={root}", "--trainer.max_epochs=1", "--trainer.logger=false",
                "--trainer.enable_progress_bar=false", *extra])
    return cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path


def test_foley_test_reports_exact_scores_for_a_stereo_stage(synth_shards, tmp_path):
    codec = _fit("configs/demo/stage1.yaml", synth_shards, tmp_path / "s1", "--data.init_args.batch_size=2")
    assert codec, "stage 1 wrote no checkpoint"
    stereo = _fit("configs/tiny/stage3.yaml", synth_shards, tmp_path / "s3",
                  f"--model.init_args.codec_checkpoint={codec}")
    out = tmp_path / "eval"
    main(["test", "--config", str(REPO / "configs/tiny/stage3.yaml"),
          "--config", str(REPO / "configs/tiny/test_synthetic.yaml"), f"--ckpt_path={stereo}",
          f"--model.init_args.codec_checkpoint={codec}",
          f"--data.init_args.test_shards={synth_shards['val']}", f"--trainer.default_root_dir={out}",
          f"--trainer.callbacks.init_args.output_dir={out / 'evaluation'}", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false"])
    report = json.loads((out / "evaluation" / "report.json").read_text())
    overall = report["overall"]
    assert report["num_clips"] == 2 and set(report["per_category"]) <= {"bouncing_ball", "drum", "lamp", "vehicle", "rain", "silence"}
    # The tiny stage 3 re-pans the true mono mixdown on its own STFT: every impact stays
    # exactly where the video has it and the mono content is unchanged.
    assert overall["onset_f1"] == 1.0 and overall["sync_offset"] < 1e-3
    assert abs(overall["kl_spectral"]) < 1e-6
    assert report["config"], "the report must carry the run configuration"
    assert len(list((out / "evaluation" / "generated").glob("*.wav"))) == 2
