"""The audio-visual Synchformer offset classifier, for DeSync
(:class:`foley.metrics.desync.DeSync`).

Module tree and parameter names reproduce the full AV model of av-benchmark (manifest
``synchformer_av.json``: 513 keys, loaded strictly from ``synchformer_state_dict.pth``):

* ``vfeat_extractor``: the MotionFormer visual branch (shared with the conditioning
  encoder, :class:`foley.encoders.synchformer.MotionFormer`): a 16-frame 224² segment →
  8 tokens.
* ``afeat_extractor``: an Audio Spectrogram Transformer (our own, with the parameter names
  of the HF 4.x ``ASTModel``: transformers 5 renamed them; 12×6 patches of a 128×66 log-mel) whose 12 frequency patches per time step are pooled
  by a pre-norm transformer layer with a CLS token → 6 tokens per 0.64 s segment.
* ``vproj``/``aproj`` and a 3-layer pre-LN transformer over
  ``[OFF, 14×8 video, MOD, 14×6 audio]``; the OFF position's output classifies the offset
  into 21 classes from −2 s to +2 s.

Preprocessing (manifest): audio mono at 16 kHz, 0.64 s segments every 0.32 s, torchaudio
mel (n_fft 1024, win 400, hop 160, 128 HTK bands, power 2), ``ln(x + 1e-6)``, zero-padded
to 66 frames, normalised as ``(x + 4.2677393) / (2·4.5689974)``; video at 25 fps, 224²,
scaled to [0, 1] then ``(x − 0.5) / 0.5``, 16-frame segments every 8 frames. DeSync runs
the classifier on the first and the last 4.8 s (14 segments each) of the first 8 s.

The key/shape layout is checked against the manifest; the forward pass follows the
published description and has not been compared with the official implementation's
outputs (no weights were available here).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from einops import rearrange
from torch import Tensor, nn

from foley.encoders.synchformer import MotionFormer, _SpatialPool
from foley.metrics.embedders import check_weights_file, frame_count

__all__ = [
    "SynchformerAV",
    "synchformer_audio_segments",
    "synchformer_video_segments",
    "synchformer_av_from_file",
    "SYNCHFORMER_FILE",
    "SYNCHFORMER_URL",
]

logger = logging.getLogger(__name__)

SYNCHFORMER_FILE = "synchformer_state_dict.pth"
SYNCHFORMER_URL = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/synchformer_state_dict.pth"

AUDIO_RATE = 16000
SEGMENT_SAMPLES, SEGMENT_HOP = 10240, 5120
MEL_FRAMES = 66
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974
VIDEO_FPS, VIDEO_SIZE, SEGMENT_FRAMES, SEGMENT_STRIDE = 25.0, 224, 16, 8
WINDOW_SECONDS = 4.8


class _ASTPatchEmbeddings(nn.Module):
    def __init__(self, dim: int, patch: int, stride: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(1, dim, patch, stride=stride)


class _ASTEmbeddings(nn.Module):
    def __init__(self, dim: int, num_patches: int, patch: int, stride: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 2, dim))
        self.patch_embeddings = _ASTPatchEmbeddings(dim, patch, stride)

    def forward(self, mel: Tensor) -> Tensor:
        # (N, time, freq) -> (N, 1, freq, time) -> patches ordered frequency-major.
        patches = self.patch_embeddings.projection(mel.transpose(1, 2)[:, None]).flatten(2).transpose(1, 2)
        n = patches.shape[0]
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), self.distillation_token.expand(n, -1, -1), patches], dim=1)
        return tokens + self.position_embeddings


class _ASTSelfAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)


class _ASTDense(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, dim_out)


class _ASTAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention = _ASTSelfAttention(dim)
        self.output = _ASTDense(dim, dim)


class _ASTLayer(nn.Module):
    """Pre-LN ViT layer with the parameter names of the HF 4.x ``ASTLayer``."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention = _ASTAttention(dim)
        self.intermediate = _ASTDense(dim, hidden)
        self.output = _ASTDense(hidden, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layernorm_before(x)
        qkv = self.attention.attention
        split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(qkv.query(h)), split(qkv.key(h)), split(qkv.value(h)))
        x = x + self.attention.output.dense(rearrange(attended, "b h n d -> b n (h d)"))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class _ASTEncoder(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_ASTLayer(dim, heads, hidden, eps) for _ in range(layers))


