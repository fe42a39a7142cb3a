"""Synchformer visual encoder (MotionFormer backbone) for the audio-visual sync condition.

A ViT over 16-frame video segments with divided space-time attention: each block first
attends over time (the same patch across the tubelet steps), then over space (all patches
of one step); a CLS token attends to everything. 2×16×16 tubelets turn a 16-frame
224×224 segment into 8 time steps × 14×14 patches. After the backbone, each time step
is pooled over its patches by a pre-norm transformer layer with its own CLS token, so a
segment yields 8 tokens. Segments are taken every 8 frames at 25 fps.

The module tree reproduces the parameter names of the official Synchformer checkpoint
(``synchformer_state_dict.pth``, keys ``vfeat_extractor.*``), so the published weights
load strictly with :meth:`SynchformerEncoder.load_checkpoint`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.encoders.frames import Preprocess, prepare_images
from foley.models.layers import MLP

__all__ = ["SynchformerEncoder", "MotionFormer", "num_segments"]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "vfeat_extractor."


def num_segments(num_frames: int, segment_length: int = 16, segment_stride: int = 8) -> int:
    """Number of segments the encoder cuts from ``num_frames`` frames.

    Clips shorter than one segment are padded to one segment (repeating the last frame).
    """
    if num_frames <= segment_length:
        return 1
    return (num_frames - segment_length) // segment_stride + 1


class _PatchEmbed2d(nn.Module):
    # Present in the official checkpoint but unused in its forward pass (the original code
    # only reads its patch count). Kept so the state dict matches key for key.
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)


class _PatchEmbed3d(nn.Module):
    def __init__(self, tubelet_frames: int, patch_size: int, dim: int) -> None:
        super().__init__()
        kernel = (tubelet_frames, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: Tensor) -> Tensor:
        # (N, 3, T, H, W) -> (N, t*h*w, D), time-major token order
        return self.proj(video).flatten(2).transpose(1, 2)


class _DividedAttention(nn.Module):
    """Attention along one factor (time or space) of the patch grid, plus a global CLS query.

    The CLS token attends to all tokens; every patch token attends to the CLS token and to
    the patches that share its position along the other factor.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, num_steps: int, patches_per_step: int, over: str) -> Tensor:
        batch = x.shape[0]
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)

        def group(tensor: Tensor) -> Tensor:
            grid = rearrange(tensor[:, :, 1:], "b h (t s) d -> b h t s d", t=num_steps, s=patches_per_step)
            if over == "time":
                return rearrange(grid, "b h t s d -> (b s) h t d")
            return rearrange(grid, "b h t s d -> (b t) h s d")

        groups = num_steps if over == "space" else patches_per_step
        q_g, k_g, v_g = group(q), group(k), group(v)
        cls_k = k[:, :, :1].repeat_interleave(groups, dim=0)
        cls_v = v[:, :, :1].repeat_interleave(groups, dim=0)
        out = F.scaled_dot_product_attention(q_g, torch.cat([cls_k, k_g], dim=2), torch.cat([cls_v, v_g], dim=2))
        if over == "time":
            out = rearrange(out, "(b s) h t d -> b h (t s) d", b=batch)
        else:
            out = rearrange(out, "(b t) h s d -> b h (t s) d", b=batch)
        out = torch.cat([cls_out, out], dim=2)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class _DividedSpaceTimeBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _DividedAttention(dim, num_heads)
        self.timeattn = _DividedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, num_steps: int, patches_per_step: int) -> Tensor:
        # Time attention first (pre-norm with norm3), then space (norm1), then the MLP (norm2):
        # the order and norm names of the original divided block.
        x = x + self.timeattn(self.norm3(x), num_steps, patches_per_step, over="time")
        x = x + self.attn(self.norm1(x), num_steps, patches_per_step, over="space")
        return x + self.mlp(self.norm2(x))


