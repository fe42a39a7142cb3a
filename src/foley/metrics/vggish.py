"""VGGish for FD_VGG: 128-d embeddings of every 0.96 s example at 16 kHz.

The front end reproduces the published VGGish input pipeline: 25 ms periodic-Hann frames
every 10 ms (no centre padding), |rFFT| with 512 bins, 64 HTK mel bands from 125 Hz to
7.5 kHz with triangles linear in mel, ``log(mel + 0.01)``, and non-overlapping examples
of 96 frames (0.96 s): 8 examples for 8 s, 10 for 10 s. The network's parameter names
follow the torchvggish port (``features.*``, ``embeddings.*``), whose checkpoint
``vggish-10086976.pth`` loads strictly. The PCA/quantisation post-processing is not
applied (FD is computed on the raw 128-d ReLU embeddings).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from foley.metrics.embedders import AudioEmbedder, check_weights_file, frame_count

__all__ = ["VGGish", "VGGishEmbedder", "vggish_log_mel", "vggish_mel_matrix", "vggish_examples", "vggish_example_count", "VGGISH_FILE", "VGGISH_URL"]

VGGISH_FILE = "vggish-10086976.pth"
VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases (port of the TensorFlow VGGish model)"

_WINDOW, _HOP, _FFT = 400, 160, 512
_EXAMPLE_FRAMES = 96


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def vggish_mel_matrix(num_bins: int = _FFT // 2 + 1, sample_rate: int = 16000, n_mels: int = 64, fmin: float = 125.0, fmax: float = 7500.0) -> Tensor:
    """``(num_bins, n_mels)`` HTK mel weights, triangles linear in mel, DC bin zeroed."""
    bins_hz = torch.linspace(0.0, sample_rate / 2, num_bins, dtype=torch.float64)
    bins_mel = _hz_to_mel(bins_hz)
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(fmin))), float(_hz_to_mel(torch.tensor(fmax))), n_mels + 2, dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0] = 0.0
    return weights


def vggish_log_mel(wave: Tensor) -> Tensor:
    """16 kHz ``(B, N)`` -> log-mel ``(B, frames, 64)`` with ``frames = 1 + (N - 400) // 160``."""
    frames = wave.double().unfold(-1, _WINDOW, _HOP)
    window = torch.hann_window(_WINDOW, periodic=True, dtype=torch.float64)
    magnitude = torch.fft.rfft(frames * window, n=_FFT, dim=-1).abs()
    return torch.log(magnitude @ vggish_mel_matrix().to(magnitude.device) + 0.01).float()


def vggish_examples(log_mel: Tensor) -> Tensor:
    """``(B, frames, 64)`` -> ``(B, E, 1, 96, 64)`` non-overlapping 0.96 s examples."""
    count = frame_count(log_mel.shape[1], _EXAMPLE_FRAMES, _EXAMPLE_FRAMES)
    if count == 0:
        raise ValueError(f"VGGish needs at least 0.975 s of audio ({_EXAMPLE_FRAMES} frames), got {log_mel.shape[1]} frames")
    return log_mel[:, : count * _EXAMPLE_FRAMES].reshape(log_mel.shape[0], count, 1, _EXAMPLE_FRAMES, log_mel.shape[2])


class VGGish(nn.Module):
    """The VGGish network: 4 VGG stages and three fully connected layers to 128-d."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for stage in ([64], [128], [256, 256], [512, 512]):
            for width in stage:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 128), nn.ReLU(inplace=True),
        )

    def forward(self, examples: Tensor) -> Tensor:
        """``(M, 1, 96, 64)`` -> ``(M, 128)``."""
        x = self.features(examples)
        # The TensorFlow original flattens channels-last; keep its order for its weights.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


class VGGishEmbedder(AudioEmbedder):
    """VGGish with official weights: embeddings ``(B, E, 128)``, one per 0.96 s example.

    Args:
        weights_path: local ``vggish-10086976.pth``.
        seconds: cut/pad length (``None``: the clip's own length).
    """

    sample_rate = 16000
    embedding_dim = 128
    num_classes = 0

    def __init__(self, weights_path: str | None = None, seconds: float | None = None) -> None:
        super().__init__(seconds)
        path = check_weights_file(weights_path, "VGGish", VGGISH_FILE, VGGISH_URL)
        self.model = VGGish()
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self.model.eval().requires_grad_(False)

    def forward_model(self, audio: Tensor) -> tuple[Tensor, Tensor | None]:
        examples = vggish_examples(vggish_log_mel(audio))
        b, e = examples.shape[:2]
        return self.model(examples.flatten(0, 1)).reshape(b, e, -1), None


def vggish_example_count(seconds: float) -> int:
    """Examples VGGish cuts from ``seconds`` of audio (through the real framing)."""
    frames = frame_count(round(seconds * 16000), _WINDOW, _HOP)
    return frame_count(frames, _EXAMPLE_FRAMES, _EXAMPLE_FRAMES) if frames else 0