class AST(nn.Module):
    """Audio Spectrogram Transformer (parameter names of the HF 4.x ``ASTModel`` that
    av-benchmark wraps): 16×16 patches with stride 10 of a (time, 128) log-mel.

    Args:
        dim: token width.
        layers: encoder layers.
        heads: attention heads.
        hidden: MLP width.
        max_frames: mel frames per input.
        num_mel_bins: mel bands.
        patch: patch size.
        stride: patch stride (frequency and time).
    """

    def __init__(
        self, dim: int = 768, layers: int = 12, heads: int = 12, hidden: int = 3072, max_frames: int = MEL_FRAMES,
        num_mel_bins: int = 128, patch: int = 16, stride: int = 10,
    ) -> None:
        super().__init__()
        self.freq_patches = (num_mel_bins - patch) // stride + 1
        self.time_patches = (max_frames - patch) // stride + 1
        self.embeddings = _ASTEmbeddings(dim, self.freq_patches * self.time_patches, patch, stride)
        self.encoder = _ASTEncoder(dim, layers, heads, hidden, eps=1e-12)
        self.layernorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.embeddings(mel)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AudioFeatureExtractor(nn.Module):
    """AST over one log-mel segment ``(N, 66, 128)`` → ``(N, 6, D)`` time tokens: the 12
    frequency patches of each time step are pooled by a pre-norm layer with a CLS token.

    Args:
        hidden_size: token width.
        num_layers: AST layers.
        num_heads: AST heads.
        intermediate_size: AST MLP width.
    """

    def __init__(self, hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12, intermediate_size: int = 3072) -> None:
        super().__init__()
        self.ast = AST(hidden_size, num_layers, num_heads, intermediate_size)
        self.time_patches = self.ast.time_patches
        self.freq_patches = self.ast.freq_patches
        self.freq_attn_agg = _SpatialPool(hidden_size, num_heads, intermediate_size / hidden_size)

    def forward(self, mel: Tensor) -> Tensor:
        hidden = self.ast(mel)[:, 2:]  # drop CLS and distillation tokens
        per_time = rearrange(hidden, "n (f t) d -> (n t) f d", f=self.freq_patches, t=self.time_patches)
        return rearrange(self.freq_attn_agg(per_time), "(n t) d -> n t d", t=self.time_patches)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.key, self.query, self.value, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _PositionEmbedding(nn.Module):
    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, length, dim))


