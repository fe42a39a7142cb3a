"""The foley console script: LightningCLI subcommands plus the data tools."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foley.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
PROBE = str(REPO / "configs/tiny/probe.yaml")


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in [*LIGHTNING_COMMANDS, *TOOL_COMMANDS]:
        assert f"  {name} " in out


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_print_config_resolves_dotted_overrides(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", PROBE, "--data.init_args.batch_size=3", "--model.init_args.network.init_args.hidden=7", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["init_args"]["batch_size"] == 3
    assert cfg["model"]["init_args"]["network"]["init_args"]["hidden"] == 7
    assert cfg["model"]["init_args"]["network"]["class_path"] == "foley.models.probe.MotionLoudnessNet"


def test_omegaconf_interpolation_in_configs(tmp_path, capsys):
    cfg = yaml.safe_load(Path(PROBE).read_text())
    cfg["data"]["init_args"]["clip_seconds"] = 2.5
    cfg["model"]["init_args"]["network"]["init_args"]["kernel_size"] = "${data.init_args.batch_size}"
    path = tmp_path / "interp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(path), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["network"]["init_args"]["kernel_size"] == 2


def _fit_args(shards: dict, root: Path) -> list[str]:
    return [
        "fit", "--config", PROBE,
        f"--data.init_args.train_shards={shards['train']}",
        f"--data.init_args.val_shards={shards['val']}",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.logger.init_args.name=probe",
        "--trainer.logger.init_args.version=fixed",
    ]


def test_fit_through_real_cli_and_rerun_into_same_folder(synth_shards, tmp_path):
    root = tmp_path / "run"
    for _ in range(2):  # a rerun into an existing run folder must not abort
        cli = main(_fit_args(synth_shards, root))
        assert cli.trainer.global_step == 3  # one epoch: 6 clips at batch size 2
    metrics = (root / "probe" / "fixed" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
    assert (root / "probe" / "fixed" / "config.yaml").exists()


def test_ddp_two_cpu_processes(synth_shards, tmp_path):
    root = tmp_path / "ddp"
    args = _fit_args(synth_shards, root) + ["--trainer.strategy=ddp", "--trainer.devices=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "foley.cli", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ckpts = list(root.rglob("*.ckpt"))
    assert ckpts, "DDP run wrote no checkpoint"


def test_tool_flags_accept_dashes_and_bare_booleans(tmp_path):
    out = tmp_path / "synth"
    main(["synth", "--out", str(out), "--clips", "2", "--seconds", "1", "--shard-size", "1", "--size", "32"])
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    with pytest.raises(SystemExit) as exc:  # existing output is refused, not overwritten
        main(["synth", "--out", str(out), "--clips", "1", "--seconds", "1", "--size", "32"])
    assert exc.value.code == 2
    main(["synth", "--out", str(out), "--clips", "1", "--seconds", "1", "--size", "32", "--overwrite"])
    assert [p.name for p in out.glob("*.tar")] == ["shard-000000.tar"]


@pytest.mark.parametrize("configs", [
    ["configs/stage1.yaml"],
    ["configs/stage2.yaml"],
    ["configs/stage2.yaml", "configs/sizes/small.yaml"],
    ["configs/stage2.yaml", "configs/sizes/large.yaml"],
    ["configs/stage3.yaml"],
])
def test_paper_scale_configs_parse_with_size_overlays(configs, capsys):
    args = ["fit"]
    for config in configs:
        args += ["--config", str(REPO / config)]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    assert exc.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"].startswith("foley.stages.")
    if "configs/sizes/large.yaml" in configs:
        network = cfg["model"]["init_args"]["network"]["init_args"]
        assert (network["hidden_dim"], network["joint_depth"], network["audio_depth"]) == (896, 7, 14)
