import json
from pathlib import Path

import pytest

from foley.io.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "clip.mp4"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.suffix == ".mp4"  # muxers pick the format from the extension
        assert ".tmp" in tmp.name
        assert not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]


def test_atomic_path_keeps_original_on_error(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    target.write_text("original")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert target.read_text() == "original"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_atomic_path_without_write_fails_and_keeps_original(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("keep")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass
    assert target.read_text() == "keep"


def test_atomic_writers(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2.5]}
    atomic_write_text(tmp_path / "b.txt", "second")
    assert (tmp_path / "b.txt").read_text() == "second"
    assert len(list(tmp_path.iterdir())) == 3
