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

Pipelines are stored as model folders (:mod:`foley.model_folder`: :meth:`FoleyPipeline.save_pretrained`,
``foley export``) and loaded with :meth:`FoleyPipeline.from_pretrained`, from a folder or a
Hugging Face Hub id. Sampling arguments left at ``None`` take the defaults stored with the
model (:attr:`FoleyPipeline.generation`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from foley.batch import collate_examples
from foley.io.decoded_frames import DecodedFrames
from foley.io.video import VideoError, VideoFile, mmaudio_stream_times, resize_frames, stream_length
from foley.pipeline_settings import Continuity, GenerationDefaults, PipelineSettings, Sampler
from foley.windowing import (
    Window,
    join_windows,
    latent_frames,
    overlap_known,
    plan_windows,
    segment_noise,
    window_noise,
)

__all__ = ["FoleyPipeline", "PipelineSettings", "GenerationDefaults", "DecodedFrames", "Continuity", "Sampler"]

logger = logging.getLogger(__name__)


class FoleyPipeline(nn.Module):
    """Generates stereo Foley for a video (or from text alone) with the trained stages.

    Three lines from a model folder or Hub repo::

        from foley import FoleyPipeline
        pipe = FoleyPipeline.from_pretrained("demo_out/model")
        audio = pipe("clip.mp4", prompt="footsteps on gravel")   # (2, N) float32 at 44.1 kHz

    Args:
        flow: stage-2 module (:class:`~foley.stages.flow_module.FlowModule` interface:
            ``generate_latents(batch, steps, cfg, seed, negative_prompt, noise, known, known_mask)
            -> (B, T, C)``, ``latent_mel(latents) -> (B, n_mels, F)``, ``samples_per_latent``,
            ``latent_channels``). Its ``sample_steps``, ``cfg_strength`` and ``sampler`` are the
            generation defaults.
        stereo: stage-3 module with ``generate(batch) -> (B, 2, N)`` from ``batch["mel_mono"]``, or
            ``None`` for dual mono: both channels are the codec's vocoding of the generated mel
            (models without a stage 3, e.g. converted MMAudio networks).
        settings: frame streams, window length and joins.
        negative_prompt: default negative prompt of :meth:`forward`.
    """

    def __init__(
        self,
        flow: nn.Module,
        stereo: nn.Module | None,
        settings: PipelineSettings | None = None,
        negative_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.flow = flow.eval()
        self.stereo = stereo.eval() if stereo is not None else None
        self.settings = settings or PipelineSettings()
        self.negative_prompt = negative_prompt or None

    # ------------------------------------------------------------- building
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        revision: str | None = None,
        **settings: Any,
    ) -> FoleyPipeline:
        """Load a model folder written by ``foley export`` / :meth:`save_pretrained`, or a Hub repo of one.

        Only JSON and safetensors files are read (nothing is unpickled). Frozen encoders stored
        as references are built by their own constructors (open_clip / transformers names or
        local paths).

        Args:
            model: a model folder, or a Hugging Face Hub repo id (``owner/name``) holding one. An
                old one-file bundle (``save_bundle``) is read too, with a warning to convert it.
            device: where to run.
            revision: Hub branch, tag or commit (Hub ids only).
            **settings: :class:`PipelineSettings` overrides (e.g. ``window_seconds``, ``continuity``).

        Raises:
            foley.model_folder.ModelFolderError: a file is missing or does not fit (the message
                names it), the format version is unknown, or a Hub id cannot be fetched.
        """
        from foley.hub import resolve_model
        from foley.model_folder import load_legacy_bundle, load_model_folder

        path = resolve_model(model, revision=revision)
        if path.is_file():
            return load_legacy_bundle(path, device=device, **settings)
        return load_model_folder(path, device=device, **settings)

    def save_pretrained(
        self, path: str | os.PathLike[str], overwrite: bool = False, store_encoders: bool = False
    ) -> Path:
        """Write this pipeline as a model folder (see :mod:`foley.model_folder`), atomically.

        Args:
            path: the folder; it must not exist or be empty unless ``overwrite``.
            overwrite: replace an existing non-empty folder.
            store_encoders: also store copies (safetensors) of frozen encoders whose weights come
                from their own files; otherwise those are kept as references. Encoders with
                weights of their own (random tiny ones) are always stored.

        Returns:
            The folder.
        """
        from foley.model_folder import save_model_folder

        return save_model_folder(self, path, overwrite=overwrite, store_encoders=store_encoders)

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

        The checkpoints are read with ``torch.load(weights_only=True)``. ``foley export`` turns
        them into a model folder, which loads without them (:meth:`from_pretrained`).

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
        del checkpoint
        flow = FlowModule.load_from_checkpoint(flow_checkpoint, map_location="cpu", weights_only=True, **overrides)
        stereo = StereoModule.from_checkpoint(stereo_checkpoint, codec=flow.codec)
        pipeline = cls(flow, stereo, PipelineSettings.from_datamodule_hparams(data_hparams, **settings))
        return pipeline.to(device)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu", **settings: Any) -> FoleyPipeline:
        """Load an old one-file bundle (weights-only unpickling); convert it once with
        ``foley export --bundle PATH --out MODEL_DIR`` and use :meth:`from_pretrained`."""
        from foley.model_folder import load_legacy_bundle

        return load_legacy_bundle(path, device=device, **settings)

    # ----------------------------------------------------- generation defaults
    @property
    def generation(self) -> GenerationDefaults:
        """The defaults :meth:`forward` uses for arguments left at ``None``."""
        return GenerationDefaults(
            sampler=getattr(self.flow, "sampler", None),
            steps=getattr(self.flow, "sample_steps", None),
            cfg=getattr(self.flow, "cfg_strength", None),
            negative_prompt=self.negative_prompt,
        )

    def set_generation_params(
        self,
        sampler: Sampler | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        negative_prompt: str | None = None,
    ) -> None:
        """Change the stored generation defaults (``None`` keeps a value; ``negative_prompt=""`` clears it).

        They are written by :meth:`save_pretrained`.
        """
        if sampler is not None:
            if sampler not in ("euler", "midpoint", "heun"):
                raise ValueError(f"sampler must be 'euler', 'midpoint' or 'heun', got {sampler!r}")
            self.flow.sampler = sampler
        if steps is not None:
            if int(steps) < 1:
                raise ValueError(f"steps must be ≥ 1, got {steps}")
            self.flow.sample_steps = int(steps)
        if cfg is not None:
            self.flow.cfg_strength = float(cfg)
        if negative_prompt is not None:
            self.negative_prompt = negative_prompt or None

    # ----------------------------------------------------------- inference
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device if any(True for _ in self.parameters()) else torch.device("cpu")

    @staticmethod
    def _stream(video: VideoFile | DecodedFrames, start: float, seconds: float, fps: float, size: int, crop: str,
                rule: str = "on_screen") -> Tensor:
        """uint8 ``(T, 3, size, size)``: the frames on screen at ``start + i / fps`` (docs/architecture.md §2),
        or those MMAudio's ``load_video`` takes (``rule="mmaudio"``, :data:`foley.io.video.FrameRule`)."""
        if rule == "mmaudio":
            return resize_frames(video.frames_at(mmaudio_stream_times(start, seconds, fps), rule="mmaudio"), size, crop)  # type: ignore[arg-type]
        times = start + np.arange(stream_length(seconds, fps), dtype=np.float64) / fps
        return resize_frames(video.frames_at(times), size, crop)  # type: ignore[arg-type]

    def _window_batch(self, video: VideoFile | DecodedFrames | None, starts: list[float], length: int,
                      prompt: str | None, name: str) -> dict[str, Any]:
        """The batch of docs/architecture.md §2 for windows of ``length`` samples at ``starts`` (no target audio)."""
        s = self.settings
        seconds = length / s.sample_rate
        examples: list[dict[str, Any]] = []
        for t in starts:
            # Each window is presented as a clip of its own, like the training crops.
            example: dict[str, Any] = {"num_samples": length, "caption": prompt or "", "seconds_start": 0.0,
                                       "seconds_total": seconds, "key": f"{name}@{t:.3f}", "meta": {}}
            # Text only (no video): without frame streams the generator uses its learned "no
            # video" placeholders (trained by modality dropout) and stage 3 its "no video" column.
            if video is not None:
                example["clip_frames"] = self._stream(video, t, seconds, s.clip_fps, s.clip_size, s.clip_crop, s.frame_rule)
                example["sync_frames"] = self._stream(video, t, seconds, s.sync_fps, s.sync_size, "center", s.frame_rule)
            examples.append(example)
        return collate_examples(examples)

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

    @staticmethod
    def _open(video: str | os.PathLike[str] | np.ndarray | Tensor | None, fps: float | None,
              start: float, duration: float | None, backend: str = "auto") -> tuple[VideoFile | DecodedFrames | None, str, float]:
        """The frame source, its name and the segment duration (checked against the video)."""
        if video is None:
            if duration is None or duration <= 0 or start != 0.0:
                raise ValueError("text-only generation (video=None) needs duration > 0 seconds and start=0")
            return None, "text", float(duration)
        if isinstance(video, (np.ndarray, Tensor)):
            handle: VideoFile | DecodedFrames = DecodedFrames(video, fps)  # type: ignore[arg-type]
        else:
            if fps is not None:
                raise ValueError("fps is for decoded frames; a video file's timestamps give its frame times")
            handle = VideoFile(os.fspath(video), name=os.fspath(video), backend=backend)  # type: ignore[arg-type]
        name, length = handle.name, handle.duration
        if not 0.0 <= start < length:
            raise VideoError(f"{name}: start {start:.3f} s is outside the video (0 to {length:.3f} s)")
        if duration is None:
            duration = length - start
        if duration <= 0 or start + duration > length + 1e-3:
            raise VideoError(
                f"{name}: segment {start:.3f}+{duration:.3f} s does not fit the video ({length:.3f} s); "
                "shorten --duration or move --start"
            )
        return handle, name, float(duration)

    def _render_stereo(self, batch: dict[str, Any], length: int) -> Tensor:
        """(B, 2, length) from ``batch["mel_mono"]``: stage 3, or dual mono without one."""
        if self.stereo is not None:
            return self.stereo.generate(batch)
        with torch.autocast(device_type=batch["mel_mono"].device.type, enabled=False):
            mono = self.flow.codec.vocode(batch["mel_mono"].float())[..., :length].float().clamp(-1.0, 1.0)
        return mono.reshape(mono.shape[0], 1, -1).expand(-1, 2, -1)

    @torch.no_grad()
    def forward(
        self,
        video: str | os.PathLike[str] | np.ndarray | Tensor | None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        start: float = 0.0,
        duration: float | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int = 0,
        sampler: Sampler | None = None,
        fps: float | None = None,
    ) -> Tensor:
        """Generate stereo audio for ``[start, start + duration)`` of ``video``.

        Arguments left at ``None`` take the model's stored defaults (:attr:`generation`).

        Args:
            video: path of a video (any container, frame rate and size; its audio is ignored),
                decoded uint8 frames ``(T, H, W, 3)`` with their ``fps``, or ``None`` for text-only
                generation (needs ``duration``; for generators trained with modality dropout).
            prompt: optional text describing the sound.
            negative_prompt: text of what to avoid (replaces the unconditional branch); ``""``
                switches off a stored default.
            start: segment start in seconds from the first frame.
            duration: segment length in seconds; default: to the end of the video.
            steps: sampler steps.
            cfg: classifier-free guidance strength (1 = off).
            seed: noise seed (of the whole segment's noise; see ``PipelineSettings.continuity``).
            sampler: ODE method (``"euler"``, ``"midpoint"`` or ``"heun"``).
            fps: frame rate of decoded ``video`` frames.

        Returns:
            float32 ``(2, round(duration · sample_rate))`` on the CPU, in [-1, 1].

        Raises:
            VideoError: the video cannot be read, or the segment lies outside it.
            ValueError: decoded frames without ``fps``, or text-only generation without ``duration``.
        """
        # MMAudio decodes with PyAV (frame.to_ndarray); its frame rule decodes the same way.
        handle, name, duration = self._open(video, fps, start, duration, "pyav" if self.settings.frame_rule == "mmaudio" else "auto")
        s = self.settings
        total = round(duration * s.sample_rate)
        window = round(s.window_seconds * s.sample_rate)
        grid = int(self.flow.samples_per_latent)
        windows = plan_windows(total, window, min(round(s.overlap_seconds * s.sample_rate), window - grid), grid)
        logger.info("%s: %.2f s in %d window(s) of %.2f s (%s)", name, duration, len(windows),
                    windows[0].length / s.sample_rate, s.continuity)
        noise = None if s.continuity == "independent" else segment_noise(windows, grid, int(self.flow.latent_channels), seed)
        negative_prompt = self.negative_prompt if negative_prompt is None else (negative_prompt or None)
        # Only choices the caller made are passed on: the generator owns its defaults.
        sampling: dict[str, Any] = {"seed": seed, "negative_prompt": negative_prompt}
        sampling.update({k: v for k, v in (("steps", steps), ("cfg", cfg), ("method", sampler)) if v is not None})
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
            stereo = self._render_stereo(batch, group[0].length)
            chunks.extend(stereo.float().cpu().unbind(0))
        audio = join_windows(chunks, windows, kind=s.crossfade)
        if audio.shape[-1] != total:  # the plan covers every sample, so this is a programming error
            raise RuntimeError(f"joined audio has {audio.shape[-1]} samples, expected {total}")
        return audio.clamp(-1.0, 1.0).float()
