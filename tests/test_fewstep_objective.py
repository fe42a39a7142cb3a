"""The few-step objective (foley.flow.TrajectoryDistillation) and the step-conditioned MM-DiT.

Closed forms: on a velocity field that depends on t only, the teacher's Euler path is a sum
of known terms, so the regression targets are known exactly; a student that returns them has
zero loss, and one wrong by a known amount on one step count has a known loss. Learning: a
small student distilled from a curved toy flow reaches the teacher's end point in one step
far better than the teacher's own single step.
"""
from __future__ import annotations

import math

import pytest
import torch

from foley.flow import FlowMatching, TrajectoryDistillation
from foley.models.mmdit import MMDiT

EPS32 = 2.0 ** -24


def _time_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v(x, t) = cos(3 t) + t, the same for every element (float64 states keep float64 times)."""
    return (torch.cos(3 * t) + t).reshape(-1, *([1] * (x.dim() - 1))).expand_as(x).to(x.dtype)


def test_trajectory_is_the_sampler_path() -> None:
    noise = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0))
    field = lambda x, t: torch.sin(x) * (1 + t[:, None, None])  # noqa: E731
    flow = FlowMatching()
    for method in ("euler", "midpoint", "heun"):
        states = flow.trajectory(field, noise, steps=8, every=2, method=method)
        assert len(states) == 5 and torch.equal(states[0], noise)
        # Same arithmetic as sample(): the end point is bit-identical.
        assert torch.equal(states[-1], flow.sample(field, noise, steps=8, method=method, cfg_strength=1.0))
    with pytest.raises(ValueError, match="multiple"):
        flow.trajectory(field, noise, steps=6, every=4)


def test_pairs_are_the_mean_velocities_of_the_teacher_path() -> None:
    distill = TrajectoryDistillation(student_steps=[4, 1, 2], teacher_steps=16)
    assert distill.student_steps == [1, 2, 4] and distill.finest == 4
    noise = torch.zeros(2, 3, 1, dtype=torch.float64)
    states = distill.teacher_states(_time_field, noise)
    # Euler on a t-only field: x(k/4) = sum over the teacher steps before it of h * v(j h).
    h = 1 / 16
    cumulative = [sum(h * (math.cos(3 * j * h) + j * h) for j in range(4 * k)) for k in range(5)]
    for k, state in enumerate(states):
        torch.testing.assert_close(state, torch.full_like(state, cumulative[k]), rtol=0, atol=1e-15)
    x, t, size, target, counts = distill.pairs(states)
    assert x.shape == (7 * 2, 3, 1)
    expected_t = [0.0] + [0.0, 0.5] + [0.0, 0.25, 0.5, 0.75]
    assert torch.equal(t, torch.tensor(expected_t).repeat_interleave(2))
    assert torch.equal(size, torch.tensor([1.0] + [0.5] * 2 + [0.25] * 4).repeat_interleave(2))
    assert torch.equal(counts, torch.tensor([1, 2, 2, 4, 4, 4, 4]).repeat_interleave(2))
    for pair in range(7):
        n = int(counts[2 * pair])
        i = round(float(t[2 * pair]) * n)
        mean_velocity = (cumulative[(i + 1) * 4 // n] - cumulative[i * 4 // n]) * n
        torch.testing.assert_close(target[2 * pair:2 * pair + 2], torch.full((2, 3, 1), mean_velocity, dtype=torch.float64),
                                   rtol=0, atol=1e-14)
    # Euler with the mean velocities from the noise lands on the teacher's end point in 1, 2 and 4 steps.
    for n in (1, 2, 4):
        rows = counts == n
        end = noise + (target[rows].reshape(n, 2, 3, 1) / n).sum(0)
        torch.testing.assert_close(end, states[-1], rtol=0, atol=1e-14)


def test_loss_weights_every_step_count_equally_and_skips_padding() -> None:
    distill = TrajectoryDistillation(student_steps=[1, 2, 4], teacher_steps=8)
    noise = torch.randn(2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    states = distill.teacher_states(lambda x, t: torch.tanh(x) + t[:, None, None], noise)
    x, t, size, target, counts = distill.pairs(states)
    lookup = {(round(float(a), 6), round(float(b), 6), x_i.sum().item()): y for a, b, x_i, y in zip(t, size, x, target)}

    def exact(x_in: torch.Tensor, t_in: torch.Tensor, size_in: torch.Tensor) -> torch.Tensor:
        return torch.stack([lookup[(round(float(a), 6), round(float(b), 6), x_i.sum().item())]
                            for a, b, x_i in zip(t_in, size_in, x_in)])

    assert distill.loss(exact, states).item() == 0.0
    delta = 0.3
    one_step_off = lambda x_in, t_in, s_in: exact(x_in, t_in, s_in) + delta * (s_in == 1.0).reshape(-1, 1, 1)  # noqa: E731
    # Only the 1-step pairs are wrong, by delta everywhere: that count's mean is delta^2, the others 0.
    torch.testing.assert_close(distill.loss(one_step_off, states), torch.tensor(delta ** 2 / 3, dtype=torch.float32),
                               rtol=4 * EPS32, atol=0)
    # Padding (mask False) is ignored however wrong the prediction there is.
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    wrong_on_padding = lambda x_in, t_in, s_in: exact(x_in, t_in, s_in) + 100.0 * (~mask).repeat(7, 1)[..., None]  # noqa: E731
    assert distill.loss(wrong_on_padding, states, mask).item() == 0.0
    assert distill.loss(wrong_on_padding, states).item() > 1.0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="divide"):
        TrajectoryDistillation(student_steps=[3, 4], teacher_steps=12)
    with pytest.raises(ValueError, match="multiple"):
        TrajectoryDistillation(student_steps=[1, 2, 4], teacher_steps=25)
    with pytest.raises(ValueError, match="positive"):
        TrajectoryDistillation(student_steps=[0, 2])


def test_a_distilled_student_reaches_the_teacher_end_point_in_one_step() -> None:
    """Learning, shown on a curved 2-D flow: the teacher's field rotates as it goes, so its own
    single Euler step lands far from its 32-step end point; the distilled student's does not."""
    torch.manual_seed(0)
    rotation = torch.tensor([[0.0, -2.5], [2.5, 0.0]])

    def teacher(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ rotation.T * (1 + t[:, None])

    distill = TrajectoryDistillation(student_steps=[1, 2, 4], teacher_steps=32)
    student = torch.nn.Sequential(torch.nn.Linear(4, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128), torch.nn.SiLU(),
                                  torch.nn.Linear(128, 2))
    fn = lambda x, t, s: student(torch.cat([x, t[:, None], s[:, None]], dim=1))  # noqa: E731
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(600):
        states = distill.teacher_states(teacher, torch.randn(64, 2, generator=generator))
        loss = distill.loss(fn, states)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(99))  # held out
    end = FlowMatching().sample(teacher, noise, steps=32, cfg_strength=1.0)
    teacher_one_step = FlowMatching().sample(teacher, noise, steps=1, cfg_strength=1.0)
    with torch.no_grad():
        errors = {}
        for n in (1, 2, 4):
            size = torch.full((noise.shape[0],), 1.0 / n)
            x = FlowMatching().sample(lambda x, t: fn(x, t, size), noise, steps=n, cfg_strength=1.0)
            errors[n] = (x - end).norm(dim=1).mean() / end.norm(dim=1).mean()
    naive = (teacher_one_step - end).norm(dim=1).mean() / end.norm(dim=1).mean()
    # Measured: naive 3.0, student (1, 2, 4 steps) 0.05-0.06 relative; the bound leaves a wide margin.
    assert naive > 1.0
    assert all(error < 0.15 for error in errors.values()), errors


