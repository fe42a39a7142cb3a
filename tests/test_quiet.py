"""A foley command shows foley's progress, not its dependencies' deprecations and tips."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from foley.quiet import EXPECTED_WARNINGS, silence_expected_warnings

REPO = Path(__file__).resolve().parents[1]

# What issue 10 saw on every command and in `make demo`; none may reach the user again.
NOISE = (
    "JsonargparseDeprecationWarning", "instantiate_classes", "add_instantiator", "skip_none",
    "LeafSpec", "litlogger", "litmodels", "💡 Tip", "in eval mode at the start of training",
    "set_vital", "predict returned None", "DeprecationWarning", "FutureWarning",
)


def test_only_the_listed_messages_are_hidden(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_expected_warnings()
        silence_expected_warnings()  # idempotent
        for module, message, category in (
            ("lightning.pytorch.cli", "``instantiate_classes`` was deprecated in v4.49.0", DeprecationWarning),
            ("lightning.pytorch.utilities._pytree", "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning),
            ("torchdata.stateful_dataloader.stateful_dataloader", "'set_vital' is deprecated, please do not call", UserWarning),
            ("lightning.pytorch.loops.fit_loop", "Found 114 module(s) in eval mode at the start of training. ...", UserWarning),
            ("lightning.pytorch.loops.prediction_loop", "predict returned None if it was on purpose, ignore this warning...", UserWarning),
        ):
            warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)
        assert caught == []
        # Everything else still shows: foley's own deprecations, other modules' eval-mode-free warnings.
        warnings.warn_explicit("``instantiate_classes`` was deprecated", DeprecationWarning, "foley/cli.py", 1, module="foley.cli")
        warnings.warn_explicit("something else", FutureWarning, "lightning/pytorch/trainer.py", 1, module="lightning.pytorch.trainer")
        assert [str(w.message) for w in caught] == ["``instantiate_classes`` was deprecated", "something else"]
    assert all(why for *_, why in EXPECTED_WARNINGS)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=rank_zero.name):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def _foley(*args: str, cwd: Path) -> str:
    """Run ``foley ARGS`` as `make demo` does (``python -m foley.cli``); returns stdout + stderr."""
    # "default" shows every warning once, including the DeprecationWarnings Python hides
    # unless they are raised in __main__, so the test does not depend on how foley is started.
    env = {**os.environ, "PYTHONWARNINGS": "default", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-m", "foley.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_foley_commands_print_no_dependency_noise(tmp_path: Path) -> None:
    """A tool (foley synth: jsonargparse) and a LightningCLI run of a stage with a frozen
    codec (stage 3 fit: Lightning's tips, pytree and eval-mode warnings)."""
    import torch

    from foley.models.bigvgan import BigVGAN
    from foley.models.codec import Codec
    from foley.models.mel import LogMelSpectrogram
    from foley.models.mel_vae import MelVAE

    shards = tmp_path / "shards"
    synth_output = _foley("synth", "--out", str(shards), "--clips", "2", "--seconds", "1", "--size", "32", cwd=tmp_path)
    assert "wrote 2 samples" in synth_output  # our progress is still shown
    torch.manual_seed(0)
    vae = MelVAE(n_mels=16, latent_channels=40, hidden_channels=16, encoder_layers=2, decoder_layers=2)
    vocoder = BigVGAN(num_mels=16, upsample_rates=(8, 8, 8), upsample_kernel_sizes=(16, 16, 16),
                      upsample_initial_channel=16, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    Codec(vae, vocoder, LogMelSpectrogram(n_mels=16)).save(tmp_path / "codec.pt")
    fit_output = _foley(
        "fit", "--config", str(REPO / "configs/tiny/stage3.yaml"), f"--model.init_args.codec_checkpoint={tmp_path / 'codec.pt'}",
        "--model.init_args.network.init_args.n_mels=16", f"--data.init_args.train_shards={shards}",
        f"--data.init_args.val_shards={shards}", "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert "Modules in eval mode" in fit_output and "max_steps=1" in fit_output  # the run really trained, frozen codec and all
    for output in (synth_output, fit_output):
        shown = [noise for noise in NOISE if noise in output]
        assert not shown, f"dependency noise in a foley command's output: {shown}\n{output}"
