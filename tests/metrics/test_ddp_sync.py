"""Metric states reduced over two gloo processes give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from foley.metrics.desync import DeSync
from foley.metrics.frechet import FrechetDistance
from foley.metrics.inception import InceptionScore
from foley.metrics.kl import PairedKLDivergence
from foley.metrics.synthetic import SyntheticWorldMetric

SR = 8000

# Shared by the test and the worker processes: clip i belongs to rank i % 2.
DATA_CODE = textwrap.dedent(
    """
    import torch
    SR = 8000
    # DeSync's offset classes per clip and window (first and last 4.8 s of 6 s).
    DESYNC_CLASSES = [(3, 10), (10, 10), (17, 0), (0, 20), (20, 12), (12, 7)]

    class ScriptedOffsets(torch.nn.Module):
        # Stands in for the Synchformer AV classifier: the offset class k of a window is
        # written in its first video frame (value 12.75 k, normalised to [-1, 1] by the metric).
        crop_size = 8

        def forward(self, video, audio):
            logits = torch.zeros(video.shape[0], 21)
            logits[:, round((float(video[0, 0, 0, 0, 0, 0]) + 1) * 10)] = 1.0
            return logits

    def desync_data():
        frames = torch.zeros(6, 150, 3, 8, 8, dtype=torch.uint8)  # 6 s at 25 fps
        for i, (first, last) in enumerate(DESYNC_CLASSES):
            frames[i, :30], frames[i, 30:] = round(12.75 * first), round(12.75 * last)  # last window: frames 30..149
        return torch.zeros(6, 1, 6 * SR), {"sync_frames": frames}

    def tiny_imagebind():
        from foley.metrics.imagebind import ImageBind
        torch.manual_seed(0)
        return ImageBind(vision_dim=32, vision_depth=1, vision_heads=2, audio_dim=24, audio_depth=1, audio_heads=2,
                         out_dim=16).eval()

    def make_data():
        g = torch.Generator().manual_seed(1234)
        emb_real, emb_fake = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g) * 1.5 + 0.3
        logits_t, logits_g = torch.randn(40, 9, generator=g), torch.randn(40, 9, generator=g)
        clip_frames = torch.randint(0, 256, (6, 2, 3, 16, 16), generator=g, dtype=torch.uint8)  # 2 s at 0.5 fps
        waves, metas = [], []
        for i in range(6):
            onsets = [0.2 + 0.3 * k + 0.01 * i for k in range(4)]
            wave = torch.zeros(2, 2 * SR)
            for t in onsets[: 2 + i % 3]:
                wave[:, round(t * SR)] = 0.9
            waves.append(wave)
            category = "c" if i == 5 else ["a", "b"][i % 2]  # "c" exists on rank 1 only
            metas.append({"category": category, "events": [{"onset": t, "type": "impact"} for t in onsets]})
        return emb_real, emb_fake, logits_t, logits_g, clip_frames, torch.stack(waves), metas
    """
)
exec(DATA_CODE)  # defines make_data(), desync_data(), ScriptedOffsets, DESYNC_CLASSES  # noqa: S102

WORKER = DATA_CODE + textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from foley.metrics.desync import DeSync
    from foley.metrics.frechet import FrechetDistance
    from foley.metrics.ib_score import ImageBindScore
    from foley.metrics.inception import InceptionScore
    from foley.metrics.kl import PairedKLDivergence
    from foley.metrics.synthetic import SyntheticWorldMetric
    from foley.evaluate import EvaluationSuite
    from foley.metrics.generation import EmbedderScores
    from foley.metrics.embedders import SpectralStatsEmbedder

    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    er, ef, lt, lg, clip_frames, waves, metas = make_data()
    model = tiny_imagebind()

    def ib_of(clips):
        # One clip per update, so every clip is embedded by the same float32 operations on
        # both sides: only the float64 summation order of the cosines differs.
        ib = ImageBindScore(model=model, seconds=2.0, frames_fps=0.5)
        for i in clips:
            ib.update(waves[i : i + 1], {"clip_frames": clip_frames[i : i + 1]}, SR)
        return ib

    # Before the process group exists compute() does not synchronise: the one-process values.
    ib_single = ib_of(range(6)).compute()["ib_score"].item() if rank == 0 else None
    ib_rank0_alone = ib_of(range(0, 6, 2)).compute()["ib_score"].item() if rank == 0 else None
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    mine = slice(rank, None, 2)
    fd, kl, isc, ds = FrechetDistance(6), PairedKLDivergence(), InceptionScore(splits=1), DeSync(model=ScriptedOffsets())
    syn = SyntheticWorldMetric(categories=["a", "b"])
    fd.update(er[mine], real=True); fd.update(ef[mine], real=False)
    kl.update(lt[mine], lg[mine]); isc.update(lg[mine])
    silence, sync_batch = desync_data()
    ds.update(silence[mine], {"sync_frames": sync_batch["sync_frames"][mine]}, SR)
    ib = ib_of(range(rank, 6, 2))
    syn.update(waves[mine], {"audio": waves[mine], "meta": metas[mine]}, SR)
    suite = EvaluationSuite([EmbedderScores(SpectralStatsEmbedder(SR, n_mels=4), "stats", splits=1)])
    my_metas = metas[mine]
    suite.update(0.5 * waves[mine], {"audio": waves[mine], "meta": my_metas}, SR)
    result = {"suite": suite.compute(),"fd": fd.compute().item(), "kl": kl.compute().item(), "is": isc.compute().item(),
              "ib": ib.compute()["ib_score"].item(), "ib_single": ib_single, "ib_rank0_alone": ib_rank0_alone,
              "desync": ds.compute()["desync"].item(),
              "synthetic": {k: v.item() for k, v in syn.compute().items()}}
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)
    dist.destroy_process_group()
    """
)


