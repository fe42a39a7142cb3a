"""FoleyPipeline: video (+ text) → 44.1 kHz stereo Foley, any length.

One object holds the three trained stages: the stage-2 :class:`~foley.stages.flow_module.FlowModule`
(which owns the frozen stage-1 codec and the condition encoders) and the stage-3
:class:`~foley.stages.stereo_module.StereoModule`. A call

1. reads the segment's two frame streams with :mod:`foley.io.video` at the rates and sizes
   the models were trained with (docs/architecture.md §2 timing: stream frame ``i`` shows
   the frame on screen at ``s + i / f``);
2. cuts the segment into windows of the trained length on the generator's latent grid
   (:mod:`foley.windowing`); each window is presented to the generator as a clip of its own
   (``seconds_start = 0``, ``seconds_total`` = window length), with the same prompt;
3. samples each window's latents by flow matching from noise drawn per *absolute* latent
   frame of the segment (overlapping windows share noise on their overlap) and, with
   ``continuity="inpaint"``, with the previous window's latents inpainted on the overlap;
4. decodes the latents to the mono log-mel, lets Mono2Stereo split that mel into left and
   right mels (no vocode → re-analyse round trip), renders each ear once (vocoder, or the
   STFT route of :class:`~foley.stages.stereo_module.StereoModule`), and joins the windows
   with crossfades into exactly ``round(duration · 44100)`` samples.

Without inpainting, windows are batched (``window_batch`` per forward pass); with it they
are generated one after another. A long video costs about ``duration / (window − overlap)``
window generations either way.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from foley.io.atomic import atomic_path
from foley.io.video import VideoError, VideoFile, read_frames_at, stream_length
from foley.windowing import (
    CrossfadeKind,
    Window,
    join_windows,
    latent_frames,
    overlap_known,
    plan_windows,
    segment_noise,
    window_noise,
)

__all__ = ["FoleyPipeline", "PipelineSettings", "BUNDLE_FORMAT", "Continuity"]

Continuity = Literal["inpaint", "shared_noise", "independent"]
_CONTINUITY = ("inpaint", "shared_noise", "independent")

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "foley-pipeline-bundle"


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

    def __post_init__(self) -> None:
        if self.continuity not in _CONTINUITY:
            raise ValueError(f"continuity must be one of {_CONTINUITY}, got {self.continuity!r}")

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


class FoleyPipeline(nn.Module):
    """Generates stereo Foley for a video segment with the trained stages.

    Args:
        flow: stage-2 module (:class:`~foley.stages.flow_module.FlowModule` interface:
            ``generate_latents(batch, steps, cfg, seed, negative_prompt, noise, known, known_mask)
            -> (B, T, C)``, ``latent_mel(latents) -> (B, n_mels, F)``, ``samples_per_latent``,
            ``latent_channels``).
        stereo: stage-3 module with ``generate(batch) -> (B, 2, N)`` from ``batch["mel_mono"]``.
        settings: frame streams, window length and joins.
        flow_hparams: the stage-2 module's saved constructor config (needed by :meth:`save_bundle`).
    """

    def __init__(
        self,
        flow: nn.Module,
        stereo: nn.Module,
        settings: PipelineSettings | None = None,
        flow_hparams: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.flow = flow.eval()
        self.stereo = stereo.eval()
        self.settings = settings or PipelineSettings()
        # The stage-2 module's constructor config as saved by `foley fit` (plain data); needed to bundle it.
        self.flow_hparams = dict(flow_hparams) if flow_hparams is not None else None

    # ------------------------------------------------------------- building
    @classmethod
    def from_checkpoints(
        cls,
        flow_checkpoint: str | os.PathLike[str],
        stereo_checkpoint: str | os.PathLike[str],
        codec_checkpoint: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        **settings: Any,
    ) -> FoleyPipeline:
        """Load the stage-2 and stage-3 checkpoints written by ``foley fit``.

        Args:
            flow_checkpoint: stage-2 ``.ckpt``.
            stereo_checkpoint: stage-3 ``.ckpt``.
            codec_checkpoint: stage-1 checkpoint; overrides the codec path recorded in the stage-2
                checkpoint (use it when runs were moved).
            device: where to run.
            **settings: :class:`PipelineSettings` overrides; the rest come from the stage-2
                checkpoint's data-module hyper-parameters.
        """
        from foley.stages.flow_module import FlowModule
        from foley.stages.stereo_module import StereoModule

        for label, path in (("stage-2", flow_checkpoint), ("stage-3", stereo_checkpoint), ("stage-1", codec_checkpoint)):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"{label} checkpoint {os.fspath(path)!r} does not exist")
        checkpoint = torch.load(flow_checkpoint, map_location="cpu", weights_only=True)
        overrides: dict[str, Any] = {}
        if codec_checkpoint is not None:
            if checkpoint.get("hyper_parameters", {}).get("codec_checkpoint") is None:
                raise ValueError(
                    f"{flow_checkpoint}: this stage-2 model was trained with an inline codec, not a codec "
                    "checkpoint; leave codec_checkpoint unset"
                )
            overrides["codec_checkpoint"] = os.fspath(codec_checkpoint)
        data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
        flow_hparams = checkpoint.get("hyper_parameters")
        del checkpoint
        flow = FlowModule.load_from_checkpoint(flow_checkpoint, map_location="cpu", weights_only=True, **overrides)
        stereo = StereoModule.from_checkpoint(stereo_checkpoint, codec=flow.codec)
        pipeline = cls(flow, stereo, PipelineSettings.from_datamodule_hparams(data_hparams, **settings), flow_hparams)
        return pipeline.to(device)

    def save_bundle(self, path: str | os.PathLike[str]) -> None:
        """Write every stage (architecture + weights) and the settings into one torch file, atomically.

        The stage-2 module must have been built by LightningCLI (so its hyper-parameters describe its
        network); the codec is stored in full, so the bundle needs no other file.
        """
        hparams = self.flow_hparams or {}
        if not isinstance(hparams.get("network"), Mapping):
            raise ValueError(
                "cannot bundle a stage-2 module built in Python: no saved config describes its network; "
                "load the pipeline from `foley fit` checkpoints (FoleyPipeline.from_checkpoints) first"
            )
        codec = self.flow.codec
        flow_state = {k: v.detach().cpu() for k, v in self.flow.state_dict().items() if not k.startswith("codec.")}
        hparams = {k: v for k, v in hparams.items() if k not in ("codec", "codec_checkpoint")}
        payload = {
            "format": BUNDLE_FORMAT,
            "version": 1,
            "settings": asdict(self.settings),
            "codec": {"config": json.dumps(codec.init_config()), "state_dict": {k: v.detach().cpu() for k, v in codec.state_dict().items()}},
            "flow": {"hyper_parameters": json.dumps(hparams), "state_dict": flow_state},
            "stereo": {
                "config": json.dumps(self.stereo.network.init_config),
                "video_stream": self.stereo.video_stream,
                "render": self.stereo.render,
                "state_dict": {k: v.detach().cpu() for k, v in self.stereo.network.state_dict().items()},
            },
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu", **settings: Any) -> FoleyPipeline:
        """Load a file written by :meth:`save_bundle` (weights-only unpickling)."""
        import lightning

        from foley.models.codec import Codec
        from foley.stages.flow_module import FlowModule
        from foley.stages.stereo_module import StereoModule

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pipeline bundle {path!r} does not exist")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, Mapping) or payload.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path!r} is not a foley pipeline bundle (write one with FoleyPipeline.save_bundle)")
        codec = Codec.from_config(json.loads(payload["codec"]["config"]))
        codec.load_state_dict(payload["codec"]["state_dict"])
        with tempfile.TemporaryDirectory(prefix="foley-bundle-") as folder:
            # FlowModule rebuilds itself from Lightning-style checkpoints; give it one, pointing at the codec.
            codec_file = os.path.join(folder, "codec.pt")
            codec.save(codec_file)
            hparams = json.loads(payload["flow"]["hyper_parameters"])
            hparams["codec_checkpoint"] = codec_file
            flow_file = os.path.join(folder, "flow.ckpt")
            torch.save(
                {"state_dict": payload["flow"]["state_dict"], "hyper_parameters": hparams,
                 "pytorch-lightning_version": lightning.__version__},
                flow_file,
            )
            flow = FlowModule.load_from_checkpoint(flow_file, map_location="cpu", weights_only=True)
        stereo = StereoModule.from_network_state(
            json.loads(payload["stereo"]["config"]), payload["stereo"]["state_dict"], flow.codec,
            payload["stereo"]["video_stream"], payload["stereo"].get("render", "vocoder"),
        )
        merged = {**payload["settings"], **{k: v for k, v in settings.items() if v is not None}}
        return cls(flow, stereo, PipelineSettings(**merged), json.loads(payload["flow"]["hyper_parameters"])).to(device)

    # ----------------------------------------------------------- inference
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device if any(True for _ in self.parameters()) else torch.device("cpu")

    def _stream(self, video: VideoFile, start: float, seconds: float, fps: float, size: int, crop: str) -> Tensor:
        count = stream_length(seconds, fps)
        times = start + np.arange(count, dtype=np.float64) / fps
        frames = read_frames_at(video, times, size=size, crop=crop)  # (T, H, W, 3) uint8
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)

    def _window_batch(self, video: VideoFile, starts: list[float], length: int, prompt: str | None, name: str) -> dict[str, Any]:
        s = self.settings
        seconds = length / s.sample_rate
        clip = [self._stream(video, t, seconds, s.clip_fps, s.clip_size, s.clip_crop) for t in starts]
        sync = [self._stream(video, t, seconds, s.sync_fps, s.sync_size, "center") for t in starts]
        b = len(starts)
        return {
            "clip_frames": torch.stack(clip),
            "clip_mask": torch.ones(b, clip[0].shape[0], dtype=torch.bool),
            "sync_frames": torch.stack(sync),
            "sync_mask": torch.ones(b, sync[0].shape[0], dtype=torch.bool),
            "audio_mask": torch.ones(b, length, dtype=torch.bool),
            "caption": [prompt or ""] * b,
            # Each window is presented as a clip of its own, like the training crops.
            "seconds_start": torch.zeros(b),
            "seconds_total": torch.full((b,), seconds),
            "key": [f"{name}@{t:.3f}" for t in starts],
            "meta": [{} for _ in starts],
        }

    def _groups(self, windows: list[Window]) -> list[list[Window]]:
        """Windows per generator call: one at a time when inpainting (each needs its predecessor),
        else runs of equal length (the last window may be shorter) of up to ``window_batch``."""
        if self.settings.continuity == "inpaint":
            return [[w] for w in windows]
        groups: list[list[Window]] = []
        for w in windows:
            if groups and len(groups[-1]) < self.settings.window_batch and groups[-1][0].length == w.length:
                groups[-1].append(w)
            else:
                groups.append([w])
        return groups

    @torch.no_grad()
    def forward(
        self,
        video: str | os.PathLike[str],
        prompt: str | None = None,
        negative_prompt: str | None = None,
        start: float = 0.0,
        duration: float | None = None,
        steps: int = 25,
        cfg: float = 4.5,
        seed: int = 0,
    ) -> Tensor:
        """Generate stereo audio for ``[start, start + duration)`` of ``video``.

        Args:
            video: path of the video (any container, frame rate and size; its audio is ignored).
            prompt: optional text describing the sound.
            negative_prompt: optional text of what to avoid (replaces the unconditional branch).
            start: segment start in seconds from the first frame.
            duration: segment length in seconds; default: to the end of the video.
            steps: sampler steps.
            cfg: classifier-free guidance strength (1 = off).
            seed: noise seed (of the whole segment's noise; see ``PipelineSettings.continuity``).

        Returns:
            float32 ``(2, round(duration · sample_rate))`` on the CPU, in [-1, 1].

        Raises:
            VideoError: the video cannot be read, or the segment lies outside it.
        """
        name = os.fspath(video)
        handle = VideoFile(name, name=name)
        length = handle.duration
        if not 0.0 <= start < length:
            raise VideoError(f"{name}: start {start:.3f} s is outside the video (0 to {length:.3f} s)")
        if duration is None:
            duration = length - start
        if duration <= 0 or start + duration > length + 1e-3:
            raise VideoError(
                f"{name}: segment {start:.3f}+{duration:.3f} s does not fit the video ({length:.3f} s); "
                "shorten --duration or move --start"
            )
        s = self.settings
        total = round(duration * s.sample_rate)
        window = round(s.window_seconds * s.sample_rate)
        grid = int(self.flow.samples_per_latent)
        windows = plan_windows(total, window, min(round(s.overlap_seconds * s.sample_rate), window - grid), grid)
        logger.info("%s: %.2f s in %d window(s) of %.2f s (%s)", name, duration, len(windows),
                    windows[0].length / s.sample_rate, s.continuity)
        noise = None if s.continuity == "independent" else segment_noise(windows, grid, int(self.flow.latent_channels), seed)
        sampling = {"steps": steps, "cfg": cfg, "seed": seed, "negative_prompt": negative_prompt}
        chunks: list[Tensor] = []
        previous: tuple[Window, Tensor] | None = None
        for group in self._groups(windows):
            starts = [start + w.start / s.sample_rate for w in group]
            batch = self._window_batch(handle, starts, group[0].length, prompt, Path(name).name)
            extra: dict[str, Tensor] = {}
            if noise is not None:
                extra["noise"] = torch.stack([window_noise(noise, w, grid) for w in group])
            if s.continuity == "inpaint" and previous is not None:
                known, known_mask = overlap_known(previous[0], previous[1], group[0], grid)
                extra["known"], extra["known_mask"] = known[None], known_mask[None]
            latents = self.flow.generate_latents(batch, **sampling, **extra)
            if s.continuity == "inpaint":
                previous = (group[-1], latents[-1, : latent_frames(group[-1], grid)[1]].detach().cpu())
            batch["mel_mono"] = self.flow.latent_mel(latents)
            stereo = self.stereo.generate(batch)
            chunks.extend(stereo.float().cpu().unbind(0))
        audio = join_windows(chunks, windows, kind=s.crossfade)
        if audio.shape[-1] != total:  # the plan covers every sample, so this is a programming error
            raise RuntimeError(f"joined audio has {audio.shape[-1]} samples, expected {total}")
        return audio.clamp(-1.0, 1.0).float()
