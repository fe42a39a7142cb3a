"""``foley generate``: stereo Foley for a batch of videos, written next to a copy of each video.

For every input video ``<name>.<ext>`` the output folder receives ``<name>.wav`` (or
``.flac``) with the generated 44.1 kHz stereo audio, and ``<name>.mp4``: the original
video stream copied packet for packet (no re-encode) with the new audio muxed in. Folders
are expanded to the video files they contain. A file that cannot be processed is reported
(file and reason) and skipped; the others are still processed, and the command exits with
status 1 at the end if anything failed. Outputs are written atomically, and existing
outputs are kept unless ``overwrite`` is set.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from foley.io.media import MediaError, write_audio
from foley.io.mux import mux_audio
from foley.io.video import VideoError

__all__ = ["generate", "generate_with", "collect_videos", "VIDEO_SUFFIXES", "GenerationReport"]

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")


@dataclass
class GenerationReport:
    """What happened to each input: written outputs, skipped (existing) and failed videos."""

    written: list[Path]
    skipped: list[Path]
    failed: list[tuple[Path, str]]


def collect_videos(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand folders (non-recursive, sorted) to their video files; keep files as given.

    Returns:
        ``(videos, problems)``: existing inputs in order without duplicates, and missing ones.
    """
    videos: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))
            if not found:
                problems.append((path, f"folder holds no video files ({', '.join(VIDEO_SUFFIXES)})"))
            videos.extend(found)
        elif path.is_file():
            videos.append(path)
        else:
            problems.append((path, "no such file or folder"))
    unique: list[Path] = []
    for video in videos:
        if video.resolve() not in {v.resolve() for v in unique}:
            unique.append(video)
    return unique, problems


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def generate_with(
    pipeline,
    inputs: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    prompt: str | None = None,
    negative_prompt: str | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    seed: int = 0,
    audio_format: Literal["wav", "flac"] = "wav",
    mp4_audio_codec: Literal["aac", "flac", "alac"] = "aac",
    overwrite: bool = False,
    progress: bool = True,
    sampler: Literal["euler", "midpoint", "heun"] | None = None,
) -> GenerationReport:
    """Run an already built :class:`~foley.pipeline.FoleyPipeline` over videos (see :func:`generate`).

    Sampling arguments left at ``None`` take the model's stored defaults.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    videos, failed = collect_videos(inputs)
    for path, reason in failed:
        logger.error("%s: %s", path, reason)
    report = GenerationReport(written=[], skipped=[], failed=list(failed))
    names: dict[str, Path] = {}
    sample_rate = int(pipeline.settings.sample_rate)
    for video in tqdm(videos, desc="foley generate", unit="video", disable=not progress):
        stem = video.stem
        audio_path = out / f"{stem}.{audio_format}"
        mp4_path = out / f"{stem}.mp4"
        if stem in names:
            reason = f"output name {stem!r} is already used by {names[stem]}; rename one of them"
            logger.error("%s: %s", video, reason)
            report.failed.append((video, reason))
            continue
        names[stem] = video
        if mp4_path.resolve() == video.resolve() or audio_path.resolve() == video.resolve():
            reason = f"the output would replace the input; choose another --out than {out}"
            logger.error("%s: %s", video, reason)
            report.failed.append((video, reason))
            continue
        existing = [p for p in (audio_path, mp4_path) if p.exists()]
        if existing and not overwrite:
            logger.warning("%s: skipped, %s already exists (use --overwrite to replace)", video, ", ".join(map(str, existing)))
            report.skipped.append(video)
            continue
        try:
            audio = pipeline(video, prompt=prompt, negative_prompt=negative_prompt, steps=steps, cfg=cfg, seed=seed,
                             sampler=sampler)
            wave = audio.detach().cpu().numpy()
            write_audio(audio_path, wave, sample_rate)
            mux_audio(video, wave, sample_rate, mp4_path, codec=mp4_audio_codec)
        except (VideoError, MediaError, OSError) as error:
            logger.error("%s: %s", video, error)
            report.failed.append((video, str(error)))
            continue
        report.written.extend([audio_path, mp4_path])
    logger.info(
        "foley generate: %d video(s) written, %d skipped, %d failed -> %s",
        len(report.written) // 2, len(report.skipped), len(report.failed), out,
    )
    return report


def _load_pipeline(model: str | None, flow_ckpt: str | None, stereo_ckpt: str | None, codec_ckpt: str | None,
                   device: torch.device, settings: dict[str, object]):
    from foley.pipeline import FoleyPipeline

    if model is not None:
        if flow_ckpt or stereo_ckpt or codec_ckpt:
            raise ValueError("give either --model or the stage checkpoints (--flow_ckpt, --stereo_ckpt), not both")
        return FoleyPipeline.from_pretrained(model, device=device, **settings)
    if flow_ckpt is not None and stereo_ckpt is not None:
        return FoleyPipeline.from_checkpoints(flow_ckpt, stereo_ckpt, codec_ckpt, device=device, **settings)
    raise ValueError(
        "no model given: pass --model MODEL_DIR (a folder from `foley export`, or a Hugging Face Hub id), "
        "or --flow_ckpt STAGE2.ckpt and --stereo_ckpt STAGE3.ckpt"
    )


def _text_only_name(prompt: str | None) -> str:
    """A file name from the prompt: ``"Rain on a tin roof"`` → ``rain_on_a_tin_roof``."""
    slug = re.sub(r"[^a-z0-9]+", "_", (prompt or "").lower()).strip("_")[:60].rstrip("_")
    return slug or "unconditional"


def generate(
    inputs: list[str] | None = None,
    *,
    out: Path,
    model: str | None = None,
    adapter: str | None = None,
    flow_ckpt: str | None = None,
    stereo_ckpt: str | None = None,
    codec_ckpt: str | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    sampler: Literal["euler", "midpoint", "heun"] | None = None,
    seed: int = 0,
    text_only: bool = False,
    duration: float | None = None,
    audio_format: Literal["wav", "flac"] = "wav",
    mp4_audio_codec: Literal["aac", "flac", "alac"] = "aac",
    overwrite: bool = False,
    device: str = "auto",
    window_seconds: float | None = None,
    overlap_seconds: float | None = None,
    continuity: Literal["inpaint", "shared_noise", "independent"] | None = None,
    compile: bool = False,
) -> int:
    """Generate 44.1 kHz stereo Foley for videos and mux it into copies of them.

    Writes ``OUT/<name>.wav`` (or ``.flac``) and ``OUT/<name>.mp4`` (original video stream,
    new audio) per input video. Exits with status 1 after processing everything if any
    input failed. With ``--text-only`` no video is read: one ``OUT/<prompt>.wav`` of
    ``--duration`` seconds is generated from the prompt alone (for generators trained with
    modality dropout). Sampling options left unset use the model's stored defaults.

    Args:
        inputs: video files and/or folders of videos (none with ``--text-only``).
        out: output folder (created if needed).
        model: model folder from ``foley export`` or a Hugging Face Hub id; or give the stage checkpoints.
        adapter: a LoRA adapter folder for ``model`` (``foley export --flow_ckpt LORA.ckpt``), applied
            without merging; it must have been trained on this model.
        flow_ckpt: stage-2 checkpoint from ``foley fit --config configs/stage2.yaml``.
        stereo_ckpt: stage-3 checkpoint from ``foley fit --config configs/stage3.yaml``.
        codec_ckpt: stage-1 checkpoint, if it moved since stage 2 was trained.
        prompt: optional text describing the wanted sound.
        negative_prompt: optional text describing sound to avoid (e.g. "speech, music"); "" switches
            off a stored default.
        steps: sampler steps (default: the model's).
        cfg: classifier-free guidance strength, 1 disables guidance (default: the model's).
        sampler: ODE method (default: the model's).
        seed: noise seed.
        text_only: generate from the prompt alone (no video), ``duration`` seconds.
        duration: length in seconds of text-only generation.
        audio_format: ``wav`` or ``flac`` for the audio-only file.
        mp4_audio_codec: audio codec inside the mp4 (``aac``; ``flac``/``alac`` are lossless).
        overwrite: replace existing outputs instead of skipping those videos.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        window_seconds: generation window; default: the trained clip length.
        overlap_seconds: overlap of neighbouring windows (crossfaded).
        continuity: how long videos' windows are tied together (``PipelineSettings.continuity``):
            ``inpaint`` (default; sequential), ``shared_noise`` (batched) or ``independent``.
        compile: run the generator through ``torch.compile`` with frozen weights
            (``MMDiT.compile_inference``): 1.04-1.11x faster sampling once compiled on 2 CPU
            cores; the first window waits for the compilation (11-46 s there). Worth it for many videos.

    Returns:
        Number of files (videos, or the text-only audio) written.
    """
    inputs = list(inputs or [])
    if text_only:
        if inputs:
            raise ValueError("--text-only generates without video; do not pass videos")
        if duration is None or duration <= 0:
            raise ValueError("--text-only needs --duration SECONDS (> 0)")
    elif not inputs:
        raise ValueError("no videos given (or pass --text-only --duration SECONDS --prompt TEXT)")
    settings = {"window_seconds": window_seconds, "overlap_seconds": overlap_seconds, "continuity": continuity}
    pipeline = _load_pipeline(model, flow_ckpt, stereo_ckpt, codec_ckpt, _device(device), settings)
    if adapter is not None:
        from foley.adapters.folder import load_adapter

        load_adapter(pipeline, adapter)
    if compile:
        network = pipeline.flow.network
        if not hasattr(network, "compile_inference"):
            raise ValueError(f"--compile needs an MMDiT generator; this model's is {type(network).__name__}")
        network.compile_inference()
    if text_only:
        target = Path(out) / f"{_text_only_name(prompt)}.{audio_format}"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
        Path(out).mkdir(parents=True, exist_ok=True)
        audio = pipeline(None, prompt=prompt, negative_prompt=negative_prompt, duration=duration, steps=steps,
                         cfg=cfg, seed=seed, sampler=sampler)
        write_audio(target, audio.detach().cpu().numpy(), int(pipeline.settings.sample_rate))
        logger.info("foley generate: %.2f s from text -> %s", duration, target)
        return 1
    report = generate_with(
        pipeline, inputs, out, prompt=prompt, negative_prompt=negative_prompt, steps=steps, cfg=cfg, seed=seed,
        audio_format=audio_format, mp4_audio_codec=mp4_audio_codec, overwrite=overwrite, sampler=sampler,
    )
    if report.failed:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in report.failed)
        logger.error("foley generate: %d input(s) failed:\n%s", len(report.failed), listing)
        raise SystemExit(1)
    return len(report.written) // 2
