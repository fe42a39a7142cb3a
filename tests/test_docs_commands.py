"""The commands in README.md and docs/*.md run as written: every `foley …` command parses,
and every benchmark command is complete with options its script accepts.

Convention for documentation writers:

* Commands live in fenced code blocks tagged as shell (```` ```bash ````, ``sh``, ``shell``,
  ``console``). Every line there that starts with ``foley`` (optionally after ``$ ``) is a
  command; ``\\`` continues it on the next line and ``# …`` ends it with a comment.
  Untagged blocks are text (diagrams, file trees) and must not hold commands: a line
  ``foley <subcommand> --…`` in one fails the test (tag the block ``bash``).
* Paths may be placeholders (``runs/stage2/.../last.ckpt``, ``my_videos/``): a command is
  *parsed*, not run, so its files need not exist. Config files (``--config``) are read,
  so they must exist.
* LightningCLI commands (fit, validate, test, predict) are parsed by ``FoleyCLI`` up to the
  point where it would build the model (``--print_config`` alone would not notice a
  missing model or manifest): unknown options, missing required settings and bad values fail.
  The tools (synth, prepare, extract, generate, export) are parsed against their
  signatures: unknown options and bad values fail.
* Benchmark commands (``python benchmarks/NAME.py …``, ``python -m foley.demo …``), in a
  shell block or in an inline code span, are complete: no ``…``, and every ``--option``
  (and subcommand) they use is one the script's ``--help`` lists. In docs/benchmarks.md,
  whose every number names its command, inline ``foley … --…`` spans are parsed too.
* A line that is deliberately not a runnable command (a syntax sketch) ends with
  ``# doc-test: skip``. Keep these rare: a sketch belongs in prose, not in a code block.
"""
from __future__ import annotations

import importlib
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from foley.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS, FoleyCLI, main, parse_tool_args, tool_argv
from foley.quiet import silence_expected_warnings

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_MARKER = "# doc-test: skip"


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}"


@dataclass(frozen=True)
class DocCommand:
    """One documented command and where it is written."""

    path: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return _where(self.path, self.line)


SHELL_FENCES = {"bash", "sh", "shell", "console", "zsh"}