def _tiny_mmdit(**kwargs) -> MMDiT:
    return MMDiT(latent_dim=4, hidden_dim=32, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=8, sync_dim=8,
                 text_dim=8, max_text_tokens=4, **kwargs)


def test_step_conditioned_network_starts_as_its_teacher() -> None:
    from foley.stages.distill_module import student_network

    torch.manual_seed(0)
    teacher = _tiny_mmdit()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = student_network(teacher, [1, 2, 4])
    assert student.distilled_steps == [1, 2, 4]
    assert set(student.state_dict()) - set(teacher.state_dict()) == {k for k in student.state_dict() if k.startswith("step_embed.")}
    x = torch.randn(2, 10, 4)
    t = torch.tensor([0.0, 0.5])
    conditions = dict(seconds_start=torch.zeros(2), seconds_total=torch.full((2,), 10 / 43.0664),
                      clip=torch.randn(2, 2, 8), sync=torch.randn(2, 5, 8))
    reference = teacher(x, t, **conditions)
    for size in (None, torch.tensor([1.0, 0.25])):
        torch.testing.assert_close(student(x, t, **conditions, step_size=size), reference, rtol=0, atol=0)
    # Once its step embedding has learnt something, the step size changes the prediction.
    with torch.no_grad():
        student.step_embed.fc2.weight.normal_(0, 0.1)
    one, quarter = (student(x, t, **conditions, step_size=torch.full((2,), s)) for s in (1.0, 0.25))
    assert (one - quarter).abs().max() > 1e-3
    with pytest.raises(ValueError, match="few-step"):
        teacher(x, t, **conditions, step_size=torch.ones(2))
    with pytest.raises(ValueError, match="already"):
        student_network(student, [1, 2])


@pytest.mark.parametrize("name", ["network_v1", "network_v2"])
def test_converted_mmaudio_networks_distil_the_same_way(name) -> None:
    """A student of MMAudio's layout (tiny networks with MMAudio's reference weights) also starts
    as its teacher, and its step embedding follows MMAudio's time-embedding settings."""
    import sys
    from pathlib import Path

    from foley.stages.distill_module import student_network

    sys.path.insert(0, str(Path(__file__).parent / "models"))
    from test_mmaudio_network import durations, load_fixture

    teacher, _, _, inputs, _, _ = load_fixture(name)
    student = student_network(teacher, [1, 2, 4]).eval()
    assert student.step_embed.scale == teacher.time_embed.scale
    conditions = dict(clip=inputs["clip_f"], sync=inputs["sync_f"], text=inputs["text_f"], **durations(inputs))
    with torch.no_grad():
        reference = teacher(inputs["latent"], inputs["t"], **conditions)
        size = torch.full((inputs["latent"].shape[0],), 0.25)
        torch.testing.assert_close(student(inputs["latent"], inputs["t"], **conditions, step_size=size), reference,
                                   rtol=0, atol=0)
