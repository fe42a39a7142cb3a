"""Evaluator preprocessing (facts §4), front ends against references, weights handling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchaudio.functional as AF

from foley.metrics.embedders import (
    MissingWeightsError,
    SpectralStatsEmbedder,
    desync_window_starts,
    fit_length,
    imagebind_clip_starts,
    mono_zero_mean,
    resample,
    synchformer_segment_count,
)
from foley.metrics.panns import CNN14_16K_FILE, Cnn14, PANNsEmbedder, _ConvSTFT
from foley.metrics.vggish import VGGISH_FILE, VGGish, VGGishEmbedder, vggish_example_count, vggish_examples, vggish_log_mel


def test_mixdown_removes_the_mean_and_resampling_keeps_length_and_pitch() -> None:
    t = torch.arange(44100 * 2) / 44100
    tone = torch.sin(2 * math.pi * 1000 * t)
    stereo = torch.stack([tone + 0.5, 0.5 * tone + 0.5])[None]
    mono = mono_zero_mean(stereo)
    # Two float32 means of 88200 samples (pairwise sums): each off by ~eps32 * sqrt(log2 n) *
    # mean|x| ~ 3e-7 (probabilistic bound); measured 2.7e-8 at any thread count.
    assert abs(float(mono.mean())) < 1e-6
    assert torch.allclose(mono[0], 0.75 * tone - 0.75 * tone.mean(), atol=1e-5)
    down = resample(mono, 44100, 16000)
    assert down.shape == (1, 32000)
    peak = int(torch.fft.rfft(down[0]).abs().argmax()) * 16000 / 32000
    assert peak == pytest.approx(1000, abs=1)
    assert fit_length(down, 160000).shape[-1] == 160000 and fit_length(down, 100).shape[-1] == 100


def test_window_counts_match_the_published_conventions() -> None:
    # VGGish: 0.96 s examples -> 8 for 8 s, 10 for 10 s (through the real framing).
    assert vggish_example_count(8.0) == 8 and vggish_example_count(10.0) == 10
    assert vggish_examples(vggish_log_mel(torch.zeros(1, 8 * 16000))).shape == (1, 8, 1, 96, 64)
    assert vggish_examples(vggish_log_mel(torch.zeros(1, 10 * 16000))).shape[1] == 10
    # Synchformer AV: 4.8 s windows of 0.64 s segments with stride 0.32 s -> 14 segments;
    # DeSync scores the first and the last 4.8 s.
    assert synchformer_segment_count(4.8) == 14
    assert desync_window_starts(8.0) == [0.0, pytest.approx(3.2)]
    assert desync_window_starts(4.8) == [0.0]
    # ImageBind: three 2 s clips spread over the clip.
    assert imagebind_clip_starts(8.0) == [0.0, 3.0, 6.0]
    assert imagebind_clip_starts(10.0) == [0.0, 4.0, 8.0]


def test_panns_front_end_matches_torch_stft_and_slaney_mel() -> None:
    wave = torch.randn(2, 16000)
    stft = _ConvSTFT(512, 160)
    power = stft(wave)[:, 0]
    reference = torch.stft(wave, 512, 160, window=torch.hann_window(512), center=True, pad_mode="reflect", return_complex=True)
    assert power.shape == (2, 101, 257)
    # Convolution (512-term sums) vs FFT, both float32: a DFT value is off by ~delta =
    # sqrt(512) * eps32 * sum|x w| = 22.6 * 1.19e-7 * ~205 = 5.5e-4 (probabilistic bound), a
    # power by 2 sqrt(2) delta |X| + 2 delta^2 <= sqrt(2) delta (1 + P) ~ 7.8e-4 (1 + P): hence
    # rtol = atol = 1e-3 (measured ratio to it: 0.011). A wrong window changes P by O(P).
    assert torch.allclose(power, reference.abs().pow(2).transpose(1, 2), rtol=1e-3, atol=1e-3)
    with torch.device("meta"):
        model = Cnn14()
    state = model.state_dict()
    assert len(state) == 84 and state["logmel_extractor.melW"].shape == (257, 64)
    assert state["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert state["fc_audioset.weight"].shape == (527, 2048)
    expected = AF.melscale_fbanks(257, 50.0, 8000.0, 64, 16000, norm="slaney", mel_scale="slaney")
    from foley.metrics.panns import _LogMel

    assert torch.equal(_LogMel(16000, 512, 64, 50.0, 8000.0).melW.data, expected)


def test_panns_10_second_clip_has_1001_frames() -> None:
    from foley.metrics.panns import _LogMel, _Spectrogram

    frames = _LogMel(16000, 512, 64, 50.0, 8000.0)(_Spectrogram(512, 160)(torch.zeros(1, 160000)))
    assert frames.shape == (1, 1, 1001, 64)


def test_vggish_log_mel_puts_a_1khz_tone_in_the_band_centred_at_mel_1000() -> None:
    t = torch.arange(16000) / 16000
    log_mel = vggish_log_mel(torch.sin(2 * math.pi * 1000 * t)[None])
    assert log_mel.shape == (1, 98, 64)
    mel_edges = torch.linspace(1127 * math.log1p(125 / 700), 1127 * math.log1p(7500 / 700), 66)
    expected_band = int((mel_edges[1:-1] - 1127 * math.log1p(1000 / 700)).abs().argmin())
    assert int(log_mel[0].mean(0).argmax()) == expected_band
    with torch.device("meta"):
        keys = VGGish().state_dict()
    assert list(keys)[:2] == ["features.0.weight", "features.0.bias"]
    assert keys["embeddings.0.weight"].shape == (4096, 12288) and keys["embeddings.4.weight"].shape == (128, 4096)


def test_missing_weights_errors_name_the_file_and_where_it_is_published(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"no path was configured.*Cnn14_16k_mAP=0\.438\.pth.*zenodo"):
        PANNsEmbedder(None)
    missing = tmp_path / "nope.pth"
    with pytest.raises(MissingWeightsError, match=rf"{missing} does not exist.*{VGGISH_FILE}.*torchvggish"):
        VGGishEmbedder(str(missing))


def test_spectral_stats_embedder_is_deterministic_and_sensitive() -> None:
    embedder = SpectralStatsEmbedder(sample_rate=16000, n_mels=8)
    noise = torch.randn(2, 2, 44100)
    a, logits = embedder.embed(noise, 44100)
    b, _ = embedder.embed(noise, 44100)
    assert torch.equal(a, b) and a.shape == (2, 16) and logits.shape == (2, 8)
    quieter, _ = embedder.embed(noise * 0.1, 44100)
    assert torch.allclose(quieter[:, :8], a[:, :8] + 2 * math.log(0.1), atol=1e-3)  # log-power shifts by 2 ln 0.1


@pytest.mark.slow
def test_official_layout_checkpoints_round_trip(tmp_path: Path) -> None:
    cnn = Cnn14().eval()
    torch.save({"model": cnn.state_dict(), "iteration": 0}, tmp_path / CNN14_16K_FILE)
    embedder = PANNsEmbedder(str(tmp_path / CNN14_16K_FILE), seconds=1.0)
    wave = torch.randn(2, 2, 44100)
    embedding, logits = embedder.embed(wave, 44100)
    expected = cnn(fit_length(resample(mono_zero_mean(wave), 44100, 16000), 16000))
    assert torch.allclose(embedding, expected[0], atol=1e-5) and torch.allclose(logits, expected[1], atol=1e-5)
    vgg = VGGish().eval()
    torch.save(vgg.state_dict(), tmp_path / VGGISH_FILE)
    embeddings, none = VGGishEmbedder(str(tmp_path / VGGISH_FILE)).embed(torch.randn(1, 2 * 44100), 44100)
    assert embeddings.shape == (1, 2, 128) and none is None
