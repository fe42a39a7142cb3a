import json
import tarfile
from pathlib import Path

import pytest

from foley.io.shards import ShardWriter, list_shards, read_shard


def _sample(i: int) -> dict:
    return {"flac": bytes([i]) * 10, "json": {"key": f"s-{i}", "value": i}}


def test_shards_split_and_index(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_size=3) as writer:
        for i in range(7):
            writer.write(f"s-{i:03d}", _sample(i))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["index.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index == {
        "shards": [
            {"name": "shard-000000.tar", "samples": 3},
            {"name": "shard-000001.tar", "samples": 3},
            {"name": "shard-000002.tar", "samples": 1},
        ],
        "total": 7,
    }
    samples = [s for shard in list_shards(tmp_path) for s in read_shard(shard)]
    assert [key for key, _ in samples] == [f"s-{i:03d}" for i in range(7)]
    key, members = samples[4]
    assert members["flac"] == bytes([4]) * 10
    assert json.loads(members["json"]) == {"key": "s-4", "value": 4}
    with tarfile.open(tmp_path / "shard-000001.tar") as tar:
        assert tar.getnames() == ["s-003.flac", "s-003.json", "s-004.flac", "s-004.json", "s-005.flac", "s-005.json"]


def test_exception_leaves_no_partial_shard(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, shard_size=2) as writer:
            for i in range(3):
                writer.write(f"k{i}", _sample(i))
            raise RuntimeError("crash mid-shard")
    # The complete first shard stays; the half shard and its .tmp are gone; no index.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]
    assert [k for k, _ in read_shard(tmp_path / "shard-000000.tar")] == ["k0", "k1"]


def test_tmp_name_while_writing(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, shard_size=5)
    writer.write("a", _sample(0))
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar.tmp"]
    with pytest.raises(FileNotFoundError):
        list_shards(tmp_path)  # readers never see the unfinished shard
    writer.close()
    assert list_shards(tmp_path) == [str(tmp_path / "shard-000000.tar")]


def test_refuses_existing_shards_unless_overwrite(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_size=1) as writer:
        for i in range(3):
            writer.write(f"k{i}", _sample(i))
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path)
    with ShardWriter(tmp_path, shard_size=2, overwrite=True) as writer:
        writer.write("new", _sample(9))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard-000000.tar"]
    assert [k for k, _ in read_shard(tmp_path / "shard-000000.tar")] == ["new"]


def test_bad_keys_rejected(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="key"):
            writer.write("a.b", _sample(0))
        writer.write("a", _sample(0))
        with pytest.raises(ValueError, match="duplicate"):
            writer.write("a", _sample(1))


def test_list_shards_patterns(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_size=1) as writer:
        for i in range(4):
            writer.write(f"k{i}", _sample(i))
    expected = [str(tmp_path / f"shard-{i:06d}.tar") for i in range(4)]
    assert list_shards(tmp_path) == expected
    assert list_shards(str(tmp_path / "shard-*.tar")) == expected
    assert list_shards(str(tmp_path / "shard-{000001..000002}.tar")) == expected[1:3]
    assert list_shards([str(tmp_path / "shard-000003.tar"), str(tmp_path / "shard-000000.tar")]) == [expected[3], expected[0]]
    assert list_shards("s3://bucket/shard-{0..1}.tar") == ["s3://bucket/shard-0.tar", "s3://bucket/shard-1.tar"]
    with pytest.raises(FileNotFoundError, match="not found"):
        list_shards(str(tmp_path / "shard-{000003..000004}.tar"))
    with pytest.raises(FileNotFoundError):
        list_shards(str(tmp_path / "nothing-*.tar"))
