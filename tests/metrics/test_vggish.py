"""VGGish: key layout and front end against torchvggish 0.2, and the PCA post-processing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from foley.metrics.embedders import MissingWeightsError
from foley.metrics.vggish import (
    VGGISH_FILE,
    VGGISH_PCA_FILE,
    VGGish,
    VGGishEmbedder,
    VGGishPostprocessor,
    vggish_examples,
    vggish_log_mel,
)

MANIFEST = Path(__file__).parents[1] / "manifests" / "vggish.json"


def reference_signal(seconds: float) -> torch.Tensor:
    """The manifest's test signal: two tones and a linear chirp 100 Hz -> 7 kHz, 16 kHz."""
    t = torch.arange(int(seconds * 16000), dtype=torch.float64) / 16000
    chirp = torch.sin(2 * math.pi * (100 * t + 0.5 * (6900 / seconds) * t**2))
    return (0.5 * torch.sin(2 * math.pi * 440 * t) + 0.25 * torch.sin(2 * math.pi * 3000 * t) + 0.1 * chirp).float()


def test_state_dict_equals_the_torchvggish_manifest_strictly() -> None:
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        state = VGGish().state_dict()
    ours = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()}
    assert list(ours) == list(manifest["tensors"])
    assert ours == manifest["tensors"]
    assert manifest["checkpoint"]["file"] == VGGISH_FILE
    assert manifest["checkpoint"]["pca_params"]["file"] == VGGISH_PCA_FILE


def test_examples_match_torchvggish_waveform_to_examples() -> None:
    reference = json.loads(MANIFEST.read_text())["reference_front_end"]
    expected = torch.tensor(reference["log_mel"], dtype=torch.float64)
    examples = vggish_examples(vggish_log_mel(reference_signal(reference["seconds"])[None]))
    assert examples.shape == (1, 1, 1, 96, 64)
    # Both front ends compute in float64 (float64 FFT and mel error, even amplified by up to
    # 1 / 0.01 by the log's offset, is ~1e-12) and store float32 (|values| <= 4.61: half an ulp
    # is 2.4e-7 each); the reference is then rounded to 1e-4 (5e-5). So the error is at most
    # 5e-5 + 2 * 2.4e-7 = 5.05e-5 (measured 4.99992e-5). The old 2e-4 hid float32 mel-band
    # edges (6.0e-5 with AVX-512, 8.1e-5 without SIMD); a 0.05 % mel gain gives 5.5e-4 and a
    # symmetric window 0.15.
    assert (examples[0, 0, 0].double() - expected).abs().max() <= 5.1e-5


def test_postprocessor_whitens_clips_and_quantises_in_closed_form() -> None:
    torch.manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(128, 128, dtype=torch.float64))
    means = torch.rand(128, dtype=torch.float64)
    post = VGGishPostprocessor(rotation.float(), means.float())
    # x = mu + sum_j c_j E_j (rows of E orthonormal) has PCA coordinates exactly c.
    for k, a, code in [(3, 1.0, 191), (10, -1.0, 64), (5, 5.0, 255), (7, -5.0, 0)]:
        coords = torch.full((128,), 0.5, dtype=torch.float64)
        coords[k] = a
        x = (means + coords @ rotation).float()
        out = post(x[None, None])[0, 0]
        assert out[k] == code  # round((clip(a, -2, 2) + 2) * 255 / 4)
        others = torch.cat([out[:k], out[k + 1 :]])
        assert torch.all(others == 159)  # round(2.5 * 63.75) = round(159.375)
    assert post(torch.randn(2, 3, 128)).shape == (2, 3, 128)


def test_postprocessor_loads_official_numpy_or_tensor_files(tmp_path: Path) -> None:
    eye = np.eye(128)
    torch.save({"pca_eigen_vectors": eye, "pca_means": np.zeros((128, 1))}, tmp_path / "numpy.pth")
    torch.save({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128)}, tmp_path / "tensor.pth")
    for name in ("numpy.pth", "tensor.pth"):
        post = VGGishPostprocessor.from_file(tmp_path / name)
        assert torch.equal(post.pca_eigen_vectors, torch.eye(128)) and post.pca_means.shape == (128,)
    torch.save({"eigen": torch.eye(128)}, tmp_path / "wrong.pth")
    with pytest.raises(RuntimeError, match=r"wrong\.pth.*pca_eigen_vectors"):
        VGGishPostprocessor.from_file(tmp_path / "wrong.pth")
    with pytest.raises(MissingWeightsError, match=rf"{VGGISH_PCA_FILE}.*torchvggish"):
        VGGishPostprocessor.from_file(tmp_path / "absent.pth")


def test_embedder_applies_the_postprocessing_only_when_asked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(VGGish().state_dict(), tmp_path / VGGISH_FILE)
    torch.save({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128)}, tmp_path / VGGISH_PCA_FILE)
    wave = torch.randn(1, 16000)
    raw, _ = VGGishEmbedder(str(tmp_path / VGGISH_FILE)).embed(wave, 16000)
    quantised, _ = VGGishEmbedder(str(tmp_path / VGGISH_FILE), pca_params_path=str(tmp_path / VGGISH_PCA_FILE)).embed(wave, 16000)
    assert raw.shape == quantised.shape == (1, 1, 128)
    assert torch.equal(quantised, torch.round((raw.clamp(-2, 2) + 2) * 63.75))
