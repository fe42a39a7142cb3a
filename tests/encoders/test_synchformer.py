from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from foley.encoders.synchformer import MotionFormer, SynchformerEncoder, _DividedAttention, num_segments

MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "synchformer_visual.json"
TINY = dict(crop_size=32, patch_size=8, dim=64, depth=2, num_heads=4, segment_batch_size=5)


def test_full_size_state_dict_matches_official_manifest():
    if not MANIFEST.exists():
        pytest.skip("reference manifest not available")
    tensors = json.loads(MANIFEST.read_text())["tensors"]
    with torch.device("meta"):
        encoder = SynchformerEncoder()
    state = encoder.state_dict()
    assert list(state) == list(tensors)
    for key, entry in tensors.items():
        assert list(state[key].shape) == entry["shape"], key
        assert str(state[key].dtype) == entry["dtype"], key
    assert sum(v.numel() for v in state.values()) == 122_440_704


def test_segmenting_counts_and_token_rate():
    assert num_segments(200) == 24  # 8 s at 25 fps
    assert num_segments(250) == 30
    assert num_segments(16) == 1 and num_segments(23) == 1 and num_segments(24) == 2
    with torch.device("meta"):
        encoder = SynchformerEncoder()
    assert encoder.num_tokens(200) == 192
    assert encoder.token_rate == pytest.approx(25.0)


def _reference_divided_attention(module: _DividedAttention, x: torch.Tensor, steps: int, per_step: int, over: str):
    # Straightforward loops over the groups, written independently of the vectorised module.
    heads = module.num_heads
    b, n, d = x.shape
    q, k, v = module.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.view(b, n, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scale = (d // heads) ** -0.5
    attend = lambda qq, kk, vv: torch.softmax(qq @ kk.transpose(-1, -2) * scale, -1) @ vv  # noqa: E731
    out = torch.zeros_like(q)
    out[:, :, :1] = attend(q[:, :, :1], k, v)
    for g in range(per_step if over == "time" else steps):
        if over == "time":
            idx = torch.tensor([1 + t * per_step + g for t in range(steps)])
        else:
            idx = torch.tensor([1 + g * per_step + s for s in range(per_step)])
        keys = torch.cat([k[:, :, :1], k[:, :, idx]], dim=2)
        vals = torch.cat([v[:, :, :1], v[:, :, idx]], dim=2)
        out[:, :, idx] = attend(q[:, :, idx], keys, vals)
    return module.proj(out.transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("over", ["time", "space"])
def test_divided_attention_matches_loop_reference(over):
    module = _DividedAttention(32, 4)
    steps, per_step = 3, 5
    x = torch.randn(2, 1 + steps * per_step, 32)
    expected = _reference_divided_attention(module, x, steps, per_step, over)
    torch.testing.assert_close(module(x, steps, per_step, over), expected, atol=1e-5, rtol=1e-5)


def test_tiny_encoder_tokens_follow_segments_and_masks():
    encoder = SynchformerEncoder(**TINY)
    frames = torch.randint(0, 256, (2, 40, 3, 40, 48), dtype=torch.uint8)  # resized + cropped inside
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False  # second clip has 30 real frames -> 2 segments of 4
    tokens, token_mask = encoder(frames, mask)
    assert tokens.shape == (2, 4 * 8, 64)
    assert token_mask[0].all()
    assert token_mask[1].tolist() == [True] * 16 + [False] * 16
    assert (tokens[1, 16:] == 0).all()
    # Segment 1 of the batch equals encoding frames 8..24 on their own. Checked in float64:
    # in float32 the differently shaped batches round differently (~eps32 * sqrt(K) * gain *
    # |out|, K = 3 * 2 * 8 * 8 = 384 for a tubelet); in float64 even K * eps64 * gain 10 * |out|
    # (<= 1) is 8.5e-13, so 1e-10 holds, while tokens of another segment differ by O(0.1).
    exact = copy.deepcopy(encoder).double()
    batched, _ = exact(frames, mask)
    alone, _ = exact(frames[:1, 8:24])
    torch.testing.assert_close(batched[:1, 8:16], alone, rtol=0.0, atol=1e-10)
    # Normalisation happens inside: a different value range changes the output.
    assert not torch.allclose(tokens[:1, :8], encoder(frames[:1, :16] // 2)[0])


def test_encoder_is_frozen_and_stays_in_eval_mode():
    encoder = SynchformerEncoder(**TINY)
    encoder.train()
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_checkpoint_loader_keeps_visual_keys_and_is_strict(tmp_path):
    source = SynchformerEncoder(**TINY)
    full = {k: v.clone() for k, v in source.state_dict().items()}
    full["afeat_extractor.dummy"] = torch.zeros(3)
    full["transformer.layer.weight"] = torch.zeros(2, 2)
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save(full, path)
    target = SynchformerEncoder(checkpoint_path=str(path), **TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    torch.save({"model": full}, tmp_path / "nested.pt")
    SynchformerEncoder(checkpoint_path=str(tmp_path / "nested.pt"), **TINY)
    broken = dict(full)
    broken.pop("vfeat_extractor.norm.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing.*norm.weight"):
        SynchformerEncoder(checkpoint_path=str(tmp_path / "broken.pth"), **TINY)
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        SynchformerEncoder(checkpoint_path=str(tmp_path / "absent.pth"), **TINY)


def test_time_grid_places_each_token_at_its_frames():
    from foley.encoders.synchformer import SynchformerEncoder

    encoder = SynchformerEncoder(crop_size=32, patch_size=16, dim=32, depth=1, num_heads=2, time_grid=True)
    assert encoder.token_rate == 12.5
    # A single bright frame: only the grid token covering it (and none far away) may
    # differ from the all-dark video's tokens.
    dark = torch.zeros(1, 48, 3, 32, 32, dtype=torch.uint8)
    flash = dark.clone()
    flash[:, 21] = 255
    base, mask = encoder(dark)
    lit, _ = encoder(flash)
    assert base.shape[1] == encoder.num_tokens(48) == 24 and mask.all()
    changed = (lit - base).abs().amax(-1)[0]
    assert changed.argmax().item() == 21 // 2
    # Segments covering frame 21 span frames 8..31 (grid tokens 4..15): temporal attention
    # leaks a little inside them, nothing reaches tokens outside, and the peak dominates.
    outside = [k for k in range(24) if not 4 <= k < 16]
    assert changed[outside].max() < 1e-6
    others = torch.cat([changed[:10], changed[11:]])
    assert changed[10] > 10 * others.max()
