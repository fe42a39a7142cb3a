"""ImageBind (huge) audio and vision encoders for the IB-score
(:class:`foley.metrics.ib_score.ImageBindScore`).

No maintained package provides ImageBind (PyPI's ``imagebind`` 0.0.1.dev0 is an empty
placeholder), so this is foley's own implementation of the two branches the IB-score needs.
Its module tree reproduces the parameter names of the official ``imagebind_huge.pth``
(``modality_preprocessors.{vision,audio}``, ``modality_trunks.*``, ``modality_heads.*``,
``modality_postprocessors.audio``), so the official file loads strictly after its text,
depth, thermal and IMU entries are dropped (checked against
``tests/manifests/imagebind_huge_audio_vision.json``).

Architecture (ImageBind-huge):

- vision: a single image is repeated to 2 frames; a bias-free Conv3d with kernel and stride
  (2, 14, 14) makes 16x16 patches of width 1280; a class token and a learned positional
  embedding (257 positions) are added; a LayerNorm (eps 1e-6) precedes 32 pre-norm
  transformer blocks (16 heads, MLP x4, GELU);
- audio: a 128x204 log-mel image is cut into 16x16 patches with stride 10 (12 x 19 = 228) by
  a bias-free Conv2d of width 768 followed by a LayerNorm; class token and positional
  embedding (229 positions); 12 blocks with 12 heads whose attention has learned key/value
  bias tokens (``add_bias_kv``);
- each head is a LayerNorm (eps 1e-6) on the class token and a bias-free projection to 1024;
  embeddings are L2-normalised (audio then scaled by a fixed logit scale of 20). A clip made
  of several crops or time windows is the mean of its normalised window embeddings.

Preprocessing (ImageBind's ``data.py``, av-benchmark's IB-score):

- audio: 16 kHz, three 2 s windows spread over the clip
  (:func:`foley.metrics.embedders.imagebind_clip_starts`), each mean-removed, 128-bin kaldi
  fbank (25 ms Hanning window, 10 ms shift, HTK-compatible, no dither, no energy),
  zero-padded or cut to 204 frames and normalised as ``(x + 4.268) / 9.138``;
- vision: frames in [0, 1] resized (shorter side 224, bicubic), centre-cropped to 224 and
  normalised with the CLIP mean/std; av-benchmark takes frames at 0.5 fps and embeds every
  pair of consecutive frames as one 2-frame clip, then averages.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

from foley.metrics.embedders import AudioEmbedder, check_weights_file, imagebind_clip_starts
from foley.models.layers import MLP

__all__ = [
    "ImageBind",
    "ImageBindAudioEmbedder",
    "ImageBindVideoEmbedder",
    "imagebind_audio_clips",
    "imagebind_log_mel",
    "imagebind_frames",
    "imagebind_frame_pairs",
    "load_imagebind_state",
    "imagebind_from_file",
    "IMAGEBIND_FILE",
    "IMAGEBIND_URL",
    "IMAGEBIND_MEL_MEAN",
    "IMAGEBIND_MEL_STD",
    "CLIP_MEAN",
    "CLIP_STD",
]

logger = logging.getLogger(__name__)

IMAGEBIND_FILE = "imagebind_huge.pth"
IMAGEBIND_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
IMAGEBIND_MEL_MEAN, IMAGEBIND_MEL_STD = -4.268, 9.138
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MEL_BINS, _MEL_FRAMES = 128, 204
_MODALITIES = ("vision", "audio")


class _Block(nn.Module):
    """Pre-norm transformer block; attention is ``nn.MultiheadAttention`` (fused in-projection),
    whose parameter names the official file uses."""

    def __init__(self, dim: int, heads: int, add_bias_kv: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, pre_norm: bool, add_bias_kv: bool) -> None:
        super().__init__()
        # Index 0 of this Sequential is the pre-transformer LayerNorm of the vision trunk
        # (an identity for audio): the official key is ``pre_transformer_layer.0.*``.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity())
        self.blocks = nn.Sequential(*[_Block(dim, heads, add_bias_kv) for _ in range(depth)])

    def forward(self, tokens: Tensor) -> Tensor:
        return self.blocks(self.pre_transformer_layer(tokens))


class _RepeatToTwoFrames(nn.Module):
    """Images ``(N, C, H, W)`` or one-frame videos become 2-frame videos by repetition."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, 2, -1, -1)
        return x


class _PatchStem(nn.Module):
    def __init__(self, proj: nn.Module, norm: nn.Module | None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return tokens if self.norm_layer is None else self.norm_layer(tokens)


class _PositionalEmbedding(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))