def test_two_process_gloo_sync_equals_one_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path / "store"), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    ddp = json.loads(out.read_text())

    er, ef, lt, lg, _, waves, metas = make_data()
    fd, kl, isc, ds = FrechetDistance(6), PairedKLDivergence(), InceptionScore(splits=1), DeSync(model=ScriptedOffsets())
    syn = SyntheticWorldMetric(categories=["a", "b"])
    fd.update(er, real=True)
    fd.update(ef, real=False)
    kl.update(lt, lg)
    isc.update(lg)
    ds.update(*desync_data(), SR)
    syn.update(waves, {"audio": waves, "meta": metas}, SR)
    from foley.evaluate import EvaluationSuite
    from foley.metrics.embedders import SpectralStatsEmbedder
    from foley.metrics.generation import EmbedderScores

    suite = EvaluationSuite([EmbedderScores(SpectralStatsEmbedder(SR, n_mels=4), "stats", splits=1)])
    suite.update(0.5 * waves, {"audio": waves, "meta": metas}, SR)
    expected_suite = suite.compute()
    assert set(ddp["suite"]["per_category"]) == {"a", "b", "c"}
    assert ddp["suite"]["num_clips"] == 6
    # The suite embeds the audio in float32 (log-mel statistics) on each rank's 3 clips, here on
    # all 6 and with other threads: an STFT may round a clip differently for another batch, up
    # to ~sqrt(n_fft = 512) eps32 in its log-mels. FD, KL and IS of these embeddings move by at
    # most 1.4e-7 per eps32 of relative embedding change (measured), so by
    # 2 * 22.6 * 1.4e-7 = 6.3e-6 between the two sides; rel 1e-5. One rank's clips left out or
    # counted twice moves them by >= 4e-4 (num_clips by 50 %). The checks below compare float64
    # states fed the same inputs, where only the summation order differs: rel 1e-9.
    for row in ["overall"]:
        assert ddp["suite"][row] == pytest.approx(expected_suite[row], rel=1e-5, nan_ok=True)
    for category, scores in expected_suite["per_category"].items():
        assert ddp["suite"]["per_category"][category] == pytest.approx(scores, rel=1e-5, nan_ok=True), category
    single = {"fd": fd.compute().item(), "kl": kl.compute().item(), "is": isc.compute().item(),
              "ib": ddp["ib_single"], "desync": ds.compute()["desync"].item()}
    # The scripted offsets: mean over clips of the mean |offset| of their two windows.
    # Rank 0's clips alone give other values (DeSync 1.2 s vs 1.017 s), so these checks see a
    # missing reduction.
    assert abs(ddp["ib_rank0_alone"] - ddp["ib_single"]) > 1e-3 * abs(ddp["ib_single"])
    assert single["desync"] == pytest.approx(sum(abs(f - 10) + abs(l - 10) for f, l in DESYNC_CLASSES) * 0.2 / 2 / 6, rel=1e-12)
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-9), key
    synthetic = {k: v.item() for k, v in syn.compute().items()}
    assert synthetic["onset_recall"] < 1.0  # the data really has misses, so the sums matter
    assert ddp["synthetic"].keys() == synthetic.keys()
    for key, value in synthetic.items():
        assert ddp["synthetic"][key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
