"""PANNs CNN14 (16 kHz) for FD_PANNs, KL_PANNs and IS.

The module tree and parameter names follow the published audioset_tagging_cnn ``Cnn14``
(with torchlibrosa's STFT-as-convolution front end), so the official checkpoint
``Cnn14_16k_mAP=0.438.pth`` (``{"model": state_dict, ...}``, Zenodo record 3987831) loads
with strict key matching (layout verified against panns-inference 0.1.1's ``Cnn14``,
``tests/manifests/panns_cnn14_16k.json``; the log-mel front end agrees with torchlibrosa's to
1e-3 dB). Settings of the 16 kHz model: window 512, hop 160, 64 mel bands from 50 Hz to 8 kHz.

Outputs: the 2048-d embedding (``fc1`` after ReLU) and the 527 AudioSet logits before the
sigmoid (KL and IS take a softmax over them, av-benchmark convention).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from foley.metrics.embedders import AudioEmbedder, check_weights_file

__all__ = ["Cnn14", "PANNsEmbedder", "CNN14_16K_FILE", "CNN14_16K_URL"]

logger = logging.getLogger(__name__)

CNN14_16K_FILE = "Cnn14_16k_mAP=0.438.pth"
CNN14_16K_URL = "https://zenodo.org/record/3987831 (PANNs, Kong et al.)"


class _ConvSTFT(nn.Module):
    """Power spectrogram by 1-D convolution with Hann-windowed DFT kernels (centre, reflect)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        phase = 2 * math.pi * torch.outer(torch.arange(bins, dtype=torch.float64), torch.arange(n_fft, dtype=torch.float64)) / n_fft
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_((torch.cos(phase) * window)[:, None].float())
            self.conv_imag.weight.copy_((-torch.sin(phase) * window)[:, None].float())

    def forward(self, wave: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, 1, T, bins)`` power."""
        x = F.pad(wave[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real, imag = self.conv_real(x), self.conv_imag(x)
        return (real.pow(2) + imag.pow(2)).transpose(1, 2)[:, None]


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.stft = _ConvSTFT(n_fft, hop)

    def forward(self, wave: Tensor) -> Tensor:
        return self.stft(wave)


class _LogMel(nn.Module):
    """Slaney mel filters (librosa defaults) and ``10·log10(max(x, 1e-10))``."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> None:
        super().__init__()
        with torch.device("cpu"):  # constant filters, also when the model is built on "meta"
            filters = AF.melscale_fbanks(n_fft // 2 + 1, fmin, fmax, n_mels, sample_rate, norm="slaney", mel_scale="slaney")
        self.melW = nn.Parameter(filters, requires_grad=False)

    def forward(self, power: Tensor) -> Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, pool: tuple[int, int]) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    """CNN14 audio tagger (PANNs) in evaluation mode.

    Args:
        sample_rate: input rate.
        window_size: STFT size.
        hop_size: STFT hop.
        mel_bins: mel bands.
        fmin: lowest mel frequency.
        fmax: highest mel frequency.
        classes_num: output classes.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        window_size: int = 512,
        hop_size: int = 160,
        mel_bins: int = 64,
        fmin: float = 50.0,
        fmax: float = 8000.0,
        classes_num: int = 527,
    ) -> None:
        super().__init__()
        self.spectrogram_extractor = _Spectrogram(window_size, hop_size)
        self.logmel_extractor = _LogMel(sample_rate, window_size, mel_bins, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(mel_bins)
        widths = [1, 64, 128, 256, 512, 1024, 2048]
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, classes_num)

    def log_mel(self, wave: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, 1, T, mel)`` log-mel (dB)."""
        return self.logmel_extractor(self.spectrogram_extractor(wave))

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, N)`` -> (embedding ``(B, 2048)``, logits ``(B, classes)``)."""
        x = self.log_mel(wave)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, (2, 2) if i < 5 else (1, 1))
        x = x.mean(dim=3)
        x = x.max(dim=2).values + x.mean(dim=2)
        embedding = F.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


class PANNsEmbedder(AudioEmbedder):
    """CNN14 at 16 kHz with its official weights (FD_PANNs, KL_PANNs, IS).

    Audio is mixed to mono, mean-removed and resampled to 16 kHz; with ``seconds`` it is
    cut or zero-padded (av-benchmark: 10 s clips are evaluated as they are, 8 s for 8 s).

    Args:
        weights_path: local ``Cnn14_16k_mAP=0.438.pth``.
        seconds: cut/pad length (``None``: the clip's own length).
    """

    sample_rate = 16000
    embedding_dim = 2048
    num_classes = 527

    def __init__(self, weights_path: str | None = None, seconds: float | None = None) -> None:
        super().__init__(seconds)
        path = check_weights_file(weights_path, "PANNs CNN14 (16 kHz)", CNN14_16K_FILE, CNN14_16K_URL)
        self.model = Cnn14()
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        self.model.load_state_dict(state, strict=True)
        self.model.eval().requires_grad_(False)

    def forward_model(self, audio: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.model(audio)
