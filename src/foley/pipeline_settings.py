"""Settings a model carries: how videos are read and cut, and how it samples by default.

Both are plain dataclasses; a model folder stores them as ``class_path``/``init_args``
(``pipeline.json``, :mod:`foley.model_folder`) and jsonargparse rebuilds them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from foley.io.video import FrameRule
from foley.windowing import CrossfadeKind

__all__ = ["PipelineSettings", "GenerationDefaults", "Continuity", "Sampler"]

Continuity = Literal["inpaint", "shared_noise", "independent"]
_CONTINUITY = ("inpaint", "shared_noise", "independent")
Sampler = Literal["euler", "midpoint", "heun"]


@dataclass
class PipelineSettings:
    """How videos are cut and read; defaults match configs/stage2.yaml.

    Args:
        sample_rate: output rate (the codec's).
        window_seconds: generation window (the trained clip length).
        overlap_seconds: minimum overlap of neighbouring windows, crossfaded.
        clip_fps: CLIP stream rate.
        clip_size: CLIP frame side.
        clip_crop: ``"center"`` or ``"resize"``.
        sync_fps: sync stream rate.
        sync_size: sync frame side (centre crop).
        window_batch: windows generated per forward pass (without inpainting).
        crossfade: crossfade law at the joins (see :func:`foley.windowing.crossfade_gains`).
        continuity: how neighbouring windows are tied together before the crossfade:
            ``"inpaint"`` (shared noise, and each window inpaints the previous window's
            latents on their overlap; sequential), ``"shared_noise"`` (noise per absolute
            latent frame only; windows batched) or ``"independent"`` (every window starts
            from the same seeded noise, as if it were a clip of its own).
        frame_rule: which source frame each stream instant takes (:data:`foley.io.video.FrameRule`):
            ``"on_screen"`` (the frame on screen at ``start + i / fps``) or ``"mmaudio"``
            (MMAudio's ``load_video``: PyAV decoding, instants accumulated by repeated addition of
            ``1 / fps`` on the container's clock, the first frame at or after each).
    """

    sample_rate: int = 44100
    window_seconds: float = 8.0
    overlap_seconds: float = 1.0
    clip_fps: float = 8.0
    clip_size: int = 224
    clip_crop: str = "center"
    sync_fps: float = 25.0
    sync_size: int = 224
    window_batch: int = 4
    crossfade: CrossfadeKind = "adaptive"
    continuity: Continuity = "inpaint"
    frame_rule: FrameRule = "on_screen"

    def __post_init__(self) -> None:
        if self.continuity not in _CONTINUITY:
            raise ValueError(f"continuity must be one of {_CONTINUITY}, got {self.continuity!r}")
        if self.frame_rule not in ("on_screen", "mmaudio"):
            raise ValueError(f"frame_rule must be 'on_screen' or 'mmaudio', got {self.frame_rule!r}")

    @classmethod
    def from_datamodule_hparams(cls, hparams: Mapping[str, Any], **overrides: Any) -> PipelineSettings:
        """Settings from the ``FoleyDataModule`` hyper-parameters saved in a training checkpoint."""
        names = {f.name for f in fields(cls)}
        values = {k: hparams[k] for k in ("sample_rate", "clip_fps", "clip_size", "clip_crop", "sync_fps", "sync_size") if k in hparams}
        if "clip_seconds" in hparams:
            values["window_seconds"] = float(hparams["clip_seconds"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - names
        if unknown:
            raise TypeError(f"unknown pipeline settings: {sorted(unknown)}")
        settings = cls(**values)
        if settings.overlap_seconds >= settings.window_seconds:
            settings.overlap_seconds = settings.window_seconds / 4
        return settings

    def updated(self, **overrides: Any) -> PipelineSettings:
        """A copy with the given values (``None`` values are ignored).

        Raises:
            TypeError: a name that is not a setting.
        """
        values = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(values) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown pipeline settings: {sorted(unknown)}")
        return replace(self, **values)


@dataclass
class GenerationDefaults:
    """How a model samples when a call leaves the choice open; stored with the model.

    Args:
        sampler: ODE method (``"euler"``, ``"midpoint"`` or ``"heun"``).
        steps: sampler steps.
        cfg: classifier-free guidance strength (1 = off).
        negative_prompt: text of what to avoid, used for the unconditional branch; ``None``: the
            learned placeholders.
    """

    sampler: Sampler
    steps: int
    cfg: float
    negative_prompt: str | None = None
