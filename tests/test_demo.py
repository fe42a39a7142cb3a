"""`make demo` end to end, shrunk: synth → fit stages 1-3 → generate → scored report."""
from __future__ import annotations

import json

import pytest

from foley.demo import main


@pytest.mark.slow
def test_quick_demo_writes_scored_report_mp4s_and_plots(tmp_path):
    report = main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["test_clips"] == report["test_clips"] == 2
    for split in ("generated", "shuffled_video_baseline"):
        assert 0.0 <= saved[split]["onset_f1"] <= 1.0 or saved[split]["onset_f1"] != saved[split]["onset_f1"]
    mp4s = sorted((tmp_path / "generated").glob("*.mp4"))
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(mp4s) == 2 and len(pngs) == 2
    assert "onset F1" in (tmp_path / "report.md").read_text()
    # The long-video check covers its whole length in 10 s spans with every true onset counted.
    long_video = saved["long_video"]
    assert long_video["samples"] == round(long_video["seconds"] * 44100)
    spans = long_video["spans"]
    assert spans[0]["start"] == 0.0 and spans[-1]["stop"] == long_video["seconds"]
    assert all(0 <= s["matched"] <= s["references"] for s in spans) and sum(s["references"] for s in spans) > 0
    assert "pan_corr" in saved["stage3_on_true_mono"]
    assert "Long video" in (tmp_path / "report.md").read_text()
