"""open_clip image encoder for the visual-semantics condition (MetaCLIP, DFN5B-CLIP, ...)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.encoders.frames import Preprocess, Resize, prepare_images, require

__all__ = ["ClipEncoder", "CLIP_MEAN", "CLIP_STD", "create_open_clip"]

logger = logging.getLogger(__name__)

# open_clip's defaults for CLIP-family models (also MetaCLIP's values).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_SCHEMAS = ("hf-hub:", "local-dir:")


def create_open_clip(
    what: str,
    model_name: str,
    pretrained: str | None,
    checkpoint_path: str | None,
    model_config: dict[str, Any] | None,
    image_size: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build an open_clip model; returns it and its preprocessing config (mean, std, ...).

    Args:
        what: The encoder class name, for messages.
        model_name: A built-in open_clip name (``"ViT-H-14-quickgelu"``) with ``pretrained`` or
            ``checkpoint_path`` for the weights, or ``"hf-hub:org/repo"`` / ``"local-dir:DIR"``,
            which bring config and weights themselves (then both must be ``None``).
        pretrained: open_clip pretrained tag.
        checkpoint_path: Local checkpoint for a built-in ``model_name``.
        model_config: Custom open_clip config (``embed_dim``, ``vision_cfg``, ``text_cfg``,
            optional ``quick_gelu``) built with random weights; overrides the rest.
        image_size: Force the vision input size.

    Raises:
        RuntimeError: the model or its weights cannot be loaded (offline and not cached, a
            missing file); the message says what to download and where to put it.
    """
    require("open_clip_torch>=3", what)
    import open_clip

    if model_config is not None:
        config = dict(model_config)
        if image_size is not None:
            config["vision_cfg"] = {**config["vision_cfg"], "image_size": image_size}
        return open_clip.model.CLIP(**config), {"mean": CLIP_MEAN, "std": CLIP_STD}
    schema = model_name.startswith(_SCHEMAS)
    if schema and checkpoint_path is not None:
        raise ValueError(
            f"{what}: model_name {model_name!r} brings its own weights; checkpoint_path={checkpoint_path!r} "
            "cannot be combined with it (put config and weights in a folder DIR and use model_name='local-dir:DIR')"
        )
    source = None if schema else (checkpoint_path if checkpoint_path is not None else pretrained)
    try:
        model = open_clip.create_model(
            model_name, pretrained=source, force_image_size=image_size, require_pretrained=schema or source is not None
        )
    except Exception as error:  # open_clip raises several types for missing/offline weights
        if model_name.startswith("hf-hub:"):
            repo = model_name[len("hf-hub:"):]
            hint = (
                f"Offline, download the model once with network access: `huggingface-cli download {repo} "
                "open_clip_config.json open_clip_pytorch_model.bin` (or open_clip_model.safetensors where the repo "
                f"has it) from https://huggingface.co/{repo} puts the files into the Hugging Face cache "
                "($HF_HOME/hub, by default ~/.cache/huggingface/hub), where this name finds them offline; or save "
                "those two files in a folder DIR and use model_name='local-dir:DIR'."
            )
        elif model_name.startswith("local-dir:"):
            hint = "The folder must hold open_clip_config.json and the weights (open_clip_pytorch_model.bin or open_clip_model.safetensors)."
        else:
            hint = (
                f"When offline, download the weights once (open_clip.create_model({model_name!r}, "
                f"pretrained={pretrained!r}) with network access) or pass a local checkpoint file via checkpoint_path."
            )
        raise RuntimeError(
            f"{what} could not load open_clip model {model_name!r} with pretrained={pretrained!r} "
            f"checkpoint_path={checkpoint_path!r}: {error}. {hint}"
        ) from error
    return model, dict(getattr(model.visual, "preprocess_cfg", {}) or {})


class ClipEncoder(Configurable, nn.Module):
    """Frozen open_clip image tower: one L2-normalised embedding per frame.

    Only the vision tower is kept (the text tower is dropped after loading). Its state dict
    is the open_clip model's ``visual.*`` entries.

    MMAudio's frame stream is ``ClipEncoder("hf-hub:apple/DFN5B-CLIP-ViT-H-14-384",
    pretrained=None, resize="stretch", preprocess="torchvision", mean=CLIP_MEAN, std=CLIP_STD)``
    on frames at 8 fps: the whole frame resized to 384 x 384 as its ``load_video`` does, then
    ``encode_image(normalize=True)``.

    Args:
        model_name: open_clip model name, e.g. ``"ViT-H-14-quickgelu"``, or
            ``"hf-hub:org/repo"`` / ``"local-dir:DIR"`` (config and weights from there;
            ``pretrained`` is then ignored and the weights must load).
        pretrained: open_clip pretrained tag (e.g. ``"metaclip_fullcc"``); needs the weights in
            the open_clip / Hugging Face cache when offline. Ignored when ``checkpoint_path``
            is given.
        checkpoint_path: Local open_clip checkpoint file for a built-in ``model_name``.
        model_config: A custom open_clip model config (``embed_dim``, ``vision_cfg``,
            ``text_cfg``, optional ``quick_gelu``) built with random weights; for tests and
            tiny configs. Overrides ``model_name``/``pretrained``.
        image_size: Force the input size (defaults to the model's).
        frame_batch_size: Frames per forward call (bounds activation memory).
        resize: How frames of another size are fitted: ``"center"`` (short side, centre crop)
            or ``"stretch"`` (whole frame, aspect not kept). Frames of the input size are used
            as they are.
        preprocess: ``"foley"`` (normalise, then resize in float) or ``"torchvision"``
            (torchvision's uint8 ``Resize`` on the CPU, then scale and normalise: MMAudio's
            ``load_video``); see :data:`foley.encoders.frames.Preprocess`.
        mean: Per-channel mean of the [0, 1] images; ``None``: the model's preprocessing config
            (open_clip's CLIP values for ``model_config``).
        std: Per-channel standard deviation; ``None`` as for ``mean``.
    """

    def __init__(
        self,
        model_name: str = "ViT-H-14-quickgelu",
        pretrained: str | None = "metaclip_fullcc",
        checkpoint_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        image_size: int | None = None,
        frame_batch_size: int = 64,
        resize: Resize = "center",
        preprocess: Preprocess = "foley",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if resize not in ("center", "stretch") or preprocess not in ("foley", "torchvision"):
            raise ValueError(
                f"ClipEncoder: resize must be 'center' or 'stretch' and preprocess 'foley' or 'torchvision', "
                f"got {resize!r}, {preprocess!r}"
            )
        self.frame_batch_size = frame_batch_size
        self.resize, self.preprocess = resize, preprocess
        model, preprocess_cfg = create_open_clip("ClipEncoder", model_name, pretrained, checkpoint_path, model_config, image_size)
        self.visual = model.visual
        self.weights_from_file = model_config is None and (
            model_name.startswith(_SCHEMAS) or checkpoint_path is not None or pretrained is not None
        )
        size = self.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(float(v) for v in (mean if mean is not None else preprocess_cfg.get("mean", CLIP_MEAN)))
        self.std = tuple(float(v) for v in (std if std is not None else preprocess_cfg.get("std", CLIP_STD)))
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
            images = prepare_images(selected[start : start + self.frame_batch_size], self.image_size, self.mean,
                                    self.std, self.resize, self.preprocess)
            embeddings.append(F.normalize(self.visual(images.to(dtype)), dim=-1))
        if embeddings:
            out[real] = torch.cat(embeddings).to(dtype)
        return out, mask
