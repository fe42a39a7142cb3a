"""``foley export``: turn ``foley fit`` checkpoints (or an old bundle) into a model folder.

The folder (:mod:`foley.model_folder`) is what ``FoleyPipeline.from_pretrained`` and
``foley generate --model`` read, locally or after uploading it as a Hugging Face Hub repo.
Checkpoints are read with ``torch.load(weights_only=True)``; the folder holds JSON and
safetensors only. It is written to a temporary sibling and renamed into place.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

__all__ = ["export"]

logger = logging.getLogger(__name__)


def export(
    out: Path,
    flow_ckpt: str | None = None,
    stereo_ckpt: str | None = None,
    codec_ckpt: str | None = None,
    bundle: str | None = None,
    overwrite: bool = False,
    store_encoders: bool = False,
    steps: int | None = None,
    cfg: float | None = None,
    sampler: Literal["euler", "midpoint", "heun"] | None = None,
    negative_prompt: str | None = None,
) -> Path:
    """Write a model folder from the stage-2 and stage-3 checkpoints (or from an old bundle).

    The generation defaults stored with the model are the stage-2 module's (``sample_steps``,
    ``cfg_strength``, ``sampler``) unless given here.

    Args:
        out: the model folder to write; must not exist or be empty unless ``overwrite``.
        flow_ckpt: stage-2 checkpoint from ``foley fit --config configs/stage2.yaml``.
        stereo_ckpt: stage-3 checkpoint from ``foley fit --config configs/stage3.yaml``.
        codec_ckpt: stage-1 checkpoint, if it moved since stage 2 was trained.
        bundle: an old one-file pipeline bundle to convert instead of checkpoints.
        overwrite: replace an existing non-empty folder.
        store_encoders: also store copies (safetensors) of frozen encoders loaded from their own
            files (MetaCLIP, Synchformer, T5 weights); by default they are kept as references.
        steps: default sampler steps to store.
        cfg: default guidance strength to store.
        sampler: default ODE method to store.
        negative_prompt: default negative prompt to store.

    Returns:
        The folder written.
    """
    from foley.pipeline import FoleyPipeline

    if bundle is not None:
        if flow_ckpt or stereo_ckpt or codec_ckpt:
            raise ValueError("give either --bundle or the stage checkpoints (--flow_ckpt, --stereo_ckpt), not both")
        pipeline = FoleyPipeline.from_bundle(bundle)
    elif flow_ckpt is not None and stereo_ckpt is not None:
        pipeline = FoleyPipeline.from_checkpoints(flow_ckpt, stereo_ckpt, codec_ckpt)
    else:
        raise ValueError("nothing to export: pass --flow_ckpt STAGE2.ckpt and --stereo_ckpt STAGE3.ckpt (or --bundle OLD.pt)")
    pipeline.set_generation_params(sampler=sampler, steps=steps, cfg=cfg, negative_prompt=negative_prompt)
    folder = pipeline.save_pretrained(out, overwrite=overwrite, store_encoders=store_encoders)
    logger.info(
        "exported %s; use it with `foley generate VIDEOS --model %s --out OUT`, or in Python: "
        "FoleyPipeline.from_pretrained(%r)", folder, folder, str(folder),
    )
    return folder
