"""PaSST (AudioSet, 32 kHz) for FD_PaSST and KL_PaSST.

The architecture comes from the maintained ``hear21passt`` package (the code av-benchmark
uses); foley only builds it with random weights, without the package's download path, and
loads the official checkpoint from a local file. The model is the package's default
``passt_s_swa_p16_128_ap476`` (PaSST-S, 16x16 patches with stride 10, trained on
AudioSet, mAP 0.476), whose official weights are ``passt-s-f128-p16-s10-ap.476-swa.pt``.

Preprocessing follows av-benchmark (facts §4): mono, mean removed, resampled to 32 kHz and
cut or zero-padded to 10 s (320000 samples, whatever the clip length), then the package's
mel front end (128 kaldi-style mel bands, 25 ms window, 10 ms hop, pre-emphasis, log and
``(x + 4.5) / 5``) gives 1000 frames. The network returns the 527 AudioSet logits and the
768-d embedding (mean of the class and distillation tokens before the head); FD takes the
embedding, KL a softmax over the logits.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from foley.metrics.embedders import AudioEmbedder, check_weights_file

__all__ = [
    "PaSSTEmbedder",
    "build_passt",
    "load_passt_state",
    "PASST_ARCH",
    "PASST_FILE",
    "PASST_URL",
    "PASST_SAMPLE_RATE",
    "PASST_SECONDS",
]

logger = logging.getLogger(__name__)

PASST_ARCH = "passt_s_swa_p16_128_ap476"
PASST_FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"
# The URL hear21passt 0.0.26 itself downloads for PASST_ARCH (its default_cfgs table).
PASST_URL = "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/" + PASST_FILE
PASST_SAMPLE_RATE = 32000
PASST_SECONDS = 10.0

# The mel front end of hear21passt's get_basic_model (the model av-benchmark builds). The
# masking and fmin/fmax jitter settings only act in training mode; the embedder is always
# in eval mode, where the band edges are exactly fmin=0 and fmax=sr/2 - fmax_aug_range/2.
_MEL_KWARGS: dict[str, Any] = dict(
    n_mels=128, sr=PASST_SAMPLE_RATE, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
    htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000,
)


def _import_hear21passt() -> tuple[Any, Any, Any, Any]:
    try:
        import hear21passt.models.passt as passt_module
        from hear21passt.models.preprocess import AugmentMelSTFT
        from hear21passt.wrapper import PasstBasicWrapper
    except ImportError as error:  # pragma: no cover - the lock installs it
        raise ImportError(
            "PaSST needs the hear21passt package (pinned in requirements/lock.txt; "
            "pip install 'foley[eval]' or pip install hear21passt==0.0.26)."
        ) from error
    return passt_module, passt_module.get_model, AugmentMelSTFT, PasstBasicWrapper


def build_passt(arch: str = PASST_ARCH) -> nn.Module:
    """The package's wrapper (mel front end + PaSST network) with random weights.

    ``pretrained=False`` keeps the package from downloading anything; the package's
    construction chatter (it prints the whole model) goes to the debug log instead.

    Returns:
        A ``PasstBasicWrapper`` in eval mode with ``mode="all"``: its output is
        ``(B, 527 + 768)``, logits first.
    """
    passt_module, get_model, mel_cls, wrapper_cls = _import_hear21passt()
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        mel = mel_cls(**_MEL_KWARGS)
        net = get_model(arch=arch, pretrained=False, n_classes=527, in_channels=1, fstride=10, tstride=10,
                        input_fdim=128, input_tdim=998)
    logger.debug("hear21passt construction output: %d characters", len(chatter.getvalue()))
    # The package prints tensor shapes on its first forward through a module-level flag;
    # clearing it keeps evaluation logs clean and changes no computation.
    passt_module.first_RUN = False
    return wrapper_cls(mel=mel, net=net, mode="all").eval()


def load_passt_state(net: nn.Module, path: str | Path) -> None:
    """Load an official PaSST checkpoint into the package's network, strictly.

    Accepts the flat state dict of the release file, the same under a ``"model"`` or
    ``"state_dict"`` key, or a state dict of the whole wrapper (``net.``-prefixed keys).
    Old PaSST files store the patch projection as a linear layer; it is reshaped to the
    convolution as hear21passt's own loader does.

    Raises:
        RuntimeError: naming the file and the missing/unexpected keys if the layout differs.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint
    for wrapper_key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: expected a state dict (or one under 'model'), got {type(state).__name__}")
    if any(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    proj = state.get("patch_embed.proj.weight")
    expected_proj = net.patch_embed.proj.weight
    if proj is not None and proj.dim() < 4:
        state["patch_embed.proj.weight"] = proj.reshape(expected_proj.shape)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(
            f"{path}: does not match the {PASST_ARCH} layout of hear21passt ({error}). "
            f"Use the official {PASST_FILE} from {PASST_URL}."
        ) from error


class PaSSTEmbedder(AudioEmbedder):
    """PaSST-S (AudioSet) with its official weights: 768-d embedding and 527 logits.

    Args:
        weights_path: local ``passt-s-f128-p16-s10-ap.476-swa.pt``.
        seconds: cut/pad length at 32 kHz; av-benchmark always uses 10 s (the model's
            positional embedding covers 10 s; shorter inputs use its first part).
    """

    sample_rate = PASST_SAMPLE_RATE
    embedding_dim = 768
    num_classes = 527

    def __init__(self, weights_path: str | None = None, seconds: float = PASST_SECONDS) -> None:
        super().__init__(seconds)
        if seconds is None or not 0 < seconds <= PASST_SECONDS:
            raise ValueError(f"PaSST takes clips of at most {PASST_SECONDS} s (its positional embedding), got {seconds}")
        path = check_weights_file(weights_path, "PaSST (passt_s_swa_p16_128_ap476)", PASST_FILE, PASST_URL)
        self.model = build_passt()
        load_passt_state(self.model.net, path)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PaSSTEmbedder:
        """Stay in eval mode: in training mode the package's front end masks and jitters."""
        return super().train(False)

    def forward_model(self, audio: Tensor) -> tuple[Tensor, Tensor | None]:
        with warnings.catch_warnings():
            # 10 s give 1000 mel frames, the package's nominal input is 998; both make the
            # same 99 time patches, so its size-mismatch warning is expected.
            warnings.filterwarnings("ignore", message="Input image size")
            # hear21passt 0.0.26 still calls the deprecated real-valued torch.stft and
            # torch.cuda.amp.autocast; both work with torch 2.14 and are its business.
            warnings.filterwarnings("ignore", message="stft with return_complex=False")
            warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast")
            out = self.model(audio)
        return out[:, self.num_classes :], out[:, : self.num_classes]