def _fenced_lines(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, fence language, stripped line)`` for every line inside a fenced block."""
    lines: list[tuple[int, str, str]] = []
    language: str | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("```"):
            language = line[3:].strip().lower() if language is None else None
            continue
        if language is not None:
            lines.append((number, language, line))
    return lines


def _shell_commands(path: Path) -> list[DocCommand]:
    """Every command line of the shell-tagged fenced blocks of ``path`` (continuations joined)."""
    found: list[DocCommand] = []
    pending: str | None = None
    start = previous = 0
    for number, language, line in _fenced_lines(path):
        if language not in SHELL_FENCES or (pending is not None and number != previous + 1):
            pending = None
        if language not in SHELL_FENCES:
            continue
        previous = number
        if pending is None:
            line = line.removeprefix("$ ")
            if not line or line.startswith("#"):
                continue
            pending, start = "", number
        pending += " " + line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        found.append(DocCommand(path, start, pending.strip()))
        pending = None
    return found


def documented_commands(paths: list[Path] = DOCS) -> list[DocCommand]:
    """The ``foley`` commands of the shell-tagged fenced blocks of ``paths``."""
    return [c for path in paths for c in _shell_commands(path) if c.text == "foley" or c.text.startswith("foley ")]


def commands_outside_shell_blocks(paths: list[Path] = DOCS) -> list[str]:
    """``file:line`` of command-like lines (``foley <subcommand> --…``) in untagged or non-shell blocks."""
    subcommands = "|".join(re.escape(name) for name in [*LIGHTNING_COMMANDS, *TOOL_COMMANDS])
    pattern = re.compile(rf"^(\$ )?foley ({subcommands})\b.* --?[a-z]")
    return [_where(path, number) for path in paths for number, language, line in _fenced_lines(path)
            if language not in SHELL_FENCES and pattern.match(line)]


class _Parsed(Exception):
    """Raised by :class:`_ParseOnlyCLI` once the command line is parsed and validated."""


class _ParseOnlyCLI(FoleyCLI):
    """FoleyCLI that stops where it would build the model, data and trainer."""

    def before_instantiate_classes(self) -> None:
        raise _Parsed


def parse_error(command: str, capsys: pytest.CaptureFixture[str]) -> str | None:
    """Why ``command`` (a ``foley …`` line) does not parse, or None if it does."""
    argv = tool_argv(shlex.split(command, comments=True)[1:])
    if not argv or argv[0] in ("-h", "--help"):
        main(argv)
        return None
    name = argv[0]
    silence_expected_warnings()  # as foley.cli.main does
    try:
        if name in LIGHTNING_COMMANDS:
            _ParseOnlyCLI(args=argv)
            return "FoleyCLI parsed the command but did not reach instantiation"
        if name in TOOL_COMMANDS:
            parse_tool_args(name, argv[1:])
            return None
    except _Parsed:
        return None
    except SystemExit as stop:
        if stop.code in (0, None):  # --help or --print_config in the documented command
            return None
        return capsys.readouterr().err.strip()[-2000:] or f"exit status {stop.code}"
    return f"unknown subcommand {name!r}; known: {', '.join([*LIGHTNING_COMMANDS, *TOOL_COMMANDS])}"


COMMANDS = [c for c in documented_commands() if SKIP_MARKER not in c.text]


def test_the_docs_hold_commands_and_few_skips() -> None:
    everything = documented_commands()
    subcommands = {shlex.split(c.text, comments=True)[1] for c in COMMANDS if len(shlex.split(c.text, comments=True)) > 1}
    assert {"synth", "prepare", "fit", "test", "generate"} <= subcommands, subcommands
    skipped = [c.where for c in everything if SKIP_MARKER in c.text]
    assert len(skipped) <= 2, f"too many `{SKIP_MARKER}` lines: {skipped}"
    hidden = commands_outside_shell_blocks()
    assert not hidden, f"commands in code blocks not tagged as shell (tag them ```bash so they are checked): {hidden}"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(command: DocCommand, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)  # commands are written for the repository root (configs/…)
    monkeypatch.setattr(sys, "argv", ["foley"])  # LightningCLI warns when pytest's own arguments are there
    error = parse_error(command.text, capsys)
    assert error is None, f"{command.where}: `{command.text}` does not parse as documented:\n{error}"


@pytest.mark.parametrize(
    "command,why",
    [
        ("foley synth data/synth --clips 4", "positional output folder; synth takes --out"),
        ("foley synth --out data/synth --clipz 4", "misspelt option"),
        ("foley generate clips/ --out generated/ --no_such_flag 1", "unknown option"),
        ("foley fit --config configs/tiny/stage1.yaml --trainer.no_such_flag=1", "unknown Trainer option"),
        ("foley test --config configs/test_kling_audio_eval.yaml --ckpt_path run.ckpt --data.init_args.manifest=m.csv", "no model"),
        ("foley test --config configs/stage2.yaml --config configs/test_kling_audio_eval.yaml --ckpt_path run.ckpt", "no manifest"),
        ("foley frobnicate --out x", "unknown subcommand"),
    ],
)
def test_a_wrong_command_is_caught(command: str, why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["foley"])
    assert parse_error(command, capsys), why


def test_shell_blocks_continuations_and_skips_are_read(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "`foley synth --inline` is prose, not a command.\n\n"
        "```bash\n"
        "$ foley synth --out a \\\n"
        "    --clips 2   # two clips\n"
        "make demo\n"
        "foley fit|validate  # doc-test: skip\n"
        "```\n"
        "foley prepare outside --out b\n"
        "```\n"
        "foley synth (a diagram) ──┐\n"
        "```\n"
    )
    found = documented_commands([doc])
    assert [(c.line, c.text) for c in found] == [(4, "foley synth --out a  --clips 2   # two clips"),
                                                (7, "foley fit|validate  # doc-test: skip")]
    assert commands_outside_shell_blocks([doc]) == []
    doc.write_text("```\nfoley synth --out a\n```\n")
    assert len(commands_outside_shell_blocks([doc])) == 1


BENCHMARK_COMMAND = re.compile(r"^(?:\.venv/bin/)?python3? (?:(?P<script>benchmarks/[\w/]+\.py)|-m (?P<module>foley\.demo))(?P<args>\s.*)?$")


def benchmark_commands(paths: list[Path] = DOCS) -> list[DocCommand]:
    """``python benchmarks/….py`` and ``python -m foley.demo`` commands: shell blocks and inline code spans."""
    found = [c for path in paths for c in _shell_commands(path) if BENCHMARK_COMMAND.match(c.text)]
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
            command = " ".join(match.group(1).split())
            if BENCHMARK_COMMAND.match(command):
                found.append(DocCommand(path, text.count("\n", 0, match.start()) + 1, command))
    return found


def _help(command: DocCommand, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    """``--help`` text of the script or module ``command`` runs (of its subcommand, if any), and its arguments."""
    match = BENCHMARK_COMMAND.match(command.text)
    assert match is not None
    args = shlex.split(match.group("args") or "", comments=True)
    sub = [args[0]] if args and not args[0].startswith("-") and match.group("script") else []
    target = match.group("script") or match.group("module")
    monkeypatch.setattr(sys, "argv", [target, *sub, "--help"])
    with pytest.raises(SystemExit) as stop:
        if match.group("script"):
            runpy.run_path(str(REPO / target), run_name="__main__")
        else:  # a module with main(argv), e.g. foley.demo (already imported: no runpy)
            importlib.import_module(target).main([*sub, "--help"])
    assert stop.value.code in (0, None), f"{command.where}: `{target} {' '.join(sub)} --help` failed: {capsys.readouterr().err}"
    return capsys.readouterr().out, args


BENCHMARKS = benchmark_commands()
BENCHMARK_DOC = REPO / "docs" / "benchmarks.md"


def inline_foley_commands(path: Path = BENCHMARK_DOC) -> list[DocCommand]:
    """Inline code spans of ``path`` that are whole ``foley`` command lines (with an option)."""
    text = path.read_text(encoding="utf-8")
    spans = ((match.start(), " ".join(match.group(1).split())) for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text))
    return [DocCommand(path, text.count("\n", 0, start) + 1, span) for start, span in spans
            if span.startswith("foley ") and " --" in span]


INLINE_FOLEY = inline_foley_commands()


@pytest.mark.parametrize("command", INLINE_FOLEY, ids=[c.where for c in INLINE_FOLEY])
def test_benchmark_doc_foley_commands_parse(command: DocCommand, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["foley"])
    assert "…" not in command.text, f"{command.where}: `{command.text}` is not complete (…)"
    error = parse_error(command.text, capsys)
    assert error is None, f"{command.where}: `{command.text}` does not parse:\n{error}"


def test_the_benchmark_docs_name_their_commands() -> None:
    scripts = {BENCHMARK_COMMAND.match(c.text).group("script") for c in BENCHMARKS}  # type: ignore[union-attr]
    assert {"benchmarks/bench_demo_ablations.py", "benchmarks/bench_mmdit.py", "benchmarks/bench_codec.py"} <= scripts, scripts


@pytest.mark.parametrize("command", BENCHMARKS, ids=[c.where for c in BENCHMARKS])
def test_documented_benchmark_command_is_complete(command: DocCommand, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    assert "…" not in command.text, f"{command.where}: `{command.text}` is not complete (…)"
    help_text, args = _help(command, monkeypatch, capsys)
    for arg in args:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), \
                f"{command.where}: `{command.text}` uses {option}, which the script does not accept:\n{help_text}"
