"""PANNs CNN14 (16 kHz): key layout and front end against panns-inference 0.1.1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from foley.metrics.panns import Cnn14

MANIFEST = Path(__file__).parents[1] / "manifests" / "panns_cnn14_16k.json"


def reference_signal(seconds: float) -> torch.Tensor:
    """The manifest's test signal: two tones and a linear chirp 100 Hz -> 7 kHz, 16 kHz."""
    t = torch.arange(int(seconds * 16000), dtype=torch.float64) / 16000
    chirp = torch.sin(2 * math.pi * (100 * t + 0.5 * (6900 / seconds) * t**2))
    return (0.5 * torch.sin(2 * math.pi * 440 * t) + 0.25 * torch.sin(2 * math.pi * 3000 * t) + 0.1 * chirp).float()


def test_state_dict_equals_the_panns_inference_manifest_strictly() -> None:
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        state = Cnn14().state_dict()
    ours = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()}
    assert list(ours) == list(manifest["tensors"])
    assert ours == manifest["tensors"]
    assert manifest["summary"]["keys"] == 84 and manifest["checkpoint"]["file"] == "Cnn14_16k_mAP=0.438.pth"


def test_log_mel_front_end_matches_torchlibrosa_reference_values() -> None:
    reference = json.loads(MANIFEST.read_text())["reference_front_end"]
    expected = torch.tensor(reference["log_mel"])
    log_mel = Cnn14().log_mel(reference_signal(reference["seconds"])[None])[0, 0]
    assert log_mel.shape == expected.shape == (51, 64)
    # The reference is rounded to 1e-3 dB; the rest is float32 STFT-by-convolution error.
    assert (log_mel.detach() - expected).abs().max() < 2e-3
