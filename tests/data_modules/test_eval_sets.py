"""Benchmark manifests: column mapping, errors naming file and row, batches like training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foley.data_modules.eval_sets import (
    ManifestColumns,
    ManifestError,
    ManifestEvalDataModule,
    VGGSoundTestDataModule,
    read_manifest,
    read_vggsound_csv,
)
from foley.io.media import write_video

SR = 16000


def _write_clip(path: Path, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    t = np.arange(SR) / SR
    audio = (0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t))[None].repeat(2, 0).astype(np.float32)
    write_video(path, frames, 8.0, audio=audio, sample_rate=SR)
    return audio


@pytest.fixture()
def benchmark(tmp_path: Path) -> Path:
    (tmp_path / "videos").mkdir()
    rows = []
    for i, category in enumerate(["animals", "vehicles", "animals"]):
        _write_clip(tmp_path / "videos" / f"c{i}.mp4", i)
        rows.append({"clip_id": f"c{i}", "path": f"videos/c{i}.mp4", "vcap": f"video {i}", "acap": f"sound {i}", "scene": category})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = ",".join(rows[0])
    (tmp_path / "manifest.csv").write_text(header + "\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    return tmp_path


COLUMNS = ManifestColumns(key="clip_id", video="path", caption="vcap", audio_caption="acap", category="scene")


@pytest.mark.parametrize("name", ["manifest.jsonl", "manifest.csv"])
def test_manifest_mapping_and_batches(benchmark: Path, name: str) -> None:
    data = ManifestEvalDataModule(str(benchmark / name), columns=COLUMNS, caption_field="audio_caption", sample_rate=SR,
                                  clip_seconds=0.5, clip_fps=4.0, clip_size=8, sync_fps=8.0, sync_size=8, batch_size=2, num_workers=0)
    assert data.categories == ["animals", "vehicles"]
    batches = list(data.test_dataloader())
    assert [b["key"] for b in batches] == [["c0", "c1"], ["c2"]]
    first = batches[0]
    assert first["caption"] == ["sound 0", "sound 1"]
    assert first["meta"][1]["category"] == "vehicles" and first["meta"][1]["video_caption"] == "video 1"
    assert first["audio"].shape == (2, 2, SR // 2) and first["sync_frames"].shape[:2] == (2, 4)
    # The audio track is decoded from the video: a 300 Hz tone for clip 0 (AAC is lossy).
    spectrum = torch.fft.rfft(first["audio"][0, 0, 2000:8000]).abs()
    assert abs(int(spectrum.argmax()) * SR / 6000 - 300) < 5


def test_manifest_errors_name_the_problem(benchmark: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"column\(s\) \['id', 'video'\] not found.*clip_id"):
        read_manifest(benchmark / "manifest.jsonl")
    duplicate = tmp_path / "dup.csv"
    duplicate.write_text("id,video\na,x.mp4\na,y.mp4\n")
    with pytest.raises(ManifestError, match="rows 1 and 2: duplicate clip id 'a'"):
        read_manifest(duplicate)
    missing = tmp_path / "missing.csv"
    missing.write_text("id,video,category\na,nowhere.mp4,x\n")
    data = ManifestEvalDataModule(str(missing), sample_rate=SR, num_workers=0, load_video=False)
    with pytest.raises(Exception, match="nowhere.mp4 not found"):
        next(iter(data.test_dataloader()))
    skipping = ManifestEvalDataModule(str(missing), sample_rate=SR, num_workers=0, load_video=False, skip_missing=True)
    assert list(skipping.test_dataloader()) == []


def test_vggsound_csv_test_split(benchmark: Path, tmp_path: Path) -> None:
    (benchmark / "videos" / "c1.mp4").rename(benchmark / "videos" / "abc_000030.mp4")
    table = tmp_path / "vggsound.csv"
    table.write_text("abc,30,dog barking,test\nxyz,10,rain,train\n")
    clips = read_vggsound_csv(table, benchmark / "videos")
    assert [(c.key, c.category, c.video.name) for c in clips] == [("abc_000030", "dog barking", "abc_000030.mp4")]
    data = VGGSoundTestDataModule(str(table), str(benchmark / "videos"), sample_rate=SR, num_workers=0, load_video=False, clip_seconds=0.5)
    batch = next(iter(data.test_dataloader()))
    assert batch["key"] == ["abc_000030"] and batch["caption"] == ["dog barking"]
