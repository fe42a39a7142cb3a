"""Few-step stage 2: distil a trained generator and its guidance into a 1-4 step student.

``foley fit --config configs/distill/fewstep.yaml --model.init_args.init_from MODEL_DIR`` starts
from a model folder (the demo's, one of ours, or a converted MMAudio model). Its generator is the
frozen *teacher*; the *student* is the same network plus a step-size embedding
(``MMDiT(distilled_steps=...)``, zero at initialisation, so the student starts as the teacher).
Every training step runs the teacher's guided sampler from fresh noise and regresses the
student's step velocities onto the teacher's path (:class:`foley.flow.TrajectoryDistillation`).
The data only supply conditions (video, text, durations): feature shards from ``foley extract``
or raw shards, as for :class:`~foley.stages.flow_module.FlowModule`.

``foley export --flow_ckpt CKPT --out DIR`` writes the student into a copy of the teacher's model
folder with the generation defaults ``steps = max(student_steps)``, ``cfg = 1``;
``foley generate --model DIR`` (any ``--steps``) then runs plain Euler steps of size ``1/steps``.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from foley.flow import TrajectoryDistillation
from foley.stages import conditions as cond_lib
from foley.stages.flow_module import FlowModule

__all__ = ["DistillModule", "student_network"]

logger = logging.getLogger(__name__)


def student_network(teacher: nn.Module, student_steps: list[int]) -> nn.Module:
    """The teacher's architecture with a step-size embedding, holding the teacher's weights.

    Raises:
        ValueError: the teacher is already a few-step student, or its class has no
            ``distilled_steps`` option.
    """
    from foley.configurable import ConfigError, build

    if getattr(teacher, "distilled_steps", None):
        raise ValueError(f"init_from holds a few-step student already (distilled for {teacher.distilled_steps} "
                         "steps); distil from the many-step model it came from")
    try:
        config = teacher.init_config()  # type: ignore[operator]
    except (AttributeError, ConfigError) as error:
        raise ValueError(f"cannot rebuild the teacher {type(teacher).__name__} with a step-size embedding: {error}") from error
    config["init_args"]["distilled_steps"] = list(student_steps)
    student = build(config, nn.Module, where="few-step student")
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    new = [k for k in missing if not k.startswith("step_embed.")]
    if new or unexpected:
        raise ValueError(f"the student does not hold the teacher's weights (missing {new[:5]}, unexpected "
                         f"{unexpected[:5]})")
    return student.to(next(teacher.parameters()).device)


def _settings(distillation: TrajectoryDistillation | Mapping[str, Any] | None) -> dict[str, Any]:
    """``TrajectoryDistillation`` arguments as plain data, from an instance, a config mapping or ``None``."""
    if distillation is None:
        return TrajectoryDistillation().init_config()["init_args"]
    if isinstance(distillation, TrajectoryDistillation):
        return distillation.init_config()["init_args"]
    if isinstance(distillation, Mapping):  # a class_path/init_args config, or the arguments themselves
        return dict(distillation["init_args"] if "class_path" in distillation else distillation)
    raise TypeError(f"distillation must be a TrajectoryDistillation or its arguments, got {type(distillation).__name__}")


class DistillModule(FlowModule):
    """Trains a few-step student of a model folder's generator (see the module docstring).

    Args:
        init_from: The model folder (or Hub id) whose generator is the teacher; codec, encoders,
            flow settings and data-stream settings come from it as for ``FlowModule``.
        distillation: Student step counts and the teacher's sampler (default
            ``TrajectoryDistillation()``: students for 1, 2 and 4 steps of a 32-step teacher with
            the folder's guidance strength).
        clip_encoder / sync_encoder / text_encoder / codec: As for ``FlowModule``, only when they
            must be given explicitly (they default to the folder's).
        optimizer: Optimiser factory for the student.
        lr_scheduler: Optional scheduler factory (else a linear warm-up over ``warmup_steps``).
        warmup_steps: Linear learning-rate warm-up length.
        ema_decay: EMA of the student's weights (used for validation, generation and export).
        ema_warmup: As for ``FlowModule``.
        sample_posterior: Unused by the objective (the data give conditions only); kept for
            the shared data path.
        gradient_checkpointing: Recompute the student's blocks in the backward pass (its batch is
            ``sum(student_steps)`` times the data batch: 7x at the defaults).
    """

    def __init__(
        self,
        init_from: str,
        distillation: TrajectoryDistillation | None = None,
        codec: nn.Module | None = None,
        clip_encoder: nn.Module | None = None,
        sync_encoder: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 100,
        ema_decay: float = 0.99,
        ema_warmup: bool = True,
        sample_posterior: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        # Plain data in the hyper-parameters (checkpoints are read with weights_only=True).
        distillation = _settings(distillation)
        super().__init__(init_from=init_from, codec=codec, clip_encoder=clip_encoder, sync_encoder=sync_encoder,
                         text_encoder=text_encoder, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         warmup_steps=warmup_steps, ema_decay=ema_decay, ema_warmup=ema_warmup, cond_dropout=0.0,
                         sample_posterior=sample_posterior)
        distillation = self.distillation = TrajectoryDistillation(**distillation)
        teacher_cfg = distillation.teacher_cfg
        if teacher_cfg is None:
            teacher_cfg = float(self.init_generation.get("cfg", 1.0))
        self.teacher_cfg = float(teacher_cfg)
        self.teacher_negative_prompt = self.init_generation.get("negative_prompt")
        teacher = self.network
        self.network = student_network(teacher, distillation.student_steps)
        if gradient_checkpointing:
            self.network.gradient_checkpointing = True
        self.teacher = teacher.eval().requires_grad_(False)
        self.ema_network = copy.deepcopy(self.network).requires_grad_(False) if ema_decay > 0 else None
        # The student samples without a guidance pass, in as many steps as it learnt at most.
        self.cfg_strength = 1.0
        self.sample_steps = distillation.finest
        self.sampler = "euler"
        logger.info("few-step distillation from %s: students for %s steps, teacher %d %s steps with guidance %.2f",
                    init_from, distillation.student_steps, distillation.teacher_steps, distillation.teacher_method,
                    self.teacher_cfg)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Any], network: nn.Module | None = None, dropout: float | None = None,
             generator: torch.Generator | None = None, sample_posterior: bool = False) -> Tensor:
        """Distillation loss on a batch: fresh noise, the teacher's guided path, the student's steps.

        ``dropout`` is ignored (guidance is distilled: the student always sees its conditions).
        """
        network = self.network if network is None else network
        cond_lib.check_feature_crop(batch)
        cond_lib.check_feature_provenance(batch, self.encoder_fingerprints)
        # No audio is regressed: only the length (generation's, from the padded audio) and the real frames
        # matter, so raw shards never run the codec's encoder.
        if "latent" in batch:
            length = int(batch["latent"].shape[1])
        else:
            length = math.ceil(int(batch["audio_mask"].shape[1]) / self.samples_per_latent)
        mask = self.latent_mask(batch, length).to(self.device)
        conditions = self.encode_conditions(batch)
        batch_size = mask.shape[0]
        noise = torch.randn(batch_size, length, self.latent_channels, device=self.device, dtype=torch.float32,
                            generator=generator)
        common = {"seconds_start": batch["seconds_start"].to(self.device).float(),
                  "seconds_total": batch["seconds_total"].to(self.device).float(), "audio_mask": mask}
        cond = {**common, **conditions, **self.drop_flags(conditions)}
        with torch.no_grad():
            teacher_cond = self.teacher.prepare_conditions(length, **cond)
            if self.teacher_cfg != 1.0:
                uncond = cond_lib.unconditional(conditions, common, self.teacher_negative_prompt, batch_size,
                                                self.text_encoder)
                teacher_fn = self.teacher.guided_velocity_fn(
                    teacher_cond, self.teacher.prepare_conditions(length, **uncond), self.teacher_cfg)
            else:
                teacher_fn = self.teacher.velocity_fn(teacher_cond)
            states = self.distillation.teacher_states(teacher_fn, noise)
        from foley.models.mmdit import ConditionCache

        pairs_per_sample = sum(self.distillation.student_steps)
        student_cond = ConditionCache.cat([network.prepare_conditions(length, **cond)] * pairs_per_sample)

        def student(x: Tensor, t: Tensor, step_size: Tensor) -> Tensor:
            return network.forward_cached(x, t, student_cond, step_size)

        return self.distillation.loss(student, states, mask)

    # --------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The teacher is the init_from folder's generator: rebuilt from it, never stored.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None and not any(k.startswith("teacher.") for k in state):
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        super().on_load_checkpoint(checkpoint)
