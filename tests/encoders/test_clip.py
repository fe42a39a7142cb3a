from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from foley.encoders.clip import CLIP_MEAN, CLIP_STD, ClipEncoder

# Per-frame vs batched and whole vs chunked are identities in real arithmetic; in float32 the
# differently shaped GEMMs round differently (~eps32 * sqrt(K) * gain * |out|, K = 192 for the
# 8x8x3 patches), so they are checked in float64, where the same estimate with K instead of
# sqrt(K) and a gain of 10 is 2.2e-16 * 192 * 10 * 1 = 4e-13; 1e-10 leaves room and any mix-up
# of frames moves unit-norm embeddings by O(0.1).
EXACT = dict(rtol=0.0, atol=1e-10)

TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    torch.manual_seed(0)
    return ClipEncoder(model_config=TINY_CONFIG)


def test_embeddings_are_unit_norm_and_match_the_tower_per_frame(encoder):
    frames = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out, out_mask = encoder(frames, mask)
    assert out.shape == (2, 3, 16) and torch.equal(out_mask, mask)
    torch.testing.assert_close(out[mask].norm(dim=-1), torch.ones(4))
    assert (out[~mask] == 0).all()
    # Per-frame reference with CLIP normalisation computed by hand, in float32 like the encoder
    # (elementwise, so the same bits on every machine); the network runs in float64 (EXACT).
    exact = copy.deepcopy(encoder).double()
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    image = ((frames[0, 1].float() / 255 - mean) / std).double()
    expected = F.normalize(exact.visual(image[None]), dim=-1)[0]
    torch.testing.assert_close(exact(frames, mask)[0][0, 1], expected, **EXACT)


def test_batched_over_frames_gives_the_same_result(encoder):
    frames = torch.randint(0, 256, (1, 5, 3, 48, 40), dtype=torch.uint8)
    exact = copy.deepcopy(encoder).double()
    whole, _ = exact(frames)
    exact.frame_batch_size = 2
    chunked, _ = exact(frames)
    torch.testing.assert_close(whole, chunked, **EXACT)


def test_encoder_is_frozen(encoder):
    encoder.train()
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.dim == 16 and encoder.image_size == 32


def test_missing_pretrained_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="checkpoint_path"):
        ClipEncoder("ViT-B-32", pretrained="metaclip_400m", checkpoint_path=str(tmp_path / "missing.pt"))
