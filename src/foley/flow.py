"""Conditional flow matching (rectified flow): training loss and ODE samplers.

Convention (Kling-Foley / MMAudio): ``x_t = t * x1 + (1 - t) * x0`` with noise
``x0 ~ N(0, I)`` at ``t = 0`` and data ``x1`` at ``t = 1``; the network regresses the
constant velocity ``x1 - x0``. Sampling integrates ``dx/dt = v(x, t)`` from 0 to 1.
Classifier-free guidance: ``v = s * v_cond + (1 - s) * v_uncond``.

The class is network-agnostic: it only sees velocity functions ``(x_t, t) -> v`` where
``t`` has shape (B,).

:class:`TrajectoryDistillation` is the few-step objective: a student conditioned on the step
size learns the guided teacher's mean velocity over whole steps of its sampler, so that 1, 2
or 4 Euler steps without a guidance pass land where the teacher's many guided steps do.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from foley.configurable import Configurable

__all__ = ["FlowMatching", "TrajectoryDistillation", "VelocityFn", "StepVelocityFn"]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
# A few-step student: (x_t, t, step size) -> mean velocity over the step [t, t + step size].
StepVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]

_T_SAMPLINGS = ("logit_normal", "uniform")
_METHODS = ("euler", "midpoint", "heun")


class FlowMatching(Configurable):
    """Flow-matching loss and Euler / midpoint / Heun samplers with optional CFG.

    Args:
        t_sampling: distribution of training times, ``"logit_normal"`` (sigmoid of a
            normal, concentrates on mid-range t) or ``"uniform"``.
        logit_mean: mean of the normal before the sigmoid.
        logit_std: standard deviation of the normal before the sigmoid.
        min_sigma: noise floor at t = 1: ``x_t = t x1 + (1 - (1 - min_sigma) t) x0``
            (0 gives the plain linear path).
    """

    def __init__(self, t_sampling: str = "logit_normal", logit_mean: float = 0.0,
                 logit_std: float = 1.0, min_sigma: float = 0.0) -> None:
        if t_sampling not in _T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {_T_SAMPLINGS}, got {t_sampling!r}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        if not 0.0 <= min_sigma < 1.0:
            raise ValueError(f"min_sigma must be in [0, 1), got {min_sigma}")
        self.t_sampling = t_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.min_sigma = min_sigma

    def sample_t(self, batch_size: int, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draws (batch_size,) training times in (0, 1)."""
        if self.t_sampling == "uniform":
            return torch.rand(batch_size, device=device, generator=generator)
        normal = torch.randn(batch_size, device=device, generator=generator)
        return torch.sigmoid(normal * self.logit_std + self.logit_mean)

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(x_t, target_velocity)`` for noise ``x0``, data ``x1`` and times ``t`` (B,)."""
        tb = t.reshape(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
        x_t = tb * x1 + (1 - (1 - self.min_sigma) * tb) * x0
        return x_t, x1 - (1 - self.min_sigma) * x0

    def loss(self, velocity_fn: VelocityFn, x1: Tensor, mask: Tensor | None = None,
             generator: torch.Generator | None = None, t: Tensor | None = None,
             noise: Tensor | None = None) -> Tensor:
        """Mean squared velocity error.

        Args:
            velocity_fn: ``(x_t, t) -> v``, same shape as ``x1``.
            x1: data (B, ...), e.g. latents (B, T, C).
            mask: optional bool mask broadcastable to ``x1`` from the left, e.g. (B, T)
                for (B, T, C) latents; the mean runs over real elements only.
            generator: random generator for ``t`` and the noise.
            t: optional fixed times (B,) instead of sampling them.
            noise: optional fixed ``x0`` instead of sampling it.

        Returns:
            Scalar loss (float32).
        """
        if t is None:
            t = self.sample_t(x1.shape[0], x1.device, generator)
        if noise is None:
            noise = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
        x_t, target = self.interpolate(noise, x1, t)
        error = (velocity_fn(x_t, t).float() - target.float()).square()
        if mask is None:
            return error.mean()
        if mask.shape != x1.shape[:mask.dim()]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the leading "
                             f"dimensions of x1 {tuple(x1.shape)}")
        weights = mask.reshape(*mask.shape, *([1] * (x1.dim() - mask.dim()))).to(error.dtype)
        per_element = error.numel() // mask.numel()
        return (error * weights).sum() / (weights.sum() * per_element).clamp_min(1.0)

    @staticmethod
    def guide(v_cond: Tensor, v_uncond: Tensor, cfg_strength: float) -> Tensor:
        """Classifier-free guidance ``s * v_cond + (1 - s) * v_uncond``."""
        return torch.lerp(v_uncond, v_cond, cfg_strength)

    @torch.no_grad()
    def sample(self, velocity_fn: VelocityFn, noise: Tensor, steps: int = 25,
               method: str = "euler", cfg_strength: float = 4.5,
               uncond_velocity_fn: VelocityFn | None = None,
               known: Tensor | None = None, known_mask: Tensor | None = None) -> Tensor:
        """Integrates the flow from noise (t = 0) to data (t = 1) on a uniform grid.

        Inpainting (``known`` + ``known_mask``): after every step, the state on the known
        elements is replaced by the point of the straight path from this sample's own noise
        to the known data, ``interpolate(noise, known, t)`` (RePaint-style replacement; the
        flow-matching path is deterministic given ``x0``, so no fresh noise is drawn). The
        unknown elements follow the ODE, seeing a known region that is always at the noise
        level of time ``t``; the result equals ``known`` exactly on the known elements.

        Args:
            velocity_fn: conditional velocity ``(x_t, t) -> v``. When
                ``uncond_velocity_fn`` is None it is used as is (so a function that
                already applies guidance, e.g. ``MMDiT.guided_velocity_fn`` which batches
                both passes, can be passed directly).
            noise: ``x0`` (B, ...); draw it with a seeded generator for determinism.
            steps: number of steps (each midpoint/Heun step costs two evaluations).
            method: ``"euler"``, ``"midpoint"`` or ``"heun"``.
            cfg_strength: guidance strength ``s``; ignored without ``uncond_velocity_fn``.
            uncond_velocity_fn: unconditional (placeholder or negative-prompt) velocity.
            known: data at t = 1 on the known elements (same shape as ``noise``; other
                elements are ignored).
            known_mask: bool, broadcastable to ``noise`` from the left (e.g. (B, T) for
                (B, T, C) latents); True where ``known`` holds.

        Returns:
            The sample at t = 1, same shape and dtype as ``noise``.
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if (known is None) != (known_mask is None):
            raise ValueError("inpainting needs both `known` and `known_mask` (or neither)")
        if known is not None:
            if known.shape != noise.shape:
                raise ValueError(f"known has shape {tuple(known.shape)}, noise {tuple(noise.shape)}")
            if known_mask.shape != noise.shape[:known_mask.dim()]:
                raise ValueError(f"known_mask shape {tuple(known_mask.shape)} does not match the leading "
                                 f"dimensions of noise {tuple(noise.shape)}")
            known = known.to(noise.dtype)
            known_mask = known_mask.bool().reshape(*known_mask.shape, *([1] * (noise.dim() - known_mask.dim())))

        def clamp_known(x: Tensor, t: float) -> Tensor:
            if known is None:
                return x
            if t >= 1.0:  # the end point is the data itself (also with min_sigma > 0)
                return torch.where(known_mask, known, x)
            x_known, _ = self.interpolate(noise, known, torch.full((x.shape[0],), t, device=x.device))
            return torch.where(known_mask, x_known, x)

        field = self._field(velocity_fn, uncond_velocity_fn, cfg_strength)
        x = noise
        dt = 1.0 / steps
        for i in range(steps):
            x = self._step(field, x, i * dt, dt, method)
            x = clamp_known(x, (i + 1) * dt if i + 1 < steps else 1.0)
        return x

    @torch.no_grad()
    def trajectory(self, velocity_fn: VelocityFn, noise: Tensor, steps: int, every: int = 1,
                   method: str = "euler") -> list[Tensor]:
        """The states of :meth:`sample` (same arithmetic, no inpainting) after every ``every`` steps.

        Returns:
            ``steps // every + 1`` states: the noise, then the state at ``t = k * every / steps``.
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if steps < 1 or every < 1 or steps % every:
            raise ValueError(f"steps ({steps}) must be a positive multiple of every ({every})")
        field = self._field(velocity_fn, None, 1.0)
        x, states, dt = noise, [noise], 1.0 / steps
        for i in range(steps):
            x = self._step(field, x, i * dt, dt, method)
            if (i + 1) % every == 0:
                states.append(x)
        return states

    def _field(self, velocity_fn: VelocityFn, uncond_velocity_fn: VelocityFn | None,
               cfg_strength: float) -> Callable[[Tensor, float], Tensor]:
        def field(x: Tensor, t: float) -> Tensor:
            # Times stay float32 for networks in low precision; float64 states keep float64.
            t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=t_dtype)
            v = velocity_fn(x, tt)
            if uncond_velocity_fn is not None and cfg_strength != 1.0:
                v = self.guide(v, uncond_velocity_fn(x, tt), cfg_strength)
            return v.to(x.dtype)

        return field

    @staticmethod
    def _step(field: Callable[[Tensor, float], Tensor], x: Tensor, t: float, dt: float, method: str) -> Tensor:
        v = field(x, t)
        if method == "euler":
            return x + dt * v
        if method == "midpoint":
            return x + dt * field(x + 0.5 * dt * v, t + 0.5 * dt)
        v_end = field(x + dt * v, t + dt)
        return x + 0.5 * dt * (v + v_end)


class TrajectoryDistillation(Configurable):
    """Few-step distillation of a guided flow sampler into a step-size-conditioned student.

    The teacher (a trained velocity network with its classifier-free guidance) integrates the
    flow from noise with ``teacher_steps`` steps. Its states on the grid ``t = k / F`` (``F`` the
    largest student step count) give, for every student step count ``N`` and step ``i``, the
    mean velocity of the teacher's path over that step, ``(x_{(i+1)/N} - x_{i/N}) * N``. The
    student sees ``x_{i/N}``, the time ``i/N`` and the step size ``1/N`` and regresses it, so
    that ``N`` plain Euler steps of size ``1/N`` follow the teacher's path to its end point.
    Guidance is in the targets: the student makes one pass per step. One teacher path trains
    every step count at once (``sum(student_steps)`` regression pairs per sample).

    Reflow-style distillation (Liu et al. 2023, "Flow straight and fast"; the shortcut models
    of Frans et al. 2024 condition on the step size the same way); this is its own
    implementation.

    Args:
        student_steps: the step counts the student learns; each must divide the largest.
        teacher_steps: the teacher's Euler (or ``teacher_method``) steps over [0, 1]; a multiple
            of the largest student step count.
        teacher_cfg: the teacher's guidance strength; ``None``: the teacher model's default.
        teacher_method: the teacher's ODE method.
    """

    def __init__(self, student_steps: list[int] | tuple[int, ...] = (1, 2, 4), teacher_steps: int = 32,
                 teacher_cfg: float | None = None, teacher_method: str = "euler") -> None:
        counts = sorted({int(n) for n in student_steps})
        if not counts or counts[0] < 1:
            raise ValueError(f"student_steps must list positive step counts, got {list(student_steps)}")
        finest = counts[-1]
        if any(finest % n for n in counts):
            raise ValueError(f"every student step count must divide the largest ({finest}), got {counts}")
        if teacher_steps < finest or teacher_steps % finest:
            raise ValueError(f"teacher_steps ({teacher_steps}) must be a multiple of the largest student step "
                             f"count ({finest})")
        if teacher_method not in _METHODS:
            raise ValueError(f"teacher_method must be one of {_METHODS}, got {teacher_method!r}")
        self.student_steps = counts
        self.teacher_steps = int(teacher_steps)
        self.teacher_cfg = teacher_cfg
        self.teacher_method = teacher_method

    @property
    def finest(self) -> int:
        """The largest student step count (the grid of teacher states kept)."""
        return self.student_steps[-1]

    def teacher_states(self, teacher_fn: VelocityFn, noise: Tensor) -> list[Tensor]:
        """The teacher's states at ``t = k / finest``, ``k = 0 .. finest`` (``teacher_fn`` guides itself)."""
        return FlowMatching().trajectory(teacher_fn, noise, self.teacher_steps,
                                         every=self.teacher_steps // self.finest, method=self.teacher_method)

    def pairs(self, states: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Regression pairs of every student step, stacked along the batch.

        Returns:
            ``(x, t, step_size, target, step_count)``: states ``(P*B, ...)``, their times and step
            sizes ``(P*B,)`` float32, the teacher's mean velocities over the steps ``(P*B, ...)``, and
            the student step count each pair belongs to ``(P*B,)``, with ``P = sum(student_steps)``
            and pairs ordered by step count, then step.
        """
        if len(states) != self.finest + 1:
            raise ValueError(f"need {self.finest + 1} states on the grid t = k/{self.finest}, got {len(states)}")
        batch = states[0].shape[0]
        device = states[0].device
        xs, targets, times, sizes, counts = [], [], [], [], []
        for n in self.student_steps:
            stride = self.finest // n
            for i in range(n):
                start, end = states[i * stride], states[(i + 1) * stride]
                xs.append(start)
                targets.append((end - start) * n)
                times.append(torch.full((batch,), i / n, device=device))
                sizes.append(torch.full((batch,), 1.0 / n, device=device))
                counts.append(torch.full((batch,), n, device=device, dtype=torch.long))
        return torch.cat(xs), torch.cat(times), torch.cat(sizes), torch.cat(targets), torch.cat(counts)

    def loss(self, student_fn: StepVelocityFn, states: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """Mean squared error of the student's step velocities, each step count weighted equally.

        Args:
            student_fn: ``(x, t, step_size) -> v`` for stacked pairs (see :meth:`pairs`).
            states: :meth:`teacher_states`.
            mask: optional bool ``(B, T)`` (leading dimensions of a state) of real elements.

        Returns:
            Scalar float32 loss.
        """
        x, t, step_size, target, counts = self.pairs(states)
        error = (student_fn(x, t, step_size).float() - target.float()).square()
        if mask is None:
            per_pair = error.reshape(error.shape[0], -1).mean(1)
        else:
            repeats = x.shape[0] // mask.shape[0]
            if mask.shape != states[0].shape[:mask.dim()]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the leading dimensions of the "
                                 f"states {tuple(states[0].shape)}")
            weights = mask.repeat(repeats, *([1] * (mask.dim() - 1)))
            weights = weights.reshape(*weights.shape, *([1] * (error.dim() - weights.dim()))).to(error.dtype)
            weights = weights.expand_as(error).reshape(error.shape[0], -1)
            per_pair = (error.reshape(error.shape[0], -1) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.stack([per_pair[counts == n].mean() for n in self.student_steps]).mean()
