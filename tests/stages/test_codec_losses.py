"""Codec losses against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from foley.stages.codec_losses import (
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    gaussian_kl,
    generator_adversarial_loss,
    margin_kl_loss,
    masked_l1,
)

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def test_gaussian_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 4, 6, generator=gen)
    logvar = torch.randn(2, 4, 6, generator=gen)
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(posterior, prior)
    torch.testing.assert_close(gaussian_kl(mean, logvar), expected.mean())
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :3] = True
    torch.testing.assert_close(gaussian_kl(mean, logvar, mask), expected[0, :, :3].mean())


def test_kl_is_zero_at_the_prior() -> None:
    assert float(gaussian_kl(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))) == 0.0


@pytest.mark.parametrize("margin", [0.0, 0.5, 2.0])
def test_margin_kl_is_flat_below_and_linear_above_the_margin(margin: float) -> None:
    # Mean offset m gives KL = m^2 / 2 per element at unit variance.
    for offset in (0.3, 1.2, 2.5):
        mean = torch.full((1, 2, 3), offset, requires_grad=True)
        kl = gaussian_kl(mean, torch.zeros(1, 2, 3))
        loss = margin_kl_loss(kl, margin)
        loss.backward()
        # 0.5 * (m^2 + exp(0) - 1 - 0) in float32: rounding m^2 + 1 costs up to eps32 / 2 * (1 + m^2)
        # absolute (the - 1 then cancels), the float32 offset and square ~eps32 * m^2, the mean
        # of 6 equal terms a few eps32 * m^2 more: eps32 * (1 + m^2) bounds it. (A relative 1e-6
        # was below the worst case at m = 0.3, where the cancellation makes it 6.6e-7 + 3.8e-7.)
        assert math.isclose(float(kl), offset**2 / 2, rel_tol=0.0, abs_tol=EPS32 * (1 + offset**2))
        if offset**2 / 2 < margin:
            assert float(loss) == 0.0
            assert float(mean.grad.abs().sum()) == 0.0
        else:
            assert math.isclose(float(loss), offset**2 / 2 - margin, rel_tol=1e-5, abs_tol=1e-7)
            # d/dm of mean(m^2/2) over 6 elements = m / 6 per element
            torch.testing.assert_close(mean.grad, torch.full_like(mean, offset / 6))


def test_masked_l1_ignores_padding() -> None:
    prediction = torch.zeros(1, 2, 4)
    target = torch.tensor([[[1.0, 1.0, 9.0, 9.0], [3.0, 3.0, 9.0, 9.0]]])
    mask = torch.tensor([[True, True, False, False]])
    assert float(masked_l1(prediction, target, mask)) == 2.0


def test_spectral_losses_vanish_on_identity_and_grow_with_error() -> None:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(8192) / 44100
    clean = (0.5 * torch.sin(2 * math.pi * 440 * t)).unsqueeze(0)
    stft = MultiResolutionSTFTLoss([(512, 128, 512), (1024, 256, 1024)])
    mel = MultiResolutionMelLoss(44100, [256, 1024], [40, 80])
    small = clean + 0.01 * torch.randn(clean.shape, generator=gen)
    large = clean + 0.2 * torch.randn(clean.shape, generator=gen)
    for loss in (stft, mel):
        assert float(loss(clean, clean)) < 1e-5
        assert 0 < float(loss(small, clean)) < float(loss(large, clean))


def test_lsgan_losses_have_their_optima_at_the_labels() -> None:
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert float(discriminator_loss(ones, zeros)) == 0.0
    assert float(discriminator_loss(zeros, ones)) == 2.0
    assert float(generator_adversarial_loss(ones)) == 0.0
    assert float(generator_adversarial_loss(zeros)) == 1.0


def test_feature_matching_averages_l1_and_detaches_real() -> None:
    real = [[torch.ones(2, 3, requires_grad=True), torch.zeros(4)]]
    fake = [[torch.zeros(2, 3, requires_grad=True), torch.full((4,), 3.0)]]
    loss = feature_matching_loss(real, fake)
    assert float(loss) == 2.0
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None
