from __future__ import annotations

import copy

import pytest
import torch

from foley.encoders.text import TextEncoder

TINY_T5 = {"vocab_size": 384, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(model_config=TINY_T5, max_length=20)


def test_empty_caption_is_marked_absent_not_encoded(encoder):
    features, mask = encoder(["a red ball bounces", "", "   "])
    assert features.shape == (3, 20, 32)
    assert mask[0, :19].all()  # 18 bytes + </s>
    assert not mask[0, 19]
    assert not mask[1].any() and not mask[2].any()
    assert (features[1] == 0).all() and (features[2] == 0).all()


def test_features_match_the_t5_encoder_and_ignore_batch_padding(encoder):
    features, mask = encoder(["knock", "a much longer caption here"])
    ids = torch.tensor([[ord(c) + 3 for c in "knock"] + [1]])
    # Padded batch vs the caption alone, in float64: in float32 the two shapes round differently
    # (~eps32 * sqrt(K) * gain * |out|, K = d_ff = 64, |out| ~ 3); in float64 even
    # K * eps64 * gain 10 * |out| is 4e-13, so 1e-10 holds, and attending to padding would
    # change the features by O(0.1).
    exact = copy.deepcopy(encoder).double()
    direct = exact.model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(exact(["knock", "a much longer caption here"])[0][0, : ids.shape[1]], direct,
                               rtol=0.0, atol=1e-10)
    assert int(mask[0].sum()) == 6 and (features[0, 6:] == 0).all()


def test_captions_are_truncated_to_max_length(encoder):
    _, mask = encoder(["x" * 100])
    assert mask.shape == (1, 20) and mask.all()


def test_encoder_is_frozen(encoder):
    encoder.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.dim == 32


def test_missing_model_gives_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="local folder"):
        TextEncoder(model_name=str(tmp_path / "no-such-t5"))
