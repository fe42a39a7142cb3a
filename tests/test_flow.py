"""Closed-form checks of the flow-matching loss and samplers."""
from __future__ import annotations

import math

import pytest
import torch

from foley.flow import FlowMatching


def gaussian_field(mu: float, sigma: float):
    """Exact marginal velocity of the linear path from N(0, 1) to N(mu, sigma^2).

    x_t = t x1 + (1 - t) x0 is Gaussian with mean t mu and variance
    s_t^2 = t^2 sigma^2 + (1 - t)^2; E[x1 - x0 | x_t] follows from the covariance
    Cov(x1 - x0, x_t) = t sigma^2 - (1 - t). The flow maps x0 to mu + sigma x0.
    """
    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = t.to(x.dtype)[:, None]
        var = tb**2 * sigma**2 + (1 - tb) ** 2
        return mu + (tb * sigma**2 - (1 - tb)) / var * (x - tb * mu)
    return field


def point_field(target: torch.Tensor):
    """Exact velocity towards a single data point: (c - x) / (1 - t)."""
    return lambda x, t: (target - x) / (1 - t.to(x.dtype))[:, None]


@pytest.mark.parametrize("steps", [1, 7])
def test_euler_with_exact_straight_field_reaches_the_data_point(steps):
    target = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64).expand(4, 3)
    noise = torch.randn(4, 3, dtype=torch.float64)
    sample = FlowMatching().sample(point_field(target), noise, steps=steps, method="euler")
    torch.testing.assert_close(sample, target, rtol=0, atol=1e-12)


def test_second_order_samplers_beat_euler_on_a_curved_field():
    mu, sigma = 2.0, 0.3
    noise = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = mu + sigma * noise
    fm = FlowMatching()
    errors = {}
    for method in ("euler", "midpoint", "heun"):
        for steps in (10, 20, 40):
            sample = fm.sample(gaussian_field(mu, sigma), noise, steps=steps, method=method)
            errors[method, steps] = (sample - exact).abs().max().item()
    for steps in (10, 20, 40):
        assert errors["heun", steps] < 0.1 * errors["euler", steps]
        assert errors["midpoint", steps] < 0.1 * errors["euler", steps]
    # Convergence orders: halving the step size halves Euler's error and (at least)
    # quarters the second-order samplers' errors.
    assert 1.6 < errors["euler", 20] / errors["euler", 40] < 2.5
    assert 3.0 < errors["heun", 20] / errors["heun", 40] < 5.5
    assert errors["midpoint", 20] / errors["midpoint", 40] > 3.0


def test_loss_is_zero_for_the_exact_conditional_field_and_analytic_for_zero_velocity():
    fm = FlowMatching(t_sampling="uniform")
    target = torch.full((1, 6), 0.5, dtype=torch.float64)
    x1 = target.expand(20000, 6).contiguous()
    generator = torch.Generator().manual_seed(0)
    # For a point mass the marginal field is exact, so the loss vanishes for any t.
    exact = fm.loss(point_field(x1), x1, generator=generator)
    assert exact.item() < 1e-20
    # v = 0: E|x1 - x0|^2 = c^2 + 1 per element.
    zero = fm.loss(lambda x, t: torch.zeros_like(x), x1, generator=generator)
    assert zero.item() == pytest.approx(0.25 + 1.0, rel=0.02)


def test_loss_with_given_t_and_noise_matches_formula_and_ignores_masked_elements():
    fm = FlowMatching(min_sigma=0.1)
    x1 = torch.randn(3, 5, 2)
    noise = torch.randn(3, 5, 2)
    t = torch.tensor([0.1, 0.5, 0.9])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    seen = {}

    def velocity(x_t, tt):
        seen["x_t"] = x_t
        out = torch.zeros_like(x_t)
        out[~mask] = 1e6  # garbage on padding must not reach the loss
        return out

    loss = fm.loss(velocity, x1, mask=mask, t=t, noise=noise)
    tb = t[:, None, None]
    torch.testing.assert_close(seen["x_t"], tb * x1 + (1 - 0.9 * tb) * noise)
    target = x1 - 0.9 * noise
    expected = target[mask].square().mean()
    torch.testing.assert_close(loss, expected)


def test_logit_normal_times_have_the_requested_logit_moments():
    fm = FlowMatching(logit_mean=0.5, logit_std=0.8)
    t = fm.sample_t(200000, generator=torch.Generator().manual_seed(3))
    logits = torch.log(t / (1 - t))
    assert 0 < t.min() and t.max() < 1
    assert logits.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logits.std().item() == pytest.approx(0.8, abs=0.01)


