"""Aligned RoPE: same instant -> same rotation, scores depend only on time differences."""
from __future__ import annotations

import pytest
import torch

from foley.models.rope import AlignedRoPE, apply_rope

LATENT_RATE = 44100 / 1024  # 43.07 Hz


def rotate_reference(x: torch.Tensor, position: float, base: float = 10000.0) -> torch.Tensor:
    """Rotation of the pairs (x[j], x[j + D/2]) by position * base^(-2j/D), via complex numbers."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(
        torch.ones(half, dtype=torch.float64), position * freqs)
    return torch.cat([z.real, z.imag], dim=-1)


@pytest.mark.parametrize(("clip_rate", "clip_index", "audio_index"), [
    (8.0, 2048, 11025),  # 256 s: 2048 / 8 = 11025 * 1024 / 44100
    (30.0, 512, 735),  # 30 fps input: 512 / 30 = 735 * 1024 / 44100
    (8.0, 0, 0),
])
def test_visual_and_audio_tokens_at_the_same_instant_get_the_same_rotation(clip_rate, clip_index, audio_index):
    rope = AlignedRoPE(64, LATENT_RATE)
    clip_cos, clip_sin = rope.tables(clip_index + 1, clip_rate)
    audio_cos, audio_sin = rope.tables(audio_index + 1, LATENT_RATE)
    assert clip_index / clip_rate == pytest.approx(audio_index / LATENT_RATE, abs=1e-12)
    torch.testing.assert_close(clip_cos[clip_index], audio_cos[audio_index], rtol=0, atol=1e-6)
    torch.testing.assert_close(clip_sin[clip_index], audio_sin[audio_index], rtol=0, atol=1e-6)
    # The table realises a rotation by time * latent_rate radians times the frequency.
    x = torch.randn(64)
    rotated = apply_rope(x, clip_cos[clip_index], clip_sin[clip_index])
    torch.testing.assert_close(rotated.double(), rotate_reference(x, clip_index / clip_rate * LATENT_RATE),
                               rtol=1e-4, atol=1e-4)


def test_frame_rates_map_seconds_to_latent_positions():
    rope = AlignedRoPE(32, LATENT_RATE)
    for rate in (8.0, 24.0, 25.0, 29.97, 30.0):
        positions = rope.positions(100, rate)
        # Positions are formed in float64 and rounded once to float32: relative error <= 2^-24
        # (5.96e-8) on every machine; 6e-8 leaves room for the float64 products' own rounding.
        exact = torch.arange(100, dtype=torch.float64) / rate * LATENT_RATE
        torch.testing.assert_close(positions.double(), exact, rtol=6e-8, atol=0.0)


def test_scores_depend_only_on_the_time_difference():
    rope = AlignedRoPE(64, LATENT_RATE)
    q, k = torch.randn(64), torch.randn(64)

    def score(q_time: float, k_time: float) -> float:
        pos = torch.tensor([q_time, k_time]) * LATENT_RATE
        cos, sin = rope.tables_for_positions(pos)
        return float(apply_rope(q, cos[0], sin[0]) @ apply_rope(k, cos[1], sin[1]))

    near = score(1.25, 0.5)
    far = score(7.25, 6.5)  # same 0.75 s gap, 6 s later
    assert far == pytest.approx(near, abs=1e-3 * abs(near) + 1e-3)
    assert abs(score(1.25, 0.25) - near) > 1e-2  # a different gap changes the score
    # A rotation preserves norms.
    cos, sin = rope.tables_for_positions(torch.tensor([123.4]))
    assert apply_rope(q, cos[0], sin[0]).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_rope_rejects_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        AlignedRoPE(63, LATENT_RATE)
    with pytest.raises(ValueError, match="rate"):
        AlignedRoPE(64, LATENT_RATE).positions(4, 0.0)
