"""PANNs CNN14 (16 kHz): key layout and front end against panns-inference 0.1.1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from foley.metrics.panns import Cnn14

MANIFEST = Path(__file__).parents[1] / "manifests" / "panns_cnn14_16k.json"
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


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
    expected = torch.tensor(reference["log_mel"], dtype=torch.float64)
    wave = reference_signal(reference["seconds"])
    model = Cnn14()
    log_mel = model.log_mel(wave[None])[0, 0].detach().double()
    assert log_mel.shape == expected.shape == (51, 64)
    # Error model. Both sides are float32 STFTs-by-convolution (ours, and torchlibrosa's that
    # made the reference): each DFT component is an n = 512-term sum, so its absolute error is
    # about delta = sqrt(n) * eps * sum_k |x_k w_k| (measured here: <= 2.4 * eps * sum, so ~10x
    # margin), the same for every bin of a frame whatever that bin's own power. Power error
    # is then <= 2*sqrt(2)*delta*|X| + 2*delta^2 per bin, and through the (non-negative) mel row
    # with sum w_m, by Cauchy-Schwarz, <= 2*sqrt(2)*delta*sqrt(w_m*M) + 2*delta^2*w_m: absolute,
    # set by the frame's energy, so in dB it is amplified by 1/M near the -100 dB floor (a fixed
    # dB bound there fails on some CPUs' FFT/conv kernels). The 257-term mel sum adds 257*eps*M.
    n = 512
    frames = F.pad(wave.double()[None, None], (n // 2, n // 2), mode="reflect")[0, 0].unfold(0, n, 160)
    window = torch.hann_window(n, periodic=True, dtype=torch.float64)
    delta = math.sqrt(n) * EPS32 * (frames * window).abs().sum(dim=1)[:, None]
    row_sum = model.logmel_extractor.melW.double().sum(dim=0)
    power = 10.0 ** (expected / 10.0)
    stft_error = 2 * math.sqrt(2) * delta * (row_sum * power).sqrt() + 2 * delta**2 * row_sum
    absolute = 2 * (stft_error + 257 * EPS32 * power)  # twice: ours and the reference's
    # The reference is rounded to 1e-3 dB (5e-4 dB half-step).
    bound = 5e-4 + 10.0 * torch.log10(1.0 + absolute / power)
    error = (log_mel - expected).abs()
    assert (error <= bound).all(), f"worst error/bound {(error / bound).max():.3f}"
    # Where the spectrum is well above the floor the bound is as tight as a fixed 2e-3 dB, so a
    # wrong window (symmetric Hann: 72x the bound), mel scale, frame alignment or a 0.1 % power
    # scale (6x) still fails; and the 1e-10 floor itself is reached (857 bins lie far below it).
    assert bound[expected >= expected.max() - 20.0].max() < 2e-3
    assert log_mel.min() == -100.0
