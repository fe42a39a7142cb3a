"""`foley test` machinery: report writing, audio cache, re-scoring without regeneration."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from foley.callbacks.evaluation import EvaluationReportCallback
from foley.evaluate import EvaluationSuite, format_markdown, read_cached_audio, rescore
from foley.metrics.embedders import SpectralStatsEmbedder
from foley.metrics.generation import EmbeddingFrechetDistance
from foley.metrics.synthetic import SyntheticWorldMetric

SR = 8000


def _clip(index: int) -> dict:
    g = torch.Generator().manual_seed(100 + index)
    onsets = [0.15 + 0.35 * k + 0.05 * float(torch.rand(1, generator=g)) for k in range(3)]
    audio = 0.001 * torch.randn(2, int(1.3 * SR), generator=g)
    for t in onsets:
        audio[:, round(t * SR)] += torch.tensor([0.8, 0.2])
    return {"audio": audio, "seconds_total": torch.tensor(1.3), "key": f"vid/{index}",
            "meta": {"category": ["impacts", "rolling"][index % 2], "events": [{"onset": t, "type": "impact"} for t in onsets]}}


def _collate(examples: list[dict]) -> dict:
    return {"audio": torch.stack([e["audio"] for e in examples]),
            "seconds_total": torch.stack([e["seconds_total"] for e in examples]),
            "key": [e["key"] for e in examples], "meta": [e["meta"] for e in examples]}


def _loader() -> DataLoader:
    return DataLoader([_clip(i) for i in range(6)], batch_size=4, collate_fn=_collate)


class Generator(pl.LightningModule):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode, self.sample_rate, self.calls = mode, SR, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, batch: dict) -> torch.Tensor:
        self.calls += 1
        return batch["audio"].clone() if self.mode == "truth" else torch.zeros_like(batch["audio"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        return None


def _test(tmp_path: Path, mode: str, **kwargs) -> tuple[Generator, EvaluationReportCallback]:
    callback = EvaluationReportCallback(output_dir=str(tmp_path / "eval"), **kwargs)
    module = Generator(mode)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, _loader())
    return module, callback


def test_report_overall_and_per_category_with_cache(tmp_path: Path) -> None:
    _, callback = _test(tmp_path, "truth")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_clips"] == 6
    assert report["overall"]["onset_f1"] == pytest.approx(1.0)
    assert set(report["per_category"]) == {"impacts", "rolling"}
    assert report["per_category"]["rolling"]["num_clips"] == 3
    assert report["per_category"]["impacts"]["onset_recall"] == pytest.approx(1.0)
    assert report["generated_clips"] == 6 and "model" in report["config"]
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "| overall |" in markdown and "| rolling |" in markdown and "onset_f1" in markdown
    cached = sorted(p.name for p in (tmp_path / "eval" / "generated").iterdir())
    assert cached == [f"vid_{i}.wav" for i in range(6)]
    # float WAV: the cache is bit-exact
    assert torch.equal(read_cached_audio(tmp_path / "eval" / "generated", ["vid/1"], SR)[0], _clip(1)["audio"])


def test_rescore_without_model_matches_the_test_run_and_finds_missing_clips(tmp_path: Path) -> None:
    _, callback = _test(tmp_path, "truth")
    report = rescore(tmp_path / "eval" / "generated", _loader(), sample_rate=SR, output_dir=tmp_path / "again")
    assert report["overall"] == callback.report["overall"]
    assert report["per_category"] == callback.report["per_category"]
    assert (tmp_path / "again" / "report.md").is_file()
    (tmp_path / "eval" / "generated" / "vid_4.wav").unlink()
    with pytest.raises(FileNotFoundError, match="vid_4.wav"):
        rescore(tmp_path / "eval" / "generated", _loader(), sample_rate=SR)


def test_reuse_cache_skips_generation(tmp_path: Path) -> None:
    _test(tmp_path, "truth")
    module, callback = _test(tmp_path, "silence", reuse_cache=True)
    assert module.calls == 0 and callback.report["cached_clips_reused"] == 6
    assert callback.report["overall"]["onset_f1"] == pytest.approx(1.0)
    module, callback = _test(tmp_path, "silence")  # without reuse: regenerated and re-cached
    assert module.calls == 2 and callback.report["overall"]["onset_f1"] == 0.0


def test_per_category_copies_share_the_embedder_and_match_separate_runs() -> None:
    embedder = SpectralStatsEmbedder(sample_rate=SR, n_mels=4)
    suite = EvaluationSuite([EmbeddingFrechetDistance(embedder, "fd_stats"), SyntheticWorldMetric()])
    batch = _collate([_clip(i) for i in range(12)])
    generated = batch["audio"].roll(100, dims=-1)
    suite.update(generated, batch, SR)
    report = suite.compute()
    assert suite.by_category["impacts"][0].embedder is embedder
    alone = EmbeddingFrechetDistance(embedder, "fd_stats")
    rows = [i for i in range(12) if i % 2 == 0]
    alone.update(generated[rows], {"audio": batch["audio"][rows]}, SR)
    assert report["per_category"]["impacts"]["fd_stats"] == pytest.approx(float(alone.compute()["fd_stats"]), rel=1e-9)
    assert report["overall"]["fd_stats"] != pytest.approx(report["per_category"]["impacts"]["fd_stats"])


def test_markdown_renders_nan_as_dash() -> None:
    text = format_markdown({"overall": {"fd": float("nan"), "kl": 1.23456, "num_clips": 3.0}, "per_category": {}})
    assert "| overall | – | 1.235 | 3 |" in text


class TruthGenerator(pl.LightningModule):
    """Returns the ground truth: the exact evaluator must then score (nearly) perfectly."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, batch: dict) -> torch.Tensor:
        return batch["audio"].clone()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        return None


