"""The common interface of the evaluation embedders and their shared preprocessing.

Every embedder takes audio as it comes out of a generator, ``(B, C, N)`` or ``(B, N)`` at
any sample rate, and applies av-benchmark's preprocessing (facts §4): mix down to mono,
remove the mean, resample to the model's rate, cut or zero-pad to the model's length,
then cut the model's windows. The window arithmetic lives here as plain functions so that
it can be checked against the published conventions without any weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

__all__ = [
    "MissingWeightsError",
    "AudioEmbedder",
    "mono_zero_mean",
    "resample",
    "fit_length",
    "frame_starts",
    "frame_count",
    "synchformer_segment_count",
    "imagebind_clip_starts",
    "desync_window_starts",
    "check_weights_file",
    "SpectralStatsEmbedder",
]


class MissingWeightsError(FileNotFoundError):
    """An embedder's official weights file is not where the configuration says."""


def check_weights_file(path: str | Path | None, model: str, file_name: str, published_at: str) -> Path:
    """Return ``path`` if it is an existing file, else raise a :class:`MissingWeightsError`
    naming the model, the expected official file and where it is published."""
    if path is not None and Path(path).is_file():
        return Path(path)
    where = "no path was configured" if path is None else f"{path} does not exist"
    raise MissingWeightsError(
        f"{model}: official weights not found ({where}). Download {file_name} from {published_at} "
        f"and pass its local path as weights_path."
    )


def mono_zero_mean(wave: Tensor) -> Tensor:
    """``(B, C, N)`` or ``(B, N)`` -> ``(B, N)``: channel mean, then per-clip mean removed."""
    if wave.dim() == 3:
        wave = wave.mean(dim=1)
    if wave.dim() != 2:
        raise ValueError(f"expected audio (B, C, N) or (B, N), got {tuple(wave.shape)}")
    return wave - wave.mean(dim=-1, keepdim=True)


def resample(wave: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited (sinc, Hann-windowed) resampling along the last axis."""
    if int(orig_rate) == int(new_rate):
        return wave
    return AF.resample(wave, int(orig_rate), int(new_rate))


def fit_length(wave: Tensor, length: int) -> Tensor:
    """Cut or zero-pad the last axis to ``length`` samples."""
    n = wave.shape[-1]
    if n >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - n))


def frame_count(num_samples: int, frame: int, hop: int) -> int:
    """Number of whole frames of ``frame`` samples, ``hop`` apart, in ``num_samples``."""
    return 0 if num_samples < frame else (num_samples - frame) // hop + 1


def frame_starts(num_samples: int, frame: int, hop: int) -> list[int]:
    """Start samples of the whole frames counted by :func:`frame_count`."""
    return [i * hop for i in range(frame_count(num_samples, frame, hop))]


def synchformer_segment_count(seconds: float = 4.8) -> int:
    """Synchformer audio segments (0.64 s, stride 0.32 s at 16 kHz): 14 for a 4.8 s window."""
    return frame_count(round(seconds * 16000), 10240, 5120)


def desync_window_starts(seconds: float, window: float = 4.8) -> list[float]:
    """Start times of DeSync's windows: the first and the last ``window`` seconds (one window
    if the clip is not longer than it)."""
    if seconds <= window + 1e-9:
        return [0.0]
    return [0.0, seconds - window]


def imagebind_clip_starts(seconds: float, clip: float = 2.0, clips: int = 3) -> list[float]:
    """Start times of ImageBind's audio clips: ``clips`` clips of ``clip`` seconds spread
    evenly over the clip (first at 0, last ending at the end)."""
    if seconds <= clip or clips == 1:
        return [0.0] * clips
    step = (seconds - clip) / (clips - 1)
    return [i * step for i in range(clips)]


class AudioEmbedder(nn.Module, ABC):
    """An evaluation model mapping audio to embeddings and (optionally) class logits.

    Subclasses set ``sample_rate`` (model rate), ``embedding_dim`` and ``num_classes``
    (0 without a classifier head) and implement :meth:`forward_model` on preprocessed audio.

    Args:
        seconds: clip length the model sees after cut/pad (``None``: keep the length).
    """

    sample_rate: int
    embedding_dim: int
    num_classes: int = 0

    def __init__(self, seconds: float | None = None) -> None:
        super().__init__()
        self.seconds = seconds

    def preprocess(self, wave: Tensor, sample_rate: int) -> Tensor:
        """Mono mixdown, mean removal, resampling and cut/pad: ``(B, [C,] N) -> (B, M)``."""
        mono = resample(mono_zero_mean(wave.float()), sample_rate, self.sample_rate)
        if self.seconds is not None:
            mono = fit_length(mono, round(self.seconds * self.sample_rate))
        return mono

    @abstractmethod
    def forward_model(self, audio: Tensor) -> tuple[Tensor, Tensor | None]:
        """Embeddings ``(B, D)`` or ``(B, T, D)`` and logits ``(B, K)`` (or ``None``)."""

    @torch.no_grad()
    def embed(self, wave: Tensor, sample_rate: int) -> tuple[Tensor, Tensor | None]:
        """Embeddings and logits of audio at ``sample_rate``."""
        device = next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device
        return self.forward_model(self.preprocess(wave, sample_rate).to(device))


class SpectralStatsEmbedder(AudioEmbedder):
    """Weight-free stand-in embedder for CI: per-band log-mel mean and std (embedding) and
    the per-band mean log-mel energy as "class" logits. Not a perceptual model; use it to
    exercise the FD/KL/IS code paths where the official weights are unavailable.

    Args:
        sample_rate: analysis rate.
        n_mels: mel bands (embedding is ``2 * n_mels``, logits ``n_mels``).
        seconds: cut/pad length.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 32, seconds: float | None = None) -> None:
        super().__init__(seconds)
        import torchaudio.transforms as T

        self.sample_rate = sample_rate
        self.embedding_dim = 2 * n_mels
        self.num_classes = n_mels
        self.mel = T.MelSpectrogram(sample_rate, n_fft=512, hop_length=160, n_mels=n_mels)

    def forward_model(self, audio: Tensor) -> tuple[Tensor, Tensor | None]:
        log_mel = torch.log(self.mel(audio) + 1e-6)
        return torch.cat([log_mel.mean(-1), log_mel.std(-1)], dim=-1), log_mel.mean(-1)