class _SpatialPool(nn.Module):
    """Pre-norm transformer encoder layer with a learned CLS token; returns the CLS output."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.linear1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.linear2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens: (N, S, D) -> (N, D)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x[:, 0]


class MotionFormer(nn.Module):
    """MotionFormer backbone with per-time-step spatial pooling (one segment → ``t`` tokens).

    Args:
        crop_size: Input height and width.
        patch_size: Spatial patch size.
        tubelet_frames: Frames per tubelet (temporal patch size).
        segment_length: Frames per segment.
        dim: Token width.
        depth: Number of divided space-time blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden size / ``dim``.
    """

    def __init__(
        self,
        crop_size: int = 224,
        patch_size: int = 16,
        tubelet_frames: int = 2,
        segment_length: int = 16,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if crop_size % patch_size or segment_length % tubelet_frames:
            raise ValueError(
                f"MotionFormer: crop_size {crop_size} must be a multiple of patch_size {patch_size} and "
                f"segment_length {segment_length} a multiple of tubelet_frames {tubelet_frames}"
            )
        self.grid = crop_size // patch_size
        self.patches_per_step = self.grid * self.grid
        self.num_steps = segment_length // tubelet_frames
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patches_per_step, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.num_steps, dim))
        self.patch_embed = _PatchEmbed2d(patch_size, dim)
        self.patch_embed_3d = _PatchEmbed3d(tubelet_frames, patch_size, dim)
        self.blocks = nn.ModuleList(_DividedSpaceTimeBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.spatial_attn_agg = _SpatialPool(dim, num_heads, mlp_ratio)
        self._init_weights()

    def _init_weights(self) -> None:
        for tensor in (self.cls_token, self.pos_embed, self.temp_embed, self.spatial_attn_agg.cls_token):
            nn.init.trunc_normal_(tensor, std=0.02)

    def forward(self, segments: Tensor) -> Tensor:
        """Encode normalised segments ``(N, 3, segment_length, H, W)`` to ``(N, t, D)``."""
        x = self.patch_embed_3d(segments)
        if x.shape[1] != self.num_steps * self.patches_per_step:
            raise ValueError(
                f"MotionFormer: got {x.shape[1]} patches from input {tuple(segments.shape)}, expected "
                f"{self.num_steps}x{self.patches_per_step}; frames must be cropped to the configured size"
            )
        # Spatial positions are tiled over time steps, temporal ones repeated per patch.
        pos = self.pos_embed[:, 1:].repeat(1, self.num_steps, 1)
        pos = pos + self.temp_embed.repeat_interleave(self.patches_per_step, dim=1)
        cls = self.cls_token.expand(x.shape[0], -1, -1) + self.pos_embed[:, :1]
        x = torch.cat([cls, x + pos], dim=1)
        for block in self.blocks:
            x = block(x, self.num_steps, self.patches_per_step)
        x = self.norm(x[:, 1:])
        per_step = rearrange(x, "n (t s) d -> (n t) s d", t=self.num_steps)
        pooled = self.spatial_attn_agg(per_step)
        return rearrange(pooled, "(n t) d -> n t d", t=self.num_steps)


class SynchformerEncoder(Configurable, nn.Module):
    """Frozen Synchformer visual encoder: uint8 frames at 25 fps → sync tokens.

    Output token ``8·s + j`` is time step ``j`` of segment ``s``; segments start every
    ``segment_stride`` frames, so the sequence advances at :attr:`token_rate` tokens per
    second (25 for the defaults; 8 s of video → 24 segments × 8 = 192 tokens).

    Args:
        checkpoint_path: Local ``synchformer_state_dict.pth`` (the full audio-visual model or
            only its visual part); loaded strictly. ``None`` keeps random weights (tests,
            tiny configs).
        fps: Frame rate the frames are sampled at.
        segment_length: Frames per segment.
        segment_stride: Frames between segment starts.
        crop_size: Frame size fed to the network (other sizes are resized and centre-cropped).
        patch_size: Spatial patch size.
        tubelet_frames: Frames per tubelet.
        dim: Token width.
        depth: Number of backbone blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP expansion.
        segment_batch_size: Segments per forward call (bounds activation memory).
        time_grid: ``False`` (default) returns the official layout, segment after segment
            (MMAudio's conditioning; overlapping segments make the flat sequence's time
            axis non-uniform). ``True`` re-grids the tokens onto real time: token ``k``
            covers frames ``[k·tf, (k+1)·tf)`` (``tf`` = frames per tubelet) and is the mean
            of the segments' tokens that cover them, so :attr:`token_rate` is exact.
        preprocess: How frames of another size than ``crop_size`` are resized (short side,
            centre crop) and scaled: ``"foley"`` (normalise, then resize in float) or
            ``"torchvision"`` (torchvision's uint8 ``Resize`` + ``CenterCrop`` on the CPU,
            then scale and normalise: MMAudio's ``load_video``); see
            :data:`foley.encoders.frames.Preprocess`. MMAudio's sync stream is
            ``SynchformerEncoder(checkpoint_path, preprocess="torchvision")`` on frames at 25 fps.
    """

    def __init__(
        self,
        checkpoint_path: str | None = None,
        fps: float = 25.0,
        segment_length: int = 16,
        segment_stride: int = 8,
        crop_size: int = 224,
        patch_size: int = 16,
        tubelet_frames: int = 2,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        segment_batch_size: int = 32,
        time_grid: bool = False,
        preprocess: Preprocess = "foley",
    ) -> None:
        super().__init__()
        if preprocess not in ("foley", "torchvision"):
            raise ValueError(f"SynchformerEncoder: preprocess must be 'foley' or 'torchvision', got {preprocess!r}")
        self.preprocess = preprocess
        if time_grid and (segment_stride % tubelet_frames or segment_length % tubelet_frames):
            raise ValueError("time_grid needs segment_length and segment_stride to be multiples of tubelet_frames")
        self.fps = fps
        self.time_grid = time_grid
        self.tubelet_frames = tubelet_frames
        self.segment_length = segment_length
        self.segment_stride = segment_stride
        self.crop_size = crop_size
        self.dim = dim
        self.segment_batch_size = segment_batch_size
        self.vfeat_extractor = MotionFormer(
            crop_size=crop_size,
            patch_size=patch_size,
            tubelet_frames=tubelet_frames,
            segment_length=segment_length,
            dim=dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        self.tokens_per_segment = self.vfeat_extractor.num_steps
        self.weights_from_file = checkpoint_path is not None
        if checkpoint_path is not None:
            self.load_checkpoint(checkpoint_path)
        self.requires_grad_(False)
        self.eval()

    @property
    def token_rate(self) -> float:
        """Sync tokens per second of video (for aligned RoPE)."""
        if self.time_grid:
            return self.fps / self.tubelet_frames
        return self.fps * self.tokens_per_segment / self.segment_stride

    def num_tokens(self, num_frames: int) -> int:
        """Tokens produced for ``num_frames`` frames."""
        segments = num_segments(num_frames, self.segment_length, self.segment_stride)
        if self.time_grid:
            return (segments - 1) * (self.segment_stride // self.tubelet_frames) + self.tokens_per_segment
        return segments * self.tokens_per_segment

    def train(self, mode: bool = True) -> SynchformerEncoder:
        # Frozen: stays in eval mode whatever the surrounding LightningModule does.
        return super().train(False)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load official Synchformer weights from a local file (strict).

        Accepts the flat ``synchformer_state_dict.pth`` (full audio-visual model; only the
        ``vfeat_extractor.*`` keys are kept) or an original release checkpoint that nests the
        state dict under ``"model"``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Synchformer checkpoint {path} does not exist. Download synchformer_state_dict.pth "
                "(MMAudio release v0.1) and pass its local path as checkpoint_path."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise ValueError(f"Synchformer checkpoint {path}: expected a state dict, got {type(state).__name__}")
        visual = {key: value for key, value in state.items() if key.startswith(CHECKPOINT_PREFIX)}
        if not visual:
            raise ValueError(
                f"Synchformer checkpoint {path} has no '{CHECKPOINT_PREFIX}*' keys "
                f"(first keys: {list(state)[:5]}); is it a Synchformer checkpoint?"
            )
        expected = self.state_dict()
        wrong = [f"{k}: file {tuple(v.shape)}, encoder {tuple(expected[k].shape)}" for k, v in visual.items()
                 if k in expected and v.shape != expected[k].shape]
        if wrong:
            raise ValueError(
                f"Synchformer checkpoint {path} does not match the encoder configuration: {len(wrong)} tensors of "
                f"another shape ({'; '.join(wrong[:4])}); is dim/depth/patch_size/crop_size the file's?"
            )
        result = self.load_state_dict(visual, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"Synchformer checkpoint {path} does not match the encoder configuration: "
                f"missing {result.missing_keys[:8]} ({len(result.missing_keys)}), "
                f"unexpected {result.unexpected_keys[:8]} ({len(result.unexpected_keys)})"
            )
        logger.info("Loaded Synchformer visual weights (%d tensors) from %s", len(visual), path)

    def segment(self, frames: Tensor) -> Tensor:
        """Cut ``(B, T, ...)`` frames into ``(B, S, segment_length, ...)`` overlapping segments."""
        total = frames.shape[1]
        if total < self.segment_length:
            pad = frames[:, -1:].expand(-1, self.segment_length - total, *frames.shape[2:])
            frames = torch.cat([frames, pad], dim=1)
        count = num_segments(total, self.segment_length, self.segment_stride)
        starts = torch.arange(count, device=frames.device) * self.segment_stride
        index = starts[:, None] + torch.arange(self.segment_length, device=frames.device)[None]
        return frames[:, index]

    @torch.no_grad()
    def forward(self, frames: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode frames.

        Args:
            frames: uint8 ``(B, T, 3, H, W)`` at :attr:`fps`.
            mask: bool ``(B, T)``, True on real frames.

        Returns:
            ``(tokens (B, S·t, dim), token_mask (B, S·t))``; a token is real when every frame
            of its segment is real.
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"SynchformerEncoder expects frames (B, T, 3, H, W), got {tuple(frames.shape)}")
        batch, total = frames.shape[:2]
        segments = self.segment(frames)  # (B, S, L, 3, H, W)
        count = segments.shape[1]
        flat = segments.flatten(0, 1)
        outputs = []
        for start in range(0, flat.shape[0], self.segment_batch_size):
            chunk = flat[start : start + self.segment_batch_size]
            n, length = chunk.shape[:2]
            images = prepare_images(chunk.flatten(0, 1), self.crop_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center",
                                    self.preprocess)
            video = images.view(n, length, 3, self.crop_size, self.crop_size).transpose(1, 2)
            dtype = next(self.parameters()).dtype
            outputs.append(self.vfeat_extractor(video.to(dtype)))
        tokens = torch.cat(outputs).view(batch, count * self.tokens_per_segment, -1)
        if mask is None:
            lengths = torch.full((batch,), total, device=frames.device)
        else:
            lengths = mask.sum(dim=1)
        valid_segments = torch.where(
            lengths >= self.segment_length,
            (lengths - self.segment_length).div(self.segment_stride, rounding_mode="floor") + 1,
            (lengths > 0).long(),
        )
        segment_mask = torch.arange(count, device=frames.device)[None] < valid_segments[:, None]
        token_mask = segment_mask.repeat_interleave(self.tokens_per_segment, dim=1)
        tokens = tokens * token_mask[..., None].to(tokens.dtype)
        if self.time_grid:
            return self._regrid(tokens, token_mask, count)
        return tokens, token_mask

    def _regrid(self, tokens: Tensor, token_mask: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """Averages the overlapping segments' tokens onto one token per tubelet of real time."""
        per_segment = self.tokens_per_segment
        step = self.segment_stride // self.tubelet_frames
        grid = (torch.arange(count, device=tokens.device)[:, None] * step
                + torch.arange(per_segment, device=tokens.device)[None]).flatten()
        size = (count - 1) * step + per_segment
        weights = token_mask.to(tokens.dtype)
        summed = tokens.new_zeros(tokens.shape[0], size, tokens.shape[-1]).index_add_(1, grid, tokens * weights[..., None])
        counts = weights.new_zeros(tokens.shape[0], size).index_add_(1, grid, weights)
        return summed / counts.clamp_min(1.0)[..., None], counts > 0