@pytest.mark.slow
def test_foley_test_config_on_synthetic_shards(tmp_path: Path) -> None:
    world = pytest.importorskip("foley.synth.world")
    from lightning.pytorch.cli import LightningCLI

    shards = world.synth(tmp_path / "synth", clips=6, seconds=2.0, seed=3, fps=8.0, size=32, sample_rate=16000)
    base = tmp_path / "base.yaml"
    base.write_text(
        "trainer: {accelerator: cpu, devices: 1, default_root_dir: " + str(tmp_path / "run") + ", enable_progress_bar: false}\n"
        "data:\n  class_path: foley.data_modules.FoleyDataModule\n  init_args: {sample_rate: 16000, clip_seconds: 2.0,"
        " clip_fps: 4.0, clip_size: 16, sync_fps: 8.0, sync_size: 16, batch_size: 4, num_workers: 0}\n"
    )
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "test_synthetic.yaml"
    LightningCLI(
        model_class=TruthGenerator, subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True}, seed_everything_default=0,
        args=["test", "--config", str(base), "--config", str(config), f"--data.init_args.test_shards={shards}"],
    )
    reports = list((tmp_path / "run").rglob("evaluation/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["num_clips"] == 6
    assert report["overall"]["onset_f1"] > 0.95
    # rank-deficient (6 clips, 32 features): sqrt of ~1e-12 null-space eigenvalues leaves ~1e-5
    assert report["overall"]["fd_spectral"] == pytest.approx(0.0, abs=1e-3)
    assert report["overall"]["kl_spectral"] == pytest.approx(0.0, abs=1e-9)
    assert sum(row["num_clips"] for row in report["per_category"].values()) == 6
    assert report["config"]["data"]["init_args"]["test_shards"] == str(shards)
    assert len(list(reports[0].parent.glob("generated/*.wav"))) == 6


def test_new_category_buckets_follow_the_suite_device() -> None:
    # Metric states are not parameters: the device must come from the torchmetrics states,
    # or per-category states would stay on the CPU while the overall ones sit on the GPU.
    suite = EvaluationSuite([SyntheticWorldMetric()]).to("meta")
    assert suite._bucket("drum")[0].device.type == "meta"
    assert suite._bucket("drum")[0].tp.device.type == "meta"
