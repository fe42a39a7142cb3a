"""Checks of the generic transformer layers against direct formulas."""
from __future__ import annotations

import math

import torch

from foley.models.layers import (
    MLP,
    FeatureStandardizer,
    RMSNorm,
    SinusoidalEmbedding,
    TemporalConvMLP,
    joint_attention,
    layer_norm,
    modulate,
    rms_normalize,
)


def test_rms_norm_matches_formula_and_keeps_bf16_accurate():
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(3, 5, 16) * 300.0
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * norm.weight
    torch.testing.assert_close(norm(x), expected)
    # In bf16 the only error left is the final rounding of the output (~2^-8 relative).
    x_bf16 = x.bfloat16()
    reference = RMSNorm(16)
    reference.load_state_dict(norm.state_dict())
    out = norm.bfloat16()(x_bf16)
    assert out.dtype == torch.bfloat16
    exact = reference(x_bf16.float())
    assert ((out.float() - exact).abs() / exact.abs().clamp_min(1e-3)).max() < 2**-7


def test_rms_normalize_in_bf16_has_only_rounding_error():
    # Squares of values ~1e3 summed over 64 channels would be far off if accumulated in bf16.
    x = (torch.randn(4, 3, 10, 64) * 1000).bfloat16()
    out = rms_normalize(x)
    assert out.dtype == torch.bfloat16
    xd = x.double()
    exact = xd / xd.pow(2).mean(-1, keepdim=True).sqrt()
    assert ((out.double() - exact).abs() / exact.abs().clamp_min(1e-2)).max() < 3 * 2**-8


def test_bf16_layer_norm_accumulates_in_float32_and_modulate_matches_formula():
    # A large offset makes a bf16-accumulated variance useless; float32 statistics survive.
    x = (torch.randn(2, 7, 32) * 50 + 1000).bfloat16()
    out = layer_norm(x)
    assert out.dtype == torch.bfloat16
    xf = x.double()
    expected = (xf - xf.mean(-1, keepdim=True)) / (xf.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    assert (out.double() - expected).abs().max() < 2e-2  # bf16 output rounding of values up to ~3
    shift, scale = torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    h = out.float()
    torch.testing.assert_close(modulate(h, shift, 1 + scale), h * (1 + scale) + shift)


def test_mlp_is_gelu_between_two_linears():
    mlp = MLP(8, 32)
    x = torch.randn(4, 8)
    hidden = x @ mlp.fc1.weight.T + mlp.fc1.bias
    gelu = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    torch.testing.assert_close(mlp(x), gelu @ mlp.fc2.weight.T + mlp.fc2.bias)


def test_sinusoidal_embedding_in_bf16_keeps_float32_features():
    embed = SinusoidalEmbedding(32, frequency_dim=64, scale=1000.0)
    t = torch.tensor([0.0, 0.3141, 0.9871])
    reference = embed(t)
    # The features depend on t only through cos/sin of t * scale * freq.
    half = 32
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    args = (t * 1000.0)[:, None] * freqs
    features = torch.cat([torch.cos(args), torch.sin(args)], -1)
    expected = embed.fc2(torch.nn.functional.silu(embed.fc1(features)))
    torch.testing.assert_close(reference, expected)
    # A bf16 copy must not round t * 1000 (which would move angles by radians).
    fast = SinusoidalEmbedding(32, frequency_dim=64, scale=1000.0)
    fast.load_state_dict(embed.state_dict())
    out = fast.bfloat16()(t).float()
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()


def test_joint_attention_ignores_masked_keys():
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    key_mask = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    out = joint_attention(q, k, v, key_mask)
    assert out.shape == (2, 6, 24)
    for b, n in ((0, 6), (1, 4)):
        scores = q[b] @ k[b, :, :n].transpose(-1, -2) / math.sqrt(8)
        expected = (scores.softmax(-1) @ v[b, :, :n]).transpose(0, 1).reshape(6, 24)
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-5)
    all_real = torch.ones(2, 6, dtype=torch.bool)
    torch.testing.assert_close(joint_attention(q, k, v, None), joint_attention(q, k, v, all_real))


def test_temporal_conv_mlp_matches_formula_sees_neighbours_and_ignores_padding():
    torch.manual_seed(0)
    layer = TemporalConvMLP(4, 6, kernel_size=3)
    x = torch.randn(1, 7, 4)
    # Direct formula: replicate-padded convolutions, GELU, residual.
    pad = lambda h: torch.cat([h[:, :, :1], h, h[:, :, -1:]], dim=2)  # noqa: E731
    hidden = torch.nn.functional.gelu(torch.nn.functional.conv1d(pad(x.transpose(1, 2)), layer.conv1.weight, layer.conv1.bias))
    expected = x + torch.nn.functional.conv1d(pad(hidden), layer.conv2.weight, layer.conv2.bias).transpose(1, 2)
    torch.testing.assert_close(layer(x), expected)
    # A token's output depends on its neighbours (two convolutions: +-2 tokens), not further.
    moved = x.clone()
    moved[:, 3] += 1.0
    changed = (layer(moved) - layer(x)).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == [False, True, True, True, True, True, False]
    # Padding after the valid length never changes the valid tokens.
    padded = torch.cat([x, torch.randn(1, 5, 4)], dim=1)
    out = layer(padded, torch.tensor([7]))
    torch.testing.assert_close(out[:, :7], layer(x))
    # A constant sequence (a placeholder) stays constant over time.
    constant = layer(torch.ones(2, 9, 4) * torch.randn(1, 1, 4))
    torch.testing.assert_close(constant, constant[:, :1].expand_as(constant))


def test_feature_standardizer_uses_unmasked_statistics_then_freezes():
    torch.manual_seed(0)
    layer = FeatureStandardizer(3, warmup_updates=2)
    x = torch.randn(2, 5, 3) * torch.tensor([0.1, 2.0, 5.0]) + torch.tensor([1.0, -3.0, 0.0])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(layer.eval()(x), x)  # no statistics yet, eval mode: identity
    out = layer.train()(x, mask)
    tokens = x[mask]
    expected = (x - tokens.mean(0)) / tokens.var(0, unbiased=False).add(1e-6).sqrt()
    torch.testing.assert_close(out, expected)
    assert out[mask].mean(0).abs().max() < 1e-5 and (out[mask].std(0, unbiased=False) - 1).abs().max() < 1e-3
    layer(x + 1.0)  # second update: statistics of both calls
    frozen = layer.state_dict()
    layer(torch.randn(2, 5, 3) * 100)  # past the warm-up: no change
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(value, frozen[key])
    both = torch.cat([tokens, x.reshape(-1, 3) + 1.0])
    torch.testing.assert_close(layer.eval()(x), (x - both.mean(0)) / both.var(0, unbiased=False).add(1e-6).sqrt())
