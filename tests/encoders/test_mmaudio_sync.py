"""Synchformer features against MMAudio's FeaturesUtils (tests/fixtures/mmaudio/sync_features).

scripts/mmaudio_fixtures/encoders.py built MMAudio's FeaturesUtils with its own Synchformer class at
a tiny width (16, 2 heads, 2 blocks; geometry of the released model: 224 x 224 input, 16 x 16
patches, 2-frame tubelets, 16-frame segments with stride 8), loaded random weights through a
synchformer_state_dict.pth holding extra non-visual keys, and recorded ``encode_video_with_sync`` of
``load_video``'s sync frames of a 1.28 s, 30 fps, 90 x 40 video: 32 frames, 3 segments, (24, 16).

Tolerance. foley's MotionFormer computes the same function with other operations (fused
scaled_dot_product_attention instead of einsum + softmax on pre-scaled queries, one batched call
per factor instead of einops regroupings), so float32 rounding differs from the first attention on.
Per matmul the relative error is at most ~K * u (u = 6e-8; K = 3 * 2 * 16 * 16 = 1536 for the
tubelet embedding, <= 1568 keys for the CLS attention, <= 64 elsewhere); summed over the chain of
2 blocks (time and space attention, MLP) and the pooling layer that is about
(1536 + 1568 + 2 * 6 * 64 + 4 * 64) * 6e-8 = 2.1e-4 of the features' scale. The network barely
amplifies it: a relative perturbation u of every weight moves the output by 1.0e-7 of its scale
(measured in float64), an amplification of ~2. So 5e-4 of the largest feature bounds the difference
on any CPU and thread count. Measured: 3.1e-7 (foley float32 vs reference float32; each is ~5e-7
from foley in float64). A frame off by one, another resize or a wrong token order moves features by
O(0.1-1).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from foley.encoders.synchformer import SynchformerEncoder
from foley.io.video import VideoFile, mmaudio_stream_times
from foley.pipeline import FoleyPipeline

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mmaudio" / "sync_features.safetensors"
MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "synchformer_visual.json"


def _load() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURE), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


TENSORS, META = _load()
WEIGHTS = {k: v for k, v in TENSORS.items() if k.startswith("vfeat_extractor.")}
EXPECTED = TENSORS["features"]
TINY = json.loads(META["tiny"])


def _bound() -> float:
    return 5e-4 * float(EXPECTED.abs().max())


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> SynchformerEncoder:
    # The released file's layout: a flat state dict of the whole audio-visual model; only the
    # vfeat_extractor.* keys are the visual encoder's.
    path = tmp_path_factory.mktemp("sync") / "synchformer_state_dict.pth"
    torch.save({**WEIGHTS, "afeat_extractor.patch_embed.proj.weight": torch.zeros(2, 1, 2, 2),
                "transformer.blocks.0.bias": torch.zeros(3)}, path)
    return SynchformerEncoder(checkpoint_path=str(path), dim=TINY["EMBED_DIM"], num_heads=TINY["NUM_HEADS"],
                              depth=TINY["DEPTH"], preprocess="torchvision")


def _video() -> VideoFile:
    return VideoFile(TENSORS["video.mp4"].numpy().tobytes(), name="cfr30", backend="pyav")


def test_tiny_reference_layout_is_the_released_layout():
    # The released layout (tests/manifests/synchformer_visual.json, 12 blocks of width 768) with
    # 2 blocks of width 16: the same key names, and shapes with 768 -> 16, 3 * 768 -> 48,
    # 4 * 768 -> 64 and every other size (patches, positions, time steps) equal.
    if not MANIFEST.exists():
        pytest.skip("reference manifest not available")
    full = json.loads(MANIFEST.read_text())["tensors"]
    depth, width = TINY["DEPTH"], TINY["EMBED_DIM"]
    kept = {k: v["shape"] for k, v in full.items()
            if not k.startswith("vfeat_extractor.blocks.") or int(k.split(".")[2]) < depth}
    assert sorted(WEIGHTS) == sorted(kept)
    scale = {768: width, 3 * 768: 3 * width, 4 * 768: 4 * width}
    for key, shape in kept.items():
        assert list(WEIGHTS[key].shape) == [scale.get(s, s) for s in shape], key


def test_features_through_the_pipeline_stream(encoder):
    frames = FoleyPipeline._stream(_video(), 0.0, float(META["duration"]), 25.0, 224, "center", "mmaudio")
    assert frames.shape == (32, 3, 224, 224)
    tokens, mask = encoder(frames[None])
    assert tokens.shape == (1, 24, TINY["EMBED_DIM"]) and mask.all()
    error = (tokens[0] - EXPECTED).abs().max()
    assert error <= _bound(), f"max error {error:.3g} > {_bound():.3g}"
    print(f"Synchformer features (pipeline stream): max relative error {error / EXPECTED.abs().max():.2e}")


def test_features_with_the_encoders_own_resize(encoder):
    # Source-size frames (40 x 90): short side to 224, centre crop, on the CPU with torchvision's
    # uint8 kernel, as load_video does.
    video = _video()
    source = video.frames(video.indices_at(mmaudio_stream_times(0.0, float(META["duration"]), 25.0), rule="mmaudio"))
    tokens, _ = encoder(torch.from_numpy(source).permute(0, 3, 1, 2)[None])
    error = (tokens[0] - EXPECTED).abs().max()
    assert error <= _bound(), f"max error {error:.3g} > {_bound():.3g}"
    print(f"Synchformer features (encoder resize): max relative error {error / EXPECTED.abs().max():.2e}")
    # One frame later is another input: the check sees a shift of one frame.
    shifted, _ = encoder(torch.from_numpy(video.frames(video.indices_at(
        mmaudio_stream_times(0.0, float(META["duration"]), 25.0), rule="mmaudio") + 1)).permute(0, 3, 1, 2)[None])
    assert (shifted[0] - EXPECTED).abs().max() > 100 * _bound()