def test_same_seed_gives_the_same_loss_and_sample():
    fm = FlowMatching()
    x1 = torch.randn(4, 8, 3)
    field = lambda x, t: torch.tanh(x) * t[:, None, None]  # noqa: E731
    losses = [fm.loss(field, x1, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert losses[0].item() == losses[1].item()
    other = fm.loss(field, x1, generator=torch.Generator().manual_seed(6))
    assert other.item() != losses[0].item()
    samples = [fm.sample(field, torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(9)),
                         steps=4, method="heun") for _ in range(2)]
    assert torch.equal(samples[0], samples[1])


def test_guidance_strength_one_equals_the_conditional_sampler_and_formula_holds():
    fm = FlowMatching()
    cond = lambda x, t: -x + 1.0  # noqa: E731
    uncond = lambda x, t: 0.5 * x  # noqa: E731
    noise = torch.randn(3, 4)
    plain = fm.sample(cond, noise, steps=6)
    guided_one = fm.sample(cond, noise, steps=6, cfg_strength=1.0, uncond_velocity_fn=uncond)
    torch.testing.assert_close(guided_one, plain, rtol=0, atol=0)
    # One Euler step with s = 3 moves by v = 3 v_c - 2 v_u.
    one_step = fm.sample(cond, noise, steps=1, cfg_strength=3.0, uncond_velocity_fn=uncond)
    torch.testing.assert_close(one_step, noise + 3 * cond(noise, None) - 2 * uncond(noise, None))


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="t_sampling"):
        FlowMatching(t_sampling="cosine")
    with pytest.raises(ValueError, match="method"):
        FlowMatching().sample(lambda x, t: x, torch.zeros(1, 2), method="rk4")
    with pytest.raises(ValueError, match="mask shape"):
        FlowMatching().loss(lambda x, t: x, torch.zeros(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    assert math.isfinite(FlowMatching().loss(lambda x, t: x, torch.zeros(2, 3)).item())


def test_inpainting_keeps_the_known_region_on_its_noised_path_and_couples_the_rest():
    fm = FlowMatching()
    gen = torch.Generator().manual_seed(0)
    noise, known = torch.randn(2, 6, 3, generator=gen), torch.randn(2, 6, 3, generator=gen)
    known_mask = torch.tensor([[True, True, False, False, False, False]] * 2)
    seen: list[tuple[float, torch.Tensor]] = []

    def coupled(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Every element moves with the mean over time positions: unknown ones feel the known ones.
        seen.append((float(t[0]), x.clone()))
        return x.mean(dim=1, keepdim=True).expand_as(x)

    out = fm.sample(coupled, noise, steps=2, known=known, known_mask=known_mask)
    # Closed form of two Euler steps with the replacement after each step.
    x = noise + 0.5 * noise.mean(1, keepdim=True)
    x[:, :2] = 0.5 * known[:, :2] + 0.5 * noise[:, :2]  # interpolate(noise, known, t=0.5)
    torch.testing.assert_close(seen[1][1], x)  # what the network sees at t = 0.5
    expected = x + 0.5 * x.mean(1, keepdim=True)
    expected[:, :2] = known[:, :2]
    torch.testing.assert_close(out, expected)
    # The unknown part depends on the known data (through the field), so it differs from plain sampling.
    plain = fm.sample(coupled, noise, steps=2)
    assert not torch.allclose(out[:, 2:], plain[:, 2:])


def test_inpainting_with_an_elementwise_field_leaves_the_unknown_part_unchanged():
    fm = FlowMatching(min_sigma=0.01)
    target = torch.randn(3, 5)
    noise, known = torch.randn(3, 5), torch.randn(3, 5)
    known_mask = torch.zeros(3, 5, dtype=torch.bool)
    known_mask[:, 3:] = True
    out = fm.sample(point_field(target), noise, steps=5, method="midpoint", known=known, known_mask=known_mask)
    plain = fm.sample(point_field(target), noise, steps=5, method="midpoint")
    torch.testing.assert_close(out[:, :3], plain[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 3:], known[:, 3:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="both"):
        fm.sample(point_field(target), noise, known=known)
    with pytest.raises(ValueError, match="known_mask shape"):
        fm.sample(point_field(target), noise, known=known, known_mask=torch.ones(2, 5, dtype=torch.bool))
