"""Generation-metric adapters and the benchmark config's instantiation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from foley.callbacks.evaluation import EvaluationReportCallback
from foley.metrics.embedders import MissingWeightsError, SpectralStatsEmbedder
from foley.metrics.generation import ClassifierInceptionScore, ClassifierKL, EmbedderScores, EmbeddingFrechetDistance

SR = 16000
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_embedder_scores_equal_the_separate_metrics() -> None:
    embedder = SpectralStatsEmbedder(sample_rate=SR, n_mels=6)
    g = torch.Generator().manual_seed(0)
    batches = [{"audio": torch.randn(10, 2, SR, generator=g) * torch.rand(10, 1, 1, generator=g)} for _ in range(2)]
    generated = [0.5 * b["audio"].flip(0) for b in batches]
    combined = EmbedderScores(embedder, "stats", splits=2)
    separate = [EmbeddingFrechetDistance(embedder, "fd_stats"), ClassifierKL(embedder, "kl_stats"),
                ClassifierInceptionScore(embedder, splits=2, name="is_stats")]
    for batch, fake in zip(batches, generated):
        combined.update(fake, batch, SR)
        for metric in separate:
            metric.update(fake, batch, SR)
    expected = {k: float(v) for metric in separate for k, v in metric.compute().items()}
    assert {k: float(v) for k, v in combined.compute().items()} == pytest.approx(expected, rel=1e-9)
    assert expected["kl_stats"] > 0 and expected["is_stats"] > 1
    with pytest.raises(ValueError, match="no classifier head"):
        from foley.metrics.embedders import AudioEmbedder

        class NoHead(AudioEmbedder):
            sample_rate, embedding_dim, num_classes = SR, 4, 0

            def forward_model(self, audio):
                return audio[:, :4], None

        EmbedderScores(NoHead(), "x")


def test_kling_config_instantiates_and_reports_missing_weights() -> None:
    config = yaml.safe_load((CONFIGS / "test_kling_audio_eval.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--callback", type=EvaluationReportCallback)
    cfg = parser.parse_object({"callback": config["trainer"]["callbacks"][0]})
    # jsonargparse wraps errors raised while instantiating union-typed values; the message
    # the user sees still names the missing file and where it is published.
    with pytest.raises((MissingWeightsError, ValueError), match=r"PANNs CNN14.*Cnn14_16k_mAP=0\.438\.pth.*zenodo"):
        parser.instantiate_classes(cfg)


def test_synthetic_config_instantiates_without_weights() -> None:
    config = yaml.safe_load((CONFIGS / "tiny" / "test_synthetic.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--callback", type=EvaluationReportCallback)
    callback = parser.instantiate_classes(parser.parse_object({"callback": config["trainer"]["callbacks"][0]})).callback
    names = [type(m).__name__ for m in callback.suite.overall]
    assert names == ["SyntheticWorldMetric", "EmbeddingFrechetDistance", "ClassifierKL"]
    assert callback.suite.categories == ["bouncing_ball", "drum", "lamp", "vehicle", "rain", "silence"]