class GlobalTransformer(nn.Module):
    """Offset classifier over ``[OFF, video tokens, MOD, audio tokens]`` (bidirectional:
    the OFF token at position 0 must see the whole sequence)."""

    def __init__(self, dim: int = 768, heads: int = 8, layers: int = 3, length: int = 198, num_offsets: int = 21) -> None:
        super().__init__()
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, dim))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, dim))
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.pos_emb_cfg = _PositionEmbedding(length, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.off_head = nn.Linear(dim, num_offsets)

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        b = video.shape[0]
        x = torch.cat(
            [self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(video), self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(audio)], dim=1
        )
        if x.shape[1] != self.pos_emb_cfg.pos_emb.shape[1]:
            raise ValueError(f"Synchformer expects {self.pos_emb_cfg.pos_emb.shape[1]} tokens (4.8 s windows), got {x.shape[1]}")
        x = x + self.pos_emb_cfg.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.off_head(self.ln_f(x)[:, 0])


class SynchformerAV(nn.Module):
    """The full audio-visual Synchformer (state-dict layout of ``synchformer_state_dict.pth``).

    Args:
        dim: token width of both branches.
        visual_depth: MotionFormer blocks.
        audio_layers: AST layers.
        heads: heads of both branches.
        crop_size: video frame size.
        segments: segments per window (14 for 4.8 s).
    """

    def __init__(
        self, dim: int = 768, visual_depth: int = 12, audio_layers: int = 12, heads: int = 12, crop_size: int = VIDEO_SIZE, segments: int = 14
    ) -> None:
        super().__init__()
        self.crop_size = crop_size
        self.vfeat_extractor = MotionFormer(crop_size=crop_size, dim=dim, depth=visual_depth, num_heads=heads)
        self.afeat_extractor = AudioFeatureExtractor(hidden_size=dim, num_layers=audio_layers, num_heads=heads, intermediate_size=4 * dim)
        self.vproj, self.aproj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        length = 2 + segments * (self.vfeat_extractor.num_steps + self.afeat_extractor.time_patches)
        self.transformer = GlobalTransformer(dim, heads=8, layers=3, length=length)

    def forward(self, video_segments: Tensor, audio_segments: Tensor) -> Tensor:
        """Offset logits ``(B, 21)`` from video ``(B, S, 16, 3, H, W)`` (normalised) and
        log-mel ``(B, S, 1, 128, 66)`` (normalised)."""
        b, s = video_segments.shape[:2]
        video = self.vfeat_extractor(rearrange(video_segments, "b s t c h w -> (b s) c t h w"))
        mel = rearrange(audio_segments, "b s 1 f t -> (b s) t f")
        audio = self.afeat_extractor(mel)
        video = rearrange(self.vproj(video), "(b s) t d -> b (s t) d", b=b)
        audio = rearrange(self.aproj(audio), "(b s) t d -> b (s t) d", b=b)
        return self.transformer(video, audio)


def synchformer_av_from_file(path: str | Path | None) -> SynchformerAV:
    """The official AV Synchformer from a local ``synchformer_state_dict.pth`` (a flat state
    dict or one under ``model``), loaded strictly.

    Raises:
        MissingWeightsError: ``path`` is ``None`` or not a file (the message says where the
            file is published).
    """
    path = check_weights_file(path, "Synchformer (audio-visual)", SYNCHFORMER_FILE, SYNCHFORMER_URL)
    model = SynchformerAV()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    model.load_state_dict(state, strict=True)
    return model


_MEL: dict[torch.device, nn.Module] = {}


def synchformer_audio_segments(wave: Tensor) -> Tensor:
    """16 kHz mono ``(B, N)`` → normalised log-mel segments ``(B, S, 1, 128, 66)``,
    ``S = (N − 10240) // 5120 + 1`` (14 for 4.8 s, 24 for 8 s)."""
    count = frame_count(wave.shape[-1], SEGMENT_SAMPLES, SEGMENT_HOP)
    if count == 0:
        raise ValueError(f"Synchformer needs at least {SEGMENT_SAMPLES} samples at 16 kHz, got {wave.shape[-1]}")
    segments = wave[:, : (count - 1) * SEGMENT_HOP + SEGMENT_SAMPLES].unfold(-1, SEGMENT_SAMPLES, SEGMENT_HOP)
    mel = _MEL.get(wave.device)
    if mel is None:
        mel = T.MelSpectrogram(AUDIO_RATE, n_fft=1024, win_length=400, hop_length=160, n_mels=128, mel_scale="htk").to(wave.device)
        _MEL[wave.device] = mel
    log_mel = torch.log(mel(segments.float()) + 1e-6)  # (B, S, 128, 65)
    log_mel = F.pad(log_mel, (0, MEL_FRAMES - log_mel.shape[-1]))
    return ((log_mel - MEL_MEAN) / (2 * MEL_STD))[:, :, None]


def synchformer_video_segments(frames: Tensor) -> Tensor:
    """uint8 frames ``(B, T, 3, H, W)`` at 25 fps → normalised segments ``(B, S, 16, 3, H, W)``,
    ``S = (T − 16) // 8 + 1``."""
    count = frame_count(frames.shape[1], SEGMENT_FRAMES, SEGMENT_STRIDE)
    if count == 0:
        raise ValueError(f"Synchformer needs at least {SEGMENT_FRAMES} frames, got {frames.shape[1]}")
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    x = (x - 0.5) / 0.5
    index = torch.arange(count, device=frames.device)[:, None] * SEGMENT_STRIDE + torch.arange(SEGMENT_FRAMES, device=frames.device)
    return x[:, index]
