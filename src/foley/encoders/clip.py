"""MetaCLIP (through open_clip) image encoder for the visual-semantics condition."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.encoders.frames import frames_to_float, require, resize_center_crop

__all__ = ["ClipEncoder"]

logger = logging.getLogger(__name__)

# open_clip's defaults for CLIP-family models (also MetaCLIP's values).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoder(Configurable, nn.Module):
    """Frozen open_clip image tower: one L2-normalised embedding per frame.

    Only the vision tower is kept (the text tower is dropped after loading).

    Args:
        model_name: open_clip model name, e.g. ``"ViT-H-14-quickgelu"``.
        pretrained: open_clip pretrained tag (e.g. ``"metaclip_fullcc"``); needs the weights in
            the open_clip / Hugging Face cache when offline. Ignored when ``checkpoint_path``
            is given.
        checkpoint_path: Local open_clip checkpoint file for ``model_name``.
        model_config: A custom open_clip model config (``embed_dim``, ``vision_cfg``,
            ``text_cfg``, optional ``quick_gelu``) built with random weights; for tests and
            tiny configs. Overrides ``model_name``/``pretrained``.
        image_size: Force the input size (defaults to the model's).
        frame_batch_size: Frames per forward call (bounds activation memory).
    """

    def __init__(
        self,
        model_name: str = "ViT-H-14-quickgelu",
        pretrained: str | None = "metaclip_fullcc",
        checkpoint_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        image_size: int | None = None,
        frame_batch_size: int = 64,
    ) -> None:
        super().__init__()
        require("open_clip_torch>=3", "ClipEncoder")
        import open_clip

        self.frame_batch_size = frame_batch_size
        if model_config is not None:
            config = dict(model_config)
            if image_size is not None:
                config["vision_cfg"] = {**config["vision_cfg"], "image_size": image_size}
            model = open_clip.model.CLIP(**config)
            mean, std = CLIP_MEAN, CLIP_STD
        else:
            source = checkpoint_path if checkpoint_path is not None else pretrained
            try:
                model = open_clip.create_model(
                    model_name, pretrained=source, force_image_size=image_size, require_pretrained=source is not None
                )
            except Exception as error:  # open_clip raises several types for missing/offline weights
                raise RuntimeError(
                    f"ClipEncoder could not load open_clip model {model_name!r} with pretrained="
                    f"{pretrained!r} checkpoint_path={checkpoint_path!r}: {error}. When offline, download "
                    f"the weights once (open_clip.create_model({model_name!r}, pretrained={pretrained!r}) "
                    "with network access) or pass a local checkpoint file via checkpoint_path."
                ) from error
            preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
            mean = tuple(preprocess.get("mean", CLIP_MEAN))
            std = tuple(preprocess.get("std", CLIP_STD))
        self.visual = model.visual
        self.weights_from_file = model_config is None and (checkpoint_path is not None or pretrained is not None)
        size = self.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std = mean, std
        self.dim = int(model.visual.output_dim)
        del model
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipEncoder:
        # Frozen: stays in eval mode whatever the surrounding LightningModule does.
        return super().train(False)

    @torch.no_grad()
    def forward(self, frames: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Embed frames.

        Args:
            frames: uint8 ``(B, T, 3, H, W)``.
            mask: bool ``(B, T)``, True on real frames; padded frames are not encoded.

        Returns:
            ``(embeddings (B, T, dim) L2-normalised, zero where masked; mask (B, T))``.
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"ClipEncoder expects frames (B, T, 3, H, W), got {tuple(frames.shape)}")
        batch, total = frames.shape[:2]
        if mask is None:
            mask = torch.ones(batch, total, dtype=torch.bool, device=frames.device)
        dtype = next(self.parameters()).dtype
        out = torch.zeros(batch, total, self.dim, device=frames.device, dtype=dtype)
        real = mask.nonzero(as_tuple=True)
        selected = frames[real]
        embeddings = []
        for start in range(0, selected.shape[0], self.frame_batch_size):
            images = frames_to_float(selected[start : start + self.frame_batch_size], self.mean, self.std)
            images = resize_center_crop(images, self.image_size)
            embeddings.append(F.normalize(self.visual(images.to(dtype)), dim=-1))
        if embeddings:
            out[real] = torch.cat(embeddings).to(dtype)
        return out, mask
