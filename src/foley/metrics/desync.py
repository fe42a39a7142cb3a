"""DeSync: audio-visual offset of generated audio, predicted by the Synchformer AV classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from foley.metrics.embedders import desync_window_starts, resample
from foley.metrics.generation import GenerationMetric
from foley.metrics.mean import ClipMean
from foley.metrics.synchformer_av import (
    AUDIO_RATE,
    VIDEO_FPS,
    WINDOW_SECONDS,
    SynchformerAV,
    synchformer_audio_segments,
    synchformer_av_from_file,
    synchformer_video_segments,
)

__all__ = ["SYNCHFORMER_OFFSETS", "offsets_from_logits", "DeSync"]

# The 21 offset classes of the AV Synchformer (seconds), -2 s .. +2 s in 0.2 s steps.
SYNCHFORMER_OFFSETS = torch.linspace(-2.0, 2.0, 21, dtype=torch.float64)


def offsets_from_logits(logits: Tensor, offsets: Tensor = SYNCHFORMER_OFFSETS) -> Tensor:
    """Offset in seconds of the arg-max class, ``(..., K) -> (...)``."""
    if logits.shape[-1] != offsets.numel():
        raise ValueError(f"expected {offsets.numel()} offset classes, got logits of shape {tuple(logits.shape)}")
    return offsets.to(logits.device)[logits.argmax(dim=-1)]


class DeSync(ClipMean, GenerationMetric):
    """Mean absolute predicted audio-visual offset in seconds of generated audio against the
    batch's video (lower is better).

    The Synchformer AV classifier predicts the offset on the first and the last 4.8 s of the
    first ``seconds`` of each clip (av-benchmark: 8 s, so two windows; one for clips of at most
    4.8 s); a clip contributes the mean absolute offset of its windows, and the clips' values
    are summed in float64 states, so the value is exact under DDP. The video is
    ``batch["sync_frames"]``, which must be the data module's 25 fps sync stream at the
    model's frame size (224² for the official weights).

    Args:
        weights_path: local ``synchformer_state_dict.pth`` (not needed when ``model`` is given).
        seconds: evaluated length from the clip start.
        name: key of the result.
        model: use this (e.g. tiny, random) classifier instead of the official one; for tests.
        kwargs: torchmetrics ``Metric`` options (e.g. ``sync_on_compute``).
    """

    higher_is_better = False

    def __init__(
        self,
        weights_path: str | None = None,
        seconds: float = 8.0,
        name: str = "desync",
        model: SynchformerAV | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if model is None:
            model = synchformer_av_from_file(weights_path)
        self.model = model.eval().requires_grad_(False)
        self.frame_size = model.crop_size
        self.seconds = seconds
        self.name = name

    @torch.no_grad()
    def offsets(self, generated: Tensor, frames: Tensor, sample_rate: int, duration: float) -> Tensor:
        """Predicted offsets (seconds) of one clip's DeSync windows: ``(W,)``.

        Args:
            generated: the clip's audio ``(C, N)`` or ``(N,)`` at ``sample_rate``.
            frames: its sync frames ``(T, 3, H, W)`` at 25 fps.
            sample_rate: rate of ``generated``.
            duration: the clip's unpadded length in seconds.
        """
        wave = generated.float().mean(dim=0, keepdim=True) if generated.dim() == 2 else generated.float()[None]
        wave = resample(wave, sample_rate, AUDIO_RATE)
        duration = min(duration, self.seconds)
        predictions = []
        for start in desync_window_starts(duration, WINDOW_SECONDS):
            a0, f0 = round(start * AUDIO_RATE), round(start * VIDEO_FPS)
            audio = wave[:, a0 : a0 + round(WINDOW_SECONDS * AUDIO_RATE)]
            video = frames[None, f0 : f0 + round(WINDOW_SECONDS * VIDEO_FPS)]
            logits = self.model(synchformer_video_segments(video), synchformer_audio_segments(audio))
            predictions.append(offsets_from_logits(logits.double(), SYNCHFORMER_OFFSETS)[0])
        return torch.stack(predictions)

    def update(self, generated: Tensor, batch: Mapping[str, Any], sample_rate: int) -> None:
        """Add the clips of generated audio ``(B, C, N)`` at ``sample_rate``."""
        frames = batch.get("sync_frames")
        if frames is None or frames.shape[-1] != self.frame_size or frames.shape[-2] != self.frame_size:
            raise ValueError(
                f"DeSync needs batch['sync_frames'] at 25 fps and {self.frame_size}x{self.frame_size} "
                f"(set the data module's sync_fps: 25 and sync_size: {self.frame_size}); got "
                f"{None if frames is None else tuple(frames.shape)}"
            )
        if generated.shape[0] == 0:
            return
        per_clip = []
        for i in range(generated.shape[0]):
            duration = float(batch["seconds_total"][i]) if "seconds_total" in batch else generated.shape[-1] / sample_rate
            if duration < WINDOW_SECONDS - 1e-6:
                key = batch["key"][i] if "key" in batch else f"#{i}"
                raise ValueError(f"DeSync needs clips of at least {WINDOW_SECONDS} s; clip {key} has {duration:.2f} s")
            per_clip.append(self.offsets(generated[i], frames[i], sample_rate, duration).abs().mean())
        self.accumulate(torch.stack(per_clip))

    def compute(self) -> dict[str, Tensor]:
        """``{name: mean absolute offset in seconds}`` over all clips so far."""
        return {self.name: super().compute()}
