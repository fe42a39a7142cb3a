"""The install layout: data_modules/, callbacks/ and configs/ exist only inside the foley
namespace, and the demo runs from a (non-editable) wheel install."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)


def test_namespaced_packages_import_from_anywhere(tmp_path):
    result = _run_python("import foley.data_modules, foley.callbacks, foley.cli; print('ok')", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_no_generic_top_level_packages(tmp_path):
    for name in ("callbacks", "data_modules"):
        result = _run_python(f"import {name}", tmp_path)
        assert result.returncode != 0, f"'import {name}' must fail after install"
        assert "ModuleNotFoundError" in result.stderr


def _class_paths(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "class_path":
                yield value
            else:
                yield from _class_paths(value)
    elif isinstance(node, list):
        for item in node:
            yield from _class_paths(item)


def test_configs_name_foley_classes_by_their_installed_path():
    configs = sorted(REPO.glob("configs/**/*.yaml"))
    assert configs, "no configs found"
    for path in configs:
        for class_path in _class_paths(yaml.safe_load(path.read_text())):
            root = class_path.split(".")[0]
            assert root not in {"data_modules", "callbacks", "src"}, f"{path}: {class_path}"


def test_configs_are_package_data_of_the_installed_package(tmp_path: Path) -> None:
    code = (
        "import importlib.resources as r; from foley.demo import config_file; "
        "print(r.files('foley.configs').joinpath('tiny/stage2.yaml').read_text() == "
        "config_file('tiny/stage2.yaml').read_text())"
    )
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    with pytest.raises(FileNotFoundError, match="ships no config 'tiny/absent.yaml'"):
        from foley.demo import config_file

        config_file("tiny/absent.yaml")


# What a wheel is built from (setup.cfg reads README.md); everything else stays behind, so
# the wheel cannot lean on files that are only in a checkout.
_BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "src", "data_modules", "callbacks", "configs")


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the quick demo took 9 min on 2 shared cores; the suite default is 15
def test_quick_demo_runs_from_a_wheel_outside_the_repository(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in _BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("foley-*.whl")

    # A fresh venv that sees this environment's dependencies (torch etc. are not reinstalled)
    # but not its editable foley: the project venv's site-packages go on sys.path through a
    # plain path line, which does not run the .pth files there (the editable finder is one).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = _venv_python(venv)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    if sys.prefix != sys.base_prefix:
        Path(purelib, "_project_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)

    work = tmp_path / "elsewhere"  # not the repository: nothing can be read relative to it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [str(python), "-c", "import json, foley, importlib.resources as r; print(json.dumps([foley.__file__, "
         "sorted(str(p.relative_to(r.files('foley.configs'))) for p in r.files('foley.configs').rglob('*.yaml'))]))"],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    )
    package_file, shipped = json.loads(probe.stdout)
    assert Path(package_file).is_relative_to(venv), f"foley was imported from {package_file}, not from the wheel"
    assert shipped == sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))

    out = tmp_path / "demo_out"
    demo = subprocess.run([str(python), "-m", "foley.demo", "--quick", "--out", str(out)], cwd=work, env=env,
                          capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["test_clips"] == 2 and report["generated"]["num_clips"] == 2.0
    assert len(list((out / "generated").glob("*.mp4"))) == 2
    assert (out / "model" / "pipeline.json").is_file()
    # Every stage was configured from the configs installed with the wheel: stage 1, extract
    # (twice), stage 2 and stage 3 (two overlays).
    config_args = []
    for line in (out / "demo.log").read_text().splitlines():
        tokens = line.split()
        config_args += [tokens[i + 1] for i, token in enumerate(tokens[:-1]) if token in ("--config", "--fit_config")]
    assert len(config_args) == 6
    installed = Path(purelib) / "foley" / "configs"
    assert all(Path(arg).is_relative_to(installed) for arg in config_args), config_args
