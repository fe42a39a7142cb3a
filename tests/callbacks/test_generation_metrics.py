"""GenerationMetricsCallback through a real Trainer with CSVLogger / TensorBoardLogger."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from foley.callbacks import GenerationMetricsCallback
from foley.metrics.embedders import SpectralStatsEmbedder
from foley.metrics.generation import EmbeddingFrechetDistance
from foley.metrics.synthetic import SyntheticWorldMetric

SR = 8000
SECONDS = 1.5


class ClickClips(Dataset):
    """Stereo clips of clicks at seeded random times, with the shard-json style metadata."""

    def __init__(self, count: int = 6) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        onsets = sorted((0.1 + 1.2 * torch.rand(3, generator=g)).tolist())
        onsets = [t for k, t in enumerate(onsets) if k == 0 or t - onsets[k - 1] > 0.1]
        audio = 0.001 * torch.randn(2, int(SECONDS * SR), generator=g)
        for t in onsets:
            audio[0, round(t * SR)] += 0.9
            audio[1, round(t * SR)] += 0.3
        category = ["impacts", "rolling"][index % 2]
        return {"audio": audio, "seconds_total": torch.tensor(SECONDS), "key": f"clip{index}",
                "meta": {"category": category, "events": [{"onset": t, "type": "impact"} for t in onsets]}}


def collate(examples: list[dict]) -> dict:
    return {
        "audio": torch.stack([e["audio"] for e in examples]),
        "seconds_total": torch.stack([e["seconds_total"] for e in examples]),
        "key": [e["key"] for e in examples],
        "meta": [e["meta"] for e in examples],
    }


class DummyGenerator(pl.LightningModule):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.sample_rate = SR
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generate_calls = 0

    def generate(self, batch: dict) -> torch.Tensor:
        self.generate_calls += 1
        if self.mode == "truth":
            return batch["audio"].clone()
        if self.mode == "noise":  # seeded by the callback: must be identical across epochs
            return 0.01 * torch.randn_like(batch["audio"])
        return torch.zeros_like(batch["audio"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, mode: str, logger_cls=CSVLogger, epochs: int = 1, **callback_args) -> tuple[DummyGenerator, pl.Trainer]:
    module = DummyGenerator(mode)
    callback = GenerationMetricsCallback(**{"num_samples": 4, "log_audio_examples": 2, **callback_args})
    trainer = pl.Trainer(
        max_epochs=epochs, limit_train_batches=1, accelerator="cpu", devices=1, logger=logger_cls(tmp_path),
        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(ClickClips(), batch_size=3, collate_fn=collate)
    trainer.fit(module, loader, loader)
    return module, trainer


def test_ground_truth_scores_f1_one_and_writes_examples(tmp_path: Path) -> None:
    module, trainer = _fit(tmp_path, "truth", metrics=[SyntheticWorldMetric(categories=["impacts", "rolling"])])
    metrics = trainer.callback_metrics
    assert float(metrics["gen/onset_f1"]) == pytest.approx(1.0)
    assert float(metrics["gen/onset_f1/impacts"]) == pytest.approx(1.0)
    assert float(metrics["gen/pan_corr"]) > 0.9
    assert float(metrics["gen/num_clips"]) == 4  # num_samples across batches of 3
    assert module.generate_calls == 2
    rows = list(csv.DictReader(open(Path(trainer.log_dir) / "metrics.csv")))
    assert any(row.get("gen/onset_f1") not in (None, "") and float(row["gen/onset_f1"]) == pytest.approx(1.0) for row in rows)
    examples = sorted(p.name for p in (Path(trainer.log_dir) / "generation_examples" / "epoch=0000").iterdir())
    assert examples == [f"{i:02d}_clip{i}_{kind}.{ext}" for i in range(2) for kind in ("generated", "reference") for ext in ("png", "wav")]


def test_silence_scores_f1_zero(tmp_path: Path) -> None:
    _, trainer = _fit(tmp_path, "silence")
    assert float(trainer.callback_metrics["gen/onset_f1"]) == 0.0
    assert float(trainer.callback_metrics["gen/onset_recall"]) == 0.0


def test_every_n_epochs_and_seeded_generation(tmp_path: Path) -> None:
    embedder = SpectralStatsEmbedder(sample_rate=SR, n_mels=8)
    module, trainer = _fit(tmp_path, "noise", epochs=3, every_n_epochs=2,
                           metrics=[EmbeddingFrechetDistance(embedder, name="fd_stats")])
    assert module.generate_calls == 2 * 2  # epochs 0 and 2, two batches each
    rows = [r for r in csv.DictReader(open(Path(trainer.log_dir) / "metrics.csv")) if r.get("gen/fd_stats")]
    assert [int(r["epoch"]) for r in rows] == [0, 2]
    # Same seeded noise for the same subset -> identical scores at both epochs.
    assert float(rows[0]["gen/fd_stats"]) == pytest.approx(float(rows[1]["gen/fd_stats"]), rel=1e-9)
    assert float(rows[0]["gen/fd_stats"]) > 1.0


def test_tensorboard_gets_audio_and_images(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, trainer = _fit(tmp_path, "truth", logger_cls=TensorBoardLogger, log_audio_examples=1)
    accumulator = EventAccumulator(trainer.log_dir, size_guidance={"audio": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert tags["audio"] == ["gen_examples/00_clip0"]
    assert tags["images"] == ["gen_examples/00_clip0_spectrogram"]
    assert "gen/onset_f1" in tags["scalars"]
