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
