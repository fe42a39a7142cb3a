"""VGGish for FD_VGG: 128-d embeddings of every 0.96 s example at 16 kHz.

The front end reproduces the published VGGish input pipeline: 25 ms periodic-Hann frames
every 10 ms (no centre padding), |rFFT| with 512 bins, 64 HTK mel bands from 125 Hz to
7.5 kHz with triangles linear in mel, ``log(mel + 0.01)``, and non-overlapping examples
of 96 frames (0.96 s): 8 examples for 8 s, 10 for 10 s. The network's parameter names
follow the torchvggish port (``features.*``, ``embeddings.*``), whose checkpoint
``vggish-10086976.pth`` loads strictly (key layout verified against torchvggish 0.2,
``tests/manifests/vggish.json``).

Post-processing: the AudioSet release applies a PCA whitening, clipping to [-2, 2] and 8-bit
quantisation (official ``vggish_pca_params``: ``pca_eigen_vectors`` 128x128, ``pca_means``
128). av-benchmark builds its VGGish with ``postprocess=False`` and computes FD_VGG on the
raw 128-d ReLU embeddings, so that is the default here; :class:`VGGishPostprocessor`
reproduces the official post-processing for those who need the AudioSet-release features
(``pca_params_path``), but its FD values are not comparable with published FD_VGG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from foley.metrics.embedders import AudioEmbedder, check_weights_file, frame_count

__all__ = ["VGGish", "VGGishEmbedder", "VGGishPostprocessor", "VGGISH_PCA_FILE", "VGGISH_PCA_URL", "vggish_log_mel", "vggish_mel_matrix", "vggish_examples", "vggish_example_count", "VGGISH_FILE", "VGGISH_URL"]

VGGISH_FILE = "vggish-10086976.pth"
VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases (port of the TensorFlow VGGish model)"

VGGISH_PCA_FILE = "vggish_pca_params-970ea276.pth"
VGGISH_PCA_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + VGGISH_PCA_FILE

_WINDOW, _HOP, _FFT = 400, 160, 512
_QUANT_MIN, _QUANT_MAX = -2.0, 2.0
_EXAMPLE_FRAMES = 96


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def vggish_mel_matrix(num_bins: int = _FFT // 2 + 1, sample_rate: int = 16000, n_mels: int = 64, fmin: float = 125.0, fmax: float = 7500.0) -> Tensor:
    """``(num_bins, n_mels)`` HTK mel weights, triangles linear in mel, DC bin zeroed."""
    bins_hz = torch.linspace(0.0, sample_rate / 2, num_bins, dtype=torch.float64)
    bins_mel = _hz_to_mel(bins_hz)
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(fmin, dtype=torch.float64))), float(_hz_to_mel(torch.tensor(fmax, dtype=torch.float64))), n_mels + 2, dtype=torch.float64)
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


def _load_pca_params(path: Path) -> dict[str, Tensor]:
    """The official PCA file, whose arrays may be numpy arrays rather than tensors.

    Only numpy's array reconstruction is allowed on top of ``weights_only`` loading: it
    rebuilds plain data and runs no other code.
    """
    from numpy._core.multiarray import _reconstruct

    allowed = [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),  # pickled by numpy 1.x
        np.ndarray,
        np.dtype,
        np.dtypes.Float64DType,
        np.dtypes.Float32DType,
    ]
    with torch.serialization.safe_globals(allowed):
        params = torch.load(path, map_location="cpu", weights_only=True)
    try:
        return {
            "pca_eigen_vectors": torch.as_tensor(params["pca_eigen_vectors"], dtype=torch.float32),
            "pca_means": torch.as_tensor(params["pca_means"], dtype=torch.float32).reshape(-1),
        }
    except (KeyError, TypeError) as error:
        raise RuntimeError(
            f"{path}: expected a dict with 'pca_eigen_vectors' (128x128) and 'pca_means' (128); "
            f"use the official {VGGISH_PCA_FILE} from {VGGISH_PCA_URL}"
        ) from error


class VGGishPostprocessor(nn.Module):
    """The AudioSet-release post-processing: PCA whitening, clip to [-2, 2], 8-bit quantise.

    ``out = round((clip(E (x - mu), -2, 2) + 2) * 255 / 4)`` with the eigenvector matrix
    ``E`` (rows are components) and the mean ``mu`` from the official PCA file; values are
    integers 0..255 stored as floats, as the official postprocessor returns them.

    Args:
        pca_eigen_vectors: ``(128, 128)``.
        pca_means: ``(128,)``.
    """

    def __init__(self, pca_eigen_vectors: Tensor, pca_means: Tensor) -> None:
        super().__init__()
        if pca_eigen_vectors.shape != (128, 128) or pca_means.numel() != 128:
            raise ValueError(
                f"VGGish PCA parameters must be 128x128 and 128, got {tuple(pca_eigen_vectors.shape)} and {tuple(pca_means.shape)}"
            )
        self.register_buffer("pca_eigen_vectors", pca_eigen_vectors.float())
        self.register_buffer("pca_means", pca_means.float().reshape(-1))

    @classmethod
    def from_file(cls, path: str | Path) -> VGGishPostprocessor:
        """Build from the official ``vggish_pca_params-970ea276.pth``."""
        path = check_weights_file(path, "VGGish PCA post-processing", VGGISH_PCA_FILE, VGGISH_PCA_URL)
        params = _load_pca_params(path)
        return cls(params["pca_eigen_vectors"], params["pca_means"])

    def forward(self, embeddings: Tensor) -> Tensor:
        """``(..., 128)`` raw embeddings -> ``(..., 128)`` quantised PCA features."""
        pca = (embeddings - self.pca_means) @ self.pca_eigen_vectors.T
        clipped = pca.clamp(_QUANT_MIN, _QUANT_MAX)
        return torch.round((clipped - _QUANT_MIN) * (255.0 / (_QUANT_MAX - _QUANT_MIN)))


class VGGishEmbedder(AudioEmbedder):
    """VGGish with official weights: embeddings ``(B, E, 128)``, one per 0.96 s example.

    Args:
        weights_path: local ``vggish-10086976.pth``.
        seconds: cut/pad length (``None``: the clip's own length).
        pca_params_path: local ``vggish_pca_params-970ea276.pth`` to apply the official
            PCA/quantisation; ``None`` (default, as av-benchmark) keeps the raw embeddings.
    """

    sample_rate = 16000
    embedding_dim = 128
    num_classes = 0

    def __init__(self, weights_path: str | None = None, seconds: float | None = None, pca_params_path: str | None = None) -> None:
        super().__init__(seconds)
        path = check_weights_file(weights_path, "VGGish", VGGISH_FILE, VGGISH_URL)
        self.model = VGGish()
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self.model.eval().requires_grad_(False)
        self.postprocess = VGGishPostprocessor.from_file(pca_params_path) if pca_params_path is not None else None

    def forward_model(self, audio: Tensor) -> tuple[Tensor, Tensor | None]:
        examples = vggish_examples(vggish_log_mel(audio))
        b, e = examples.shape[:2]
        embeddings = self.model(examples.flatten(0, 1)).reshape(b, e, -1)
        if self.postprocess is not None:
            embeddings = self.postprocess(embeddings)
        return embeddings, None


def vggish_example_count(seconds: float) -> int:
    """Examples VGGish cuts from ``seconds`` of audio (through the real framing)."""
    frames = frame_count(round(seconds * 16000), _WINDOW, _HOP)
    return frame_count(frames, _EXAMPLE_FRAMES, _EXAMPLE_FRAMES) if frames else 0

