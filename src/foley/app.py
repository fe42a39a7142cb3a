"""``foley app``: a web page (Gradio) that adds stereo Foley to a video.

``foley app --model MODEL_DIR_OR_HUB_ID`` serves, on http://127.0.0.1:7860 by default, a page
where a person uploads a video (or picks a built-in synthetic clip), sets prompt, negative
prompt, seed, steps, CFG, start and duration (the model's own defaults preset), and presses
Generate. The page then plays the mp4 with the generated 44.1 kHz stereo audio, shows both
channels' waveform and spectrogram (with the ground-truth onsets of a synthetic clip), and
offers the wav and the mp4 for download.

One generation runs at a time (Gradio's queue, concurrency 1); further requests wait in the
queue, which shows their position. Uploads larger than ``--max-upload-mb`` and segments longer
than ``--max-seconds`` are refused with a message saying which limit and how to change it. A
file that is not a video, or holds no frames, gets a message in the page, is deleted at once,
and the server keeps serving. Uploads and outputs live in one temporary folder of the server:
each is deleted ``--keep-minutes`` after it was written, and the whole folder when the server
stops (Ctrl-C or SIGTERM). Files are only handled as paths by Python (PyAV, soundfile): no
file name ever reaches a shell.

:class:`FoleyApp` is the generation behind the page, without Gradio (tests call it directly);
:func:`build_page` lays out the page around it; :func:`app` is the command.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foley.app_media import (
    AppLimits,
    CheckedVideo,
    InputError,
    SyntheticExamples,
    check_upload,
    choose_segment,
    draw_channels,
    write_output_video,
)
from foley.io.media import MediaError, write_audio
from foley.io.video import VideoError

if TYPE_CHECKING:
    import gradio

    from foley.pipeline import FoleyPipeline

__all__ = ["app", "build_page", "FoleyApp", "AppResult", "AppLimits"]

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
MAX_STEPS = 1000
VIDEO_HEIGHT = 300  # pixels; keeps inputs and outputs on one screen
EXAMPLES_FOLDER = "examples"
OUTPUTS_FOLDER = "outputs"


@dataclass
class AppResult:
    """What the page shows after a request.

    Args:
        message: the status line (what was generated, or why nothing was).
        video: the mp4 with the generated audio.
        audio: the generated wav.
        picture: the PNG of both channels.
    """

    message: str
    video: Path | None = None
    audio: Path | None = None
    picture: Path | None = None

    @property
    def ok(self) -> bool:
        return self.video is not None


def _file_stem(name: str) -> str:
    """A safe output name from an uploaded file's name: ``"My clip (1).MOV"`` → ``My_clip_1``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem).strip("_")[:60]
    return stem or "video"


