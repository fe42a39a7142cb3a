"""AV Synchformer: state-dict layout vs the official manifest, preprocessing, DeSync windows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchaudio.transforms as T

from foley.metrics.embedders import MissingWeightsError
from foley.metrics.desync import DeSync
from foley.metrics.synchformer_av import (
    SynchformerAV,
    synchformer_audio_segments,
    synchformer_video_segments,
)

MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "synchformer_av.json"


@pytest.mark.skipif(not MANIFEST.is_file(), reason="reference manifest not available")
def test_state_dict_matches_the_official_manifest_key_for_key() -> None:
    with torch.device("meta"):
        model = SynchformerAV()
    mine = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    reference = [(k, v["shape"]) for k, v in json.loads(MANIFEST.read_text())["tensors"].items()]
    assert mine == reference  # names, shapes and order of all 513 tensors


def test_audio_segments_follow_the_published_front_end() -> None:
    wave = torch.randn(2, int(4.8 * 16000))
    segments = synchformer_audio_segments(wave)
    assert segments.shape == (2, 14, 1, 128, 66)
    assert synchformer_audio_segments(torch.randn(1, 8 * 16000)).shape[1] == 24
    mel = T.MelSpectrogram(16000, n_fft=1024, win_length=400, hop_length=160, n_mels=128, mel_scale="htk")
    segment = wave[1, 5120 : 5120 + 10240]
    power = mel(segment)
    expected = (torch.log(power + 1e-6) + 4.2677393) / (2 * 4.5689974)
    # All segments at once vs this one alone: the float32 FFTs may round differently (plans
    # depend on the batch). A bin's amplitude is off by ~delta = sqrt(n_fft) * eps32 * ||x w||_2
    # (probabilistic bound), a band's power by 2 sqrt(2) delta sqrt(w_m P_m) (Cauchy-Schwarz
    # over its filter, row sum w_m), so its log by 2 sqrt(2) delta sqrt(w_m / P_m): largest for
    # the weakest band (P >= 0.19 here, so the 1e-6 floor plays no part). Two evaluations, then
    # the normalisation 1 / (2 * 4.569): 7e-5 (a fixed 1e-5 was below it; a segment one
    # sample late moves the values by 0.43, one hop late by 0.66).
    window = torch.hann_window(400, dtype=torch.float64)
    frames = torch.nn.functional.pad(segment.double()[None, None], (512, 512), mode="reflect")[0, 0].unfold(0, 1024, 160)
    frame_l2 = (frames[:, 312:712] * window).norm(dim=1).max()
    delta = math.sqrt(1024) * torch.finfo(torch.float32).eps * frame_l2
    row_sum = mel.mel_scale.fb.double().sum(dim=0)[:, None]
    bound = 2 * 2 * math.sqrt(2) * delta * (row_sum / power.double()).sqrt().max() / (2 * 4.5689974)
    assert (segments[1, 1, 0, :, :65] - expected).abs().max() <= bound
    assert torch.allclose(segments[..., 65], torch.full_like(segments[..., 65], 4.2677393 / (2 * 4.5689974)))


def test_video_segments_are_16_frames_every_8_normalised_to_unit_range() -> None:
    frames = torch.arange(120, dtype=torch.uint8)[None, :, None, None, None].expand(1, 120, 3, 4, 4).clone()
    frames[0, -1] = 255
    segments = synchformer_video_segments(frames)
    assert segments.shape == (1, 14, 16, 3, 4, 4)
    assert segments[0, 3, 0, 0, 0, 0] == pytest.approx(24 / 255 * 2 - 1)  # segment 3 starts at frame 24
    assert segments[0, -1, -1].max() == 1.0 and segments[0, 0, 0].min() == -1.0


def _tiny() -> SynchformerAV:
    torch.manual_seed(0)
    model = SynchformerAV(dim=32, visual_depth=1, audio_layers=1, heads=2, crop_size=32).eval()
    for p in model.parameters():  # zero-initialised tokens would hide the attention pattern
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_offset_head_sees_the_whole_sequence() -> None:
    model = _tiny()
    video = torch.randn(1, 14, 16, 3, 32, 32)
    audio = torch.randn(1, 14, 1, 128, 66)
    logits = model(video, audio)
    assert logits.shape == (1, 21)
    changed = audio.clone()
    changed[:, -1] += 1.0  # the last audio segment: only visible to OFF without a causal mask
    assert not torch.allclose(model(video, changed), logits)


def test_desync_scores_first_and_last_window_and_checks_frames() -> None:
    score = DeSync(model=_tiny())
    batch = {"sync_frames": torch.randint(0, 255, (2, 200, 3, 32, 32), dtype=torch.uint8), "seconds_total": torch.tensor([8.0, 4.0])}
    generated = torch.randn(2, 2, 8 * 22050)
    offsets = score.offsets(generated[0], batch["sync_frames"][0], 22050, 8.0)
    assert offsets.shape == (2,) and all(round(float(o) * 5) == pytest.approx(float(o) * 5) for o in offsets)
    with pytest.raises(ValueError, match="at least 4.8 s; clip #1 has 4.00 s"):
        score.update(generated, batch, 22050)  # clip 2 is 4 s, shorter than one 4.8 s window
    with pytest.raises(ValueError, match="sync_size: 32"):
        score.update(generated, {"sync_frames": torch.zeros(2, 200, 3, 16, 16, dtype=torch.uint8)}, 22050)
    assert float(score.count) == 0  # a failed batch adds no clip
    score.update(generated[:1], {"sync_frames": batch["sync_frames"][:1], "seconds_total": batch["seconds_total"][:1]}, 22050)
    assert float(score.compute()["desync"]) == pytest.approx(float(offsets.abs().mean()), rel=1e-12)
    with pytest.raises(MissingWeightsError, match="synchformer_state_dict.pth.*MMAudio/releases"):
        DeSync(weights_path=None)
