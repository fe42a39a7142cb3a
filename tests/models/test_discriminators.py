"""Waveform discriminators: outputs for feature matching and the period folding."""

from __future__ import annotations

import pytest
import torch

from foley.models.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator, PeriodDiscriminator


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("length", [4096, 4099])
def test_groups_return_one_logit_and_feature_stack_per_sub_discriminator(length: int) -> None:
    wave = torch.randn(2, 1, length, requires_grad=True)
    mpd = MultiPeriodDiscriminator(periods=[2, 3, 5], channels=[4, 8, 8])
    mrd = MultiResolutionDiscriminator(resolutions=[[512, 128, 512], [256, 64, 256]], channels=4)
    for disc, count, depth in ((mpd, 3, 4), (mrd, 2, 6)):
        logits, features = disc(wave)
        assert len(logits) == len(features) == count
        assert all(len(f) == depth and l.shape[0] == 2 for l, f in zip(logits, features))
        sum(l.sum() for l in logits).backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()


@torch.no_grad()
def test_period_discriminator_sees_a_shift_by_one_period_as_one_row() -> None:
    torch.manual_seed(0)
    disc = PeriodDiscriminator(period=3, channels=[4], kernel_size=1, stride=1)
    wave = torch.randn(1, 1, 300)
    _, features = disc(wave)
    _, shifted_features = disc(torch.roll(wave, shifts=3, dims=-1))
    # Kernel 1 along time: row i of the folded map only sees samples 3i..3i+2.
    torch.testing.assert_close(shifted_features[0][..., 1:, :], features[0][..., :-1, :])