def _integer(value: Any, what: str, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (whole floats such as 3.0 count), else :class:`InputError`."""
    problem = InputError(f"{what} must be a whole number from {low} to {high}, got {value!r}.")
    if isinstance(value, bool):
        raise problem
    if not isinstance(value, int):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise problem from None
        if not math.isfinite(number) or number != int(number):
            raise problem
        value = int(number)
    if not low <= value <= high:
        raise problem
    return value


def _guidance(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise InputError(f"CFG must be a number ≥ 0 (1 switches guidance off), got {value!r}.")
    return number


class FoleyApp:
    """The generation behind the page: one pipeline, the server's limits, one working folder.

    Args:
        pipeline: the loaded model.
        workdir: the server's temporary folder; uploads arrive there (Gradio's upload folder),
            outputs go to ``workdir/outputs``, and the synthetic examples to ``workdir/examples``.
        limits: upload size and segment length limits.
        keep_seconds: age after which uploads and outputs are deleted.
        examples: write the built-in synthetic examples.
        model_name: how the page names the model.
    """

    def __init__(self, pipeline: FoleyPipeline, workdir: str | os.PathLike[str], limits: AppLimits | None = None,
                 keep_seconds: float = 3600.0, examples: bool = True, model_name: str = "") -> None:
        self.pipeline = pipeline
        self.workdir = Path(workdir).resolve()
        self.limits = limits or AppLimits()
        self.keep_seconds = float(keep_seconds)
        self.model_name = model_name
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / OUTPUTS_FOLDER).mkdir(exist_ok=True)
        self.examples = SyntheticExamples(self.workdir / EXAMPLES_FOLDER) if examples else None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ requests
    def generate(
        self,
        video: str | os.PathLike[str] | None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        seed: Any = 0,
        steps: Any = None,
        cfg: Any = None,
        start: float | None = 0.0,
        duration: float | None = None,
        progress: Progress | None = None,
    ) -> AppResult:
        """Generate stereo Foley for ``[start, start + duration)`` of ``video`` and write the outputs.

        Never raises for a bad request or a failed generation: the result's message says what
        happened (and the server log has the details of unexpected errors).

        Args:
            video: the uploaded file (or an example's).
            prompt: text describing the sound (empty: none).
            negative_prompt: text of sound to avoid; ``None`` uses the model's stored default,
                ``""`` none.
            seed: noise seed, a whole number ≥ 0.
            steps: sampler steps (``None``: the model's).
            cfg: guidance strength (``None``: the model's; 1 = off).
            start: segment start in seconds.
            duration: segment length in seconds (``None`` or 0: to the end).
            progress: called with (fraction done, what is happening).
        """
        report = progress or (lambda fraction, text: None)
        if not video:
            return AppResult("Upload a video, or pick one of the built-in examples, then press Generate.")
        path = Path(video)
        try:
            checked = check_upload(path, self.limits)
        except InputError as error:  # not a video, or too large: nothing to keep it for
            if not self._is_example(path):
                self._discard(path)
            return AppResult(f"**Not generated.** {error}")
        try:
            start, duration = choose_segment(checked, start, duration, self.limits)
            sampling = self._sampling(seed, steps, cfg)
        except InputError as error:  # the video stays for a request with other settings
            return AppResult(f"**Not generated.** {error}")
        with self._lock:  # the queue already runs one request at a time; direct callers too
            try:
                return self._generate(checked, prompt, negative_prompt, start, duration, sampling, report)
            except (VideoError, MediaError) as error:
                logger.warning("%s: %s", checked.name, error)
                return AppResult(f"**Not generated.** {checked.name} could not be decoded to the end ({error}).")
            except Exception as error:  # the page reports it and the server keeps serving
                logger.exception("generation failed for %s", checked.name)
                return AppResult(f"**Generation failed** ({type(error).__name__}: {error}). The server keeps running; "
                                 "its log has the details.")
            finally:
                self.sweep()

    def _sampling(self, seed: Any, steps: Any, cfg: Any) -> dict[str, Any]:
        sampling: dict[str, Any] = {"seed": _integer(0 if seed is None else seed, "Seed", 0, 2**63 - 1)}
        if steps is not None:
            sampling["steps"] = _integer(steps, "Steps", 1, MAX_STEPS)
        if cfg is not None:
            sampling["cfg"] = _guidance(cfg)
        return sampling

    def _generate(self, video: CheckedVideo, prompt: str | None, negative_prompt: str | None, start: float,
                  duration: float, sampling: dict[str, Any], report: Progress) -> AppResult:
        began = time.perf_counter()
        example = self.examples.find(video.path) if self.examples else None
        settings = self.pipeline.settings
        defaults = self.pipeline.generation
        steps = sampling.get("steps", defaults.steps)
        report(0.05, f"generating {duration:.2f} s of stereo audio ({steps} steps per {settings.window_seconds:g} s window)")
        audio = self.pipeline(os.fspath(video.path), prompt=prompt or None, negative_prompt=negative_prompt,
                              start=start, duration=duration, **sampling)
        wave = audio.detach().cpu().numpy()
        rate = int(settings.sample_rate)
        folder = self.workdir / OUTPUTS_FOLDER / uuid.uuid4().hex[:12]
        stem = _file_stem(video.name) + "_foley"
        wav, mp4, png = folder / f"{stem}.wav", folder / f"{stem}.mp4", folder / f"{stem}.png"
        report(0.80, "writing the wav and the mp4")
        write_audio(wav, wave, rate)
        write_output_video(video, start, duration, wave, rate, mp4)
        report(0.92, "drawing the channels")
        title = f"{example.name}: {example.caption}" if example else video.name
        draw_channels(wave, rate, png, start=start, events=example.events if example else (), title=title)
        cfg = sampling.get("cfg", defaults.cfg)
        message = (f"Generated {duration:.2f} s of {rate / 1000:g} kHz stereo for **{video.name}** "
                   f"({start:.2f}–{start + duration:.2f} s) in {time.perf_counter() - began:.1f} s: "
                   f"seed {sampling['seed']}, {steps} steps, CFG {cfg:g}.")
        if example:
            message += f" Built-in example *{example.name}*: dashed lines mark its {len(example.events)} true sound onsets."
        report(1.0, "done")
        return AppResult(message, video=mp4, audio=wav, picture=png)

    # ------------------------------------------------------------------ files
    def _is_example(self, path: Path) -> bool:
        return self.examples is not None and any(path.resolve() == e.path.resolve() for e in self.examples)

    def _discard(self, path: Path) -> None:
        """Delete a refused upload (only files inside the working folder) and its emptied folder."""
        try:
            resolved = path.resolve()
            if self.workdir not in resolved.parents or not resolved.exists():
                return
            resolved.unlink()
            parent = resolved.parent
            if parent != self.workdir and not any(parent.iterdir()):
                parent.rmdir()
        except OSError as error:
            logger.warning("could not delete the refused upload %s: %s", path, error)

    def sweep(self, now: float | None = None) -> list[Path]:
        """Delete uploads and outputs written more than ``keep_seconds`` ago; returns what went."""
        now = time.time() if now is None else now
        outputs = self.workdir / OUTPUTS_FOLDER
        candidates = [p for p in self.workdir.iterdir() if p.name not in (EXAMPLES_FOLDER, OUTPUTS_FOLDER)]
        candidates += list(outputs.iterdir()) if outputs.is_dir() else []
        removed = []
        for entry in candidates:
            try:
                if now - entry.stat().st_mtime <= self.keep_seconds:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
            except OSError as error:
                logger.warning("could not delete %s: %s", entry, error)
        return removed


def build_page(foley_app: FoleyApp) -> gradio.Blocks:
    """The Gradio page around ``foley_app``: inputs left, status and outputs right, a queue of one."""
    import gradio as gr

    defaults = foley_app.pipeline.generation
    limits = foley_app.limits
    with gr.Blocks(title="foley", analytics_enabled=False) as page:
        gr.Markdown(
            f"# foley: stereo Foley for a video\n"
            f"Model `{foley_app.model_name}`. Upload a video (up to {limits.max_upload_mb:g} MB; at most "
            f"{limits.max_seconds:g} s are generated per request) or pick a built-in synthetic example, then "
            "press **Generate**. One generation runs at a time; others wait in the queue."
        )
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], height=VIDEO_HEIGHT, elem_id="foley-input")
                prompt = gr.Textbox(label="Prompt", placeholder="e.g. footsteps on gravel (optional)", elem_id="foley-prompt")
                negative = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt or "",
                                      placeholder="sound to avoid, e.g. speech, music (optional)", elem_id="foley-negative")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="foley-seed")
                    steps = gr.Number(label="Steps", value=defaults.steps, precision=0, minimum=1, maximum=MAX_STEPS,
                                      elem_id="foley-steps")
                    cfg = gr.Number(label="CFG (1 = off)", value=defaults.cfg, minimum=0, elem_id="foley-cfg")
                with gr.Row():
                    start = gr.Number(label="Start (s)", value=0, minimum=0, elem_id="foley-start")
                    duration = gr.Number(label="Duration (s, 0 = to the end)", value=0, minimum=0, elem_id="foley-duration")
                button = gr.Button("Generate", variant="primary", elem_id="foley-generate")
                if foley_app.examples:
                    gr.Examples([[str(e.path), e.caption] for e in foley_app.examples], inputs=[video, prompt],
                                label="Built-in synthetic examples (their true sound onsets are known)")
            with gr.Column():
                status = gr.Markdown("Nothing generated yet.", elem_id="foley-status")
                output = gr.Video(label="Video with the generated stereo Foley", interactive=False, height=VIDEO_HEIGHT,
                                  elem_id="foley-output")
                # No label over the picture: it would hide the figure's title.
                picture = gr.Image(label="Left and right channels", show_label=False, type="filepath",
                                   interactive=False, elem_id="foley-picture")
                downloads = gr.File(label="Downloads (wav, mp4)", file_count="multiple", interactive=False,
                                    elem_id="foley-downloads")

        def run(video_path, prompt_text, negative_text, seed_value, steps_value, cfg_value, start_value,
                duration_value, progress=gr.Progress()):
            result = foley_app.generate(video_path, prompt_text, negative_text, seed_value, steps_value, cfg_value,
                                        start_value, duration_value, progress=lambda f, text: progress(f, desc=text))
            files = [str(p) for p in (result.audio, result.video) if p is not None]
            return (result.message, str(result.video) if result.video else None,
                    str(result.picture) if result.picture else None, files or None)

        button.click(run, inputs=[video, prompt, negative, seed, steps, cfg, start, duration],
                     outputs=[status, output, picture, downloads], concurrency_limit=1, show_progress="full")
    page.queue(default_concurrency_limit=1)
    return page


def app(
    model: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    max_upload_mb: float = 200.0,
    max_seconds: float = 60.0,
    keep_minutes: float = 60.0,
    examples: bool = True,
    temp_dir: Path | None = None,
) -> int:
    """Serve a web page that adds stereo Foley to an uploaded video (Gradio).

    The page runs one generation at a time. It listens on localhost only unless ``--host``
    says otherwise (``--host 0.0.0.0`` serves every network interface: only do that on a
    network you trust). Ctrl-C or SIGTERM stops it and deletes its temporary folder.

    Args:
        model: model folder from ``foley export`` (or ``make demo``'s ``demo_out/model``), or a
            Hugging Face Hub id.
        host: address to listen on.
        port: port to listen on.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        max_upload_mb: largest accepted upload in MB.
        max_seconds: longest segment generated per request, in seconds.
        keep_minutes: uploads and outputs are deleted this many minutes after they were written.
        examples: offer the built-in synthetic example clips.
        temp_dir: folder in which the server's temporary folder is made (default: the system's).

    Returns:
        0 after the server stopped.
    """
    from foley.generate import _device
    from foley.pipeline import FoleyPipeline

    limits = AppLimits(max_upload_mb=max_upload_mb, max_seconds=max_seconds)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    if not keep_minutes > 0:
        raise ValueError(f"--keep-minutes must be positive, got {keep_minutes}")
    pipeline = FoleyPipeline.from_pretrained(model, device=_device(device))
    workdir = Path(tempfile.mkdtemp(prefix="foley-app-", dir=temp_dir))
    page = None
    try:
        # Gradio stores uploads (and copies of what it serves) in GRADIO_TEMP_DIR, read when the
        # page and its server are built: pointing it at the server's own folder keeps every
        # upload where sweep() and the final clean-up find it.
        os.environ["GRADIO_TEMP_DIR"] = str(workdir)
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        foley_app = FoleyApp(pipeline, workdir, limits, keep_seconds=60.0 * keep_minutes, examples=examples,
                             model_name=str(model))
        page = build_page(foley_app)
        page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                    max_file_size=limits.max_upload_bytes, show_error=False, run_history=False,
                    footer_links=["api", "settings"], ssr_mode=False, mcp_server=False, enable_monitoring=False)
        logger.info("foley app: serving %s at %s (Ctrl-C stops)", model, page.local_url)
        _wait_for_stop()
    finally:
        if page is not None:
            page.close()
        shutil.rmtree(workdir, ignore_errors=True)
        logger.info("foley app: stopped; deleted %s", workdir)
    return 0


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM (the handler is only installed from the main thread)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
