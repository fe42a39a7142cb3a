"""CLIP frame and per-token text features against MMAudio's FeaturesUtils (tests/fixtures/mmaudio/{clip,text}_*).

scripts/mmaudio_fixtures/encoders.py built MMAudio's FeaturesUtils with a tiny open_clip model in
place of DFN5B-CLIP-ViT-H-14-384 (image tower at 384 x 384, 12 x 12 patches of 32, width 16; text
tower with the 77-token context and full vocabulary, width 32) and recorded
``encode_video_with_clip`` of ``load_video``'s CLIP frames of a 1 s, 30 fps, 90 x 40 video, and
``encode_text`` of four captions (empty, short, mixed case with punctuation, truncated).

Tolerance. Both sides run the same open_clip modules in float32 on bit-identical inputs (the frame
test in test_mmaudio_frames.py shows the pixels are the same), so any difference comes from
float32 GEMMs blocked differently (batch shape, thread count, SIMD width). One matmul with K terms
has a relative error of at most ~K * eps32 and typically sqrt(K) * eps32; the deepest chain here is
patch embedding (K = 3 * 32 * 32 = 3072) and 2 blocks of attention and MLP (K <= 4 * 16 = 64, 4
matmuls each), then the projection and the L2 normalisation of unit vectors. Summing the worst-case
K * eps32 over the chain, 3072 * 6e-8 + 8 * 64 * 6e-8 + 16 * 6e-8 = 2.2e-4, amplified at most ~3x by
the layer norms of these random weights, bounds the error on unit-norm features by 7e-4; 1e-3 is
used (the measured difference is 0: the same operations in the same order). A wrong resize, mean,
std or missed normalisation moves the features by O(0.1).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from foley.encoders.clip import CLIP_MEAN, CLIP_STD, ClipEncoder
from foley.encoders.text import ClipTextEncoder
from foley.io.video import VideoFile, mmaudio_stream_times
from foley.pipeline import FoleyPipeline

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mmaudio"
TOLERANCE = dict(rtol=0.0, atol=1e-3)


def _load(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURES / name), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def _max_relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def image_fixture():
    tensors, meta = _load("clip_image.safetensors")
    encoder = ClipEncoder(model_config=json.loads(meta["model_config"]), resize="stretch", preprocess="torchvision",
                          mean=CLIP_MEAN, std=CLIP_STD)
    encoder.load_state_dict({k: v for k, v in tensors.items() if k.startswith("visual.")}, strict=True)
    video = VideoFile(tensors["video.mp4"].numpy().tobytes(), name="cfr30", backend="pyav")
    return encoder, video, float(meta["duration"]), tensors["features"]


def test_frame_features_through_the_pipeline_stream(image_fixture):
    encoder, video, duration, expected = image_fixture
    frames = FoleyPipeline._stream(video, 0.0, duration, 8.0, 384, "resize", "mmaudio")  # uint8 (8, 3, 384, 384)
    features, mask = encoder(frames[None])
    assert features.shape == expected[None].shape and mask.all()
    torch.testing.assert_close(features[0], expected, **TOLERANCE)
    print(f"CLIP frame features (pipeline stream): max relative error {_max_relative(features[0], expected):.2e}")


def test_frame_features_with_the_encoders_own_resize(image_fixture):
    # Source-size frames (40 x 90): the encoder stretches them to 384 x 384 itself, on the CPU
    # with torchvision's uint8 kernel, as load_video does.
    encoder, video, duration, expected = image_fixture
    source = video.frames(video.indices_at(mmaudio_stream_times(0.0, duration, 8.0), rule="mmaudio"))
    features, _ = encoder(torch.from_numpy(source).permute(0, 3, 1, 2)[None])
    torch.testing.assert_close(features[0], expected, **TOLERANCE)
    print(f"CLIP frame features (encoder resize): max relative error {_max_relative(features[0], expected):.2e}")
    # foley's own preprocessing (normalise, then float resize with a centre crop) is another function.
    other = ClipEncoder(model_config=encoder.init_config()["init_args"]["model_config"])
    other.load_state_dict(encoder.state_dict())
    assert (other(torch.from_numpy(source).permute(0, 3, 1, 2)[None])[0][0] - expected).abs().max() > 1e-2


@pytest.fixture(scope="module")
def text_fixture():
    tensors, meta = _load("text_clip.safetensors")
    config = json.loads(meta["model_config"])
    encoder = ClipTextEncoder(model_config=config, tokenizer_name=meta["tokenizer"])
    state = {k: v for k, v in tensors.items() if k not in ("tokens", "features") and not k.startswith("token_embedding.")}
    # Only the token rows the captions use are stored; the reference had zeros elsewhere.
    table = torch.zeros(config["text_cfg"]["vocab_size"], config["text_cfg"]["width"])
    table[tensors["token_embedding.ids"]] = tensors["token_embedding.rows"]
    state["token_embedding.weight"] = table
    encoder.load_state_dict(state, strict=True)
    return encoder, json.loads(meta["captions"]), tensors["tokens"], tensors["features"]


def test_text_tokens_and_per_token_features(text_fixture):
    encoder, captions, tokens, expected = text_fixture
    assert torch.equal(encoder.tokenize(captions), tokens)
    features, mask = encoder(captions)
    assert features.shape == (4, 77, 32) and mask.all()  # MMAudio's network attends to all 77 tokens
    torch.testing.assert_close(features, expected, **TOLERANCE)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(4, 77))
    print(f"CLIP per-token text features: max relative error {_max_relative(features, expected):.2e}")


def test_text_mask_options(text_fixture):
    encoder, captions, tokens, expected = text_fixture
    absent = ClipTextEncoder(**{**encoder.init_config()["init_args"], "empty_caption": "absent", "mask_padding": True})
    absent.load_state_dict(encoder.state_dict())
    features, mask = absent(captions)
    assert not mask[0].any() and (features[0] == 0).all()  # "" is "no text"
    ends = (tokens == tokens.max()).int().argmax(dim=1)  # position of the end-of-text token
    np.testing.assert_array_equal(mask[1:].sum(dim=1).numpy(), (ends[1:] + 1).numpy())
    assert mask[3].all()  # the truncated caption fills the context
    torch.testing.assert_close(features[1:], expected[1:], **TOLERANCE)