class _Tokenizer(nn.Module):
    """Patch stem, class token and learned positional embedding of one modality."""

    def __init__(self, stem: _PatchStem, patches: int, dim: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rgbt_stem = stem
        self.pos_embedding_helper = _PositionalEmbedding(patches + 1, dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.rgbt_stem(x)
        if tokens.shape[1] + 1 != self.pos_embedding_helper.pos_embed.shape[1]:
            raise ValueError(
                f"ImageBind input gives {tokens.shape[1]} patches, the positional embedding has "
                f"{self.pos_embedding_helper.pos_embed.shape[1] - 1}: use 224x224 frames / 128x204 mels"
            )
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embedding_helper.pos_embed


class _SelectFirst(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


class _Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class _FixedLogitScale(nn.Module):
    """``min(exp(log_logit_scale), 100) * x`` with a stored (non-learned) log scale."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(float(scale)).log())

    def forward(self, x: Tensor) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=100.0) * x


class ImageBind(nn.Module):
    """The vision and audio branches of ImageBind, keyed like ``imagebind_huge.pth``.

    Defaults are ImageBind-huge; smaller values build a test-size model with the same tree.

    Args:
        vision_dim: vision width.
        vision_depth: vision blocks.
        vision_heads: vision attention heads.
        audio_dim: audio width.
        audio_depth: audio blocks.
        audio_heads: audio attention heads.
        out_dim: joint embedding width.
        image_size: vision input size (patch 14).
        mel_bins: audio mel bands.
        mel_frames: audio frames.
    """

    def __init__(
        self,
        vision_dim: int = 1280,
        vision_depth: int = 32,
        vision_heads: int = 16,
        audio_dim: int = 768,
        audio_depth: int = 12,
        audio_heads: int = 12,
        out_dim: int = 1024,
        image_size: int = 224,
        mel_bins: int = _MEL_BINS,
        mel_frames: int = _MEL_FRAMES,
    ) -> None:
        super().__init__()
        vision_stem = _PatchStem(
            nn.Sequential(_RepeatToTwoFrames(), nn.Conv3d(3, vision_dim, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=False)),
            None,
        )
        audio_stem = _PatchStem(nn.Conv2d(1, audio_dim, kernel_size=16, stride=10, bias=False), nn.LayerNorm(audio_dim))
        audio_patches = ((mel_bins - 16) // 10 + 1) * ((mel_frames - 16) // 10 + 1)
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": _Tokenizer(vision_stem, (image_size // 14) ** 2, vision_dim),
                "audio": _Tokenizer(audio_stem, audio_patches, audio_dim),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": _Trunk(vision_dim, vision_depth, vision_heads, pre_norm=True, add_bias_kv=False),
                "audio": _Trunk(audio_dim, audio_depth, audio_heads, pre_norm=False, add_bias_kv=True),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.LayerNorm(dim, eps=1e-6), _SelectFirst(), nn.Linear(dim, out_dim, bias=False))
                for name, dim in (("vision", vision_dim), ("audio", audio_dim))
            }
        )
        self.modality_postprocessors = nn.ModuleDict(
            {"vision": _Normalize(), "audio": nn.Sequential(_Normalize(), _FixedLogitScale(20.0))}
        )

    def embed(self, modality: str, x: Tensor) -> Tensor:
        """Normalised embeddings ``(N, out_dim)`` of single inputs: vision ``(N, 3, H, W)`` or
        ``(N, 3, 2, H, W)``, audio ``(N, 1, 128, 204)`` (audio also scaled by 20)."""
        tokens = self.modality_trunks[modality](self.modality_preprocessors[modality](x))
        return self.modality_postprocessors[modality](self.modality_heads[modality](tokens))

    def embed_windows(self, modality: str, x: Tensor) -> Tensor:
        """``(B, S, ...)`` windows of each clip -> ``(B, out_dim)``: the mean of the ``S``
        normalised window embeddings (ImageBind's multi-clip reduction)."""
        b, s = x.shape[:2]
        return self.embed(modality, x.flatten(0, 1)).reshape(b, s, -1).mean(dim=1)


def load_imagebind_state(model: ImageBind, path: str | Path, assign: bool = False) -> None:
    """Load the vision and audio entries of an official ImageBind file, strictly.

    The text, depth, thermal and IMU entries of ``imagebind_huge.pth`` are dropped; every
    vision/audio key of the model must be present with its shape. ``assign`` adopts the
    file's tensors (for a model built on the meta device).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: expected a state dict, got {type(state).__name__}")
    kept = {k: v for k, v in state.items() if len(k.split(".")) > 1 and k.split(".")[1] in _MODALITIES}
    logger.info("%s: %d of %d entries belong to the vision/audio branches", path, len(kept), len(state))
    try:
        model.load_state_dict(kept, strict=True, assign=assign)
    except RuntimeError as error:
        raise RuntimeError(
            f"{path}: the vision/audio entries do not match the ImageBind-huge layout ({error}). "
            f"Use the official {IMAGEBIND_FILE} from {IMAGEBIND_URL}."
        ) from error


def imagebind_from_file(path: str | Path, **sizes: int) -> ImageBind:
    """An :class:`ImageBind` (huge unless ``sizes`` say otherwise) holding the file's weights.

    The network is built on the meta device and takes the file's tensors, so the 719 M
    parameters are neither randomly initialised nor held twice while loading.
    """
    with torch.device("meta"):
        model = ImageBind(**sizes)
    load_imagebind_state(model, path, assign=True)
    return model.float()


def imagebind_log_mel(clip: Tensor) -> Tensor:
    """One 16 kHz window ``(N,)`` -> normalised kaldi fbank image ``(1, 128, 204)``."""
    fbank = kaldi.fbank(
        (clip - clip.mean())[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=_MEL_BINS,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).T
    fbank = F.pad(fbank, (0, max(0, _MEL_FRAMES - fbank.shape[1])))[:, :_MEL_FRAMES]
    return ((fbank - IMAGEBIND_MEL_MEAN) / IMAGEBIND_MEL_STD)[None]


def imagebind_audio_clips(wave: Tensor, sample_rate: int = 16000, clip: float = 2.0, clips: int = 3) -> Tensor:
    """``(B, N)`` 16 kHz audio -> ``(B, clips, 1, 128, 204)`` windows as ImageBind cuts them."""
    if sample_rate != 16000:
        raise ValueError(f"ImageBind audio windows are cut at 16 kHz, got {sample_rate}")
    seconds = wave.shape[-1] / sample_rate
    out = []
    for item in wave:
        windows = []
        for start in imagebind_clip_starts(seconds, clip, clips):
            a = int(start * sample_rate)
            b = int(min(start + clip, seconds) * sample_rate)
            windows.append(imagebind_log_mel(item[a:b].float()))
        out.append(torch.stack(windows))
    return torch.stack(out)


def imagebind_frames(frames: Tensor, size: int = 224) -> Tensor:
    """Frames ``(..., 3, H, W)`` in [0, 1] -> shorter side ``size`` (bicubic), centre crop,
    CLIP normalisation: ``(..., 3, size, size)``."""
    lead, (c, h, w) = frames.shape[:-3], frames.shape[-3:]
    x = frames.reshape(-1, c, h, w).float()
    # torchvision's Resize(size): the shorter side becomes size, the longer int(size * long / short).
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # torchvision's CenterCrop
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).reshape(*lead, c, size, size)


def imagebind_frame_pairs(frames: Tensor) -> Tensor:
    """``(B, T, 3, H, W)`` frames (0.5 fps) -> ``(B, T - 1, 3, 2, H, W)`` 2-frame clips of
    consecutive frames, as av-benchmark feeds ImageBind (a single frame is repeated)."""
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 2, -1, -1, -1)
    pairs = torch.stack([frames[:, :-1], frames[:, 1:]], dim=2)  # (B, T-1, 2, 3, H, W)
    return pairs.transpose(2, 3)


class ImageBindAudioEmbedder(AudioEmbedder):
    """ImageBind-huge audio embedding ``(B, 1024)`` (mean of three 2 s windows).

    Args:
        weights_path: local ``imagebind_huge.pth``.
        seconds: cut/pad length at 16 kHz before the windows are cut (``None``: the clip's own).
        model: use this (e.g. tiny, random) model instead of the official one; for tests.
    """

    sample_rate = 16000
    embedding_dim = 1024
    num_classes = 0

    def __init__(self, weights_path: str | None = None, seconds: float | None = None, model: ImageBind | None = None) -> None:
        super().__init__(seconds)
        if model is None:
            path = check_weights_file(weights_path, "ImageBind (huge)", IMAGEBIND_FILE, IMAGEBIND_URL)
            model = imagebind_from_file(path)
        self.model = model.eval().requires_grad_(False)
        self.embedding_dim = self.model.modality_heads["audio"][2].out_features

    def forward_model(self, audio: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.model.embed_windows("audio", imagebind_audio_clips(audio, self.sample_rate)), None


class ImageBindVideoEmbedder(nn.Module):
    """ImageBind-huge video embedding ``(B, 1024)`` from frames sampled at 0.5 fps.

    Args:
        weights_path: local ``imagebind_huge.pth``.
        model: use this (e.g. tiny, random) model instead of the official one; for tests.
    """

    def __init__(self, weights_path: str | None = None, model: ImageBind | None = None) -> None:
        super().__init__()
        if model is None:
            path = check_weights_file(weights_path, "ImageBind (huge)", IMAGEBIND_FILE, IMAGEBIND_URL)
            model = imagebind_from_file(path)
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        """``(B, T, 3, H, W)`` frames in [0, 1] at 0.5 fps -> ``(B, D)``."""
        return self.model.embed_windows("vision", imagebind_frame_pairs(imagebind_frames(frames)))
