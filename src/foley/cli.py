"""The ``foley`` command line.

``foley fit|validate|test|predict`` are Lightning's own subcommands (LightningCLI), so
every Trainer flag, ``--print_config``, dotted overrides and multi-file ``--config``
overlays work as Lightning users expect. The data tools (``synth``, ``prepare``,
``extract``, ``generate``, ``export``, ``app``) are plain typed functions exposed through jsonargparse, so
their ``--help`` comes from their signatures and docstrings.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ArgumentParser, ActionConfigFile
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from foley.quiet import silence_expected_warnings

logger = logging.getLogger(__name__)

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "Train a stage (Lightning Trainer.fit).",
    "validate": "Run validation on a checkpoint.",
    "test": "Benchmark a checkpoint (e.g. on Kling-Audio-Eval).",
    "predict": "Run Trainer.predict.",
}

# Tool subcommands are resolved lazily so `foley fit` never imports video/codec tooling
# it does not need, and a missing optional dependency only hurts the command that uses it.
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("foley.synth.world:synth", "Write the built-in synthetic audio-visual world as shards."),
    "prepare": ("foley.prepare:prepare", "Cut real videos (folder or manifest) into training shards."),
    "extract": ("foley.extract:extract", "Precompute codec latents and encoder features into shards."),
    "generate": ("foley.generate:generate", "Generate stereo Foley for videos and mux it into mp4."),
    "export": ("foley.export:export", "Write a model folder (JSON + safetensors) from `foley fit` checkpoints."),
    "app": ("foley.app:app", "Serve a web page (Gradio) that adds stereo Foley to an uploaded video."),
    "convert mmaudio": ("foley.convert.mmaudio:convert", "Convert MMAudio's released 44.1 kHz checkpoints to a model folder."),
}


class FoleyCLI(LightningCLI):
    """LightningCLI with foley's defaults.

    Configs are parsed in OmegaConf mode so shared values (sample rate, latent rate, frame
    rates, clip seconds) are written once and referenced with ``${...}`` elsewhere. Reruns
    into an existing run folder overwrite the saved ``config.yaml`` of that run instead of
    aborting.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf"},
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=list(args) if args is not None else None,
            run=run,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar) and bar.theme.metrics_format == ".3f":
            # Rich's default ".3f" formats every bar value as a float, including the logger
            # version, which then shows as "v_num: 0.000"; ".4g" keeps integers integral and
            # shows losses with four significant digits.
            bar.theme = dataclasses.replace(bar.theme, metrics_format=".4g")
        return trainer


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def parse_tool_args(name: str, argv: Sequence[str]) -> tuple[Callable[..., Any], dict[str, Any]]:
    """Parse ``argv`` against the signature of tool ``name`` without running it.

    Returns:
        The tool's function and its keyword arguments. Exits with status 2 and a usage
        message on an unknown option or a bad value, as ``foley NAME`` would.
    """
    target, help_text = TOOL_COMMANDS[name]
    function = _resolve(target)
    parser = ArgumentParser(prog=f"foley {name}", description=help_text, parser_mode="omegaconf")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the arguments below.")
    # Input files are positional (`foley generate a.mp4 b.mp4 --out DIR`); everything
    # else is an option, so `--out` reads the same in every tool.
    inputs = inspect.signature(function).parameters.get("inputs")
    parser.add_function_arguments(function, as_positional=False, skip={"inputs"} if inputs else None)
    if inputs is not None:
        # Optional when the tool has a mode without input files (`foley generate --text-only`).
        nargs = "+" if inputs.default is inspect.Parameter.empty else "*"
        parser.add_argument("inputs", nargs=nargs, help="Video files or folders (or manifests).")
    cfg = parser.parse_args(_normalise_tool_argv(function, argv))
    cfg.pop("config", None)
    kwargs = parser.instantiate(cfg).as_dict()
    kwargs.pop("config", None)
    return function, kwargs


def run_tool(name: str, argv: Sequence[str]) -> Any:
    """Parse ``argv`` against the signature of tool ``name`` and call it."""
    function, kwargs = parse_tool_args(name, argv)
    return function(**kwargs)


def _normalise_tool_argv(function: Callable[..., Any], argv: Sequence[str]) -> list[str]:
    """Accepts ``--shard-size`` as well as ``--shard_size`` and bare boolean flags.

    Tool parameters use underscores and jsonargparse wants a value for booleans; users
    type ``--negative-prompt`` and ``--overwrite`` as in any Unix tool.
    """
    hints = typing.get_type_hints(function)
    flags = {name for name, hint in hints.items() if hint is bool}
    out: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            arg = "--" + name + sep + value
            following = args[i + 1] if i + 1 < len(args) else None
            if name in flags and not sep and (following is None or following.startswith("-")):
                arg += "=true"
        out.append(arg)
    return out


def tool_argv(argv: Sequence[str]) -> list[str]:
    """Joins two-word tools: ``convert mmaudio ...`` -> ``["convert mmaudio", ...]`` (one tool per source)."""
    argv = list(argv)
    if len(argv) > 1 and argv[0] == "convert" and not argv[1].startswith("-"):
        return [f"convert {argv[1]}", *argv[2:]]
    return argv


def overview() -> str:
    """Text of ``foley --help``: every subcommand, Lightning's and the tools."""
    lines = ["usage: foley <command> [options]   (foley <command> --help for details)", "", "Training and evaluation (LightningCLI):"]
    lines += [f"  {name:<10} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Data and inference tools:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in TOOL_COMMANDS.items()]
    lines += ["", "Example: foley fit --config configs/stage2.yaml --config configs/sizes/small.yaml"]
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> Any:
    """Entry point of the ``foley`` console script.

    Args:
        args: command line without the program name; ``None`` reads ``sys.argv``.
    """
    silence_expected_warnings()
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(overview() + "\n")
        return None
    argv = tool_argv(argv)
    if argv[0] in TOOL_COMMANDS:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            return run_tool(argv[0], argv[1:])
        except (FileExistsError, FileNotFoundError, ValueError) as error:
            # A user mistake (bad path, existing output, bad value): say what and exit,
            # without a traceback that hides the message.
            logger.error("foley %s: %s", argv[0], error)
            raise SystemExit(2) from error
    if argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
        sys.stderr.write(f"foley: unknown command {argv[0]!r}\n\n{overview()}\n")
        raise SystemExit(2)
    try:
        # None lets LightningCLI read sys.argv itself (passing it too makes Lightning warn).
        return FoleyCLI(args=None if args is None else argv)
    except SIGTERMException as stop:
        # Lightning stops a fit on SIGTERM after the current step (checkpoint callbacks with
        # save_on_exception write it) but exits with status 0; exit as a terminated process
        # does, so a scheduler sees the job as stopped, not finished.
        raise SystemExit(128 + signal.SIGTERM) from stop


def console() -> None:
    """Console-script entry: runs :func:`main` and exits 0 on success (its return value is for Python callers)."""
    main()


if __name__ == "__main__":
    console()
