"""The install layout: data_modules/ and callbacks/ exist only inside the foley namespace."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
