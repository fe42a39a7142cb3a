"""``foley export``: turn ``foley fit`` checkpoints (or an old bundle) into a model folder.

A few-step student's checkpoint (``configs/distill/fewstep.yaml``) becomes a copy of its
teacher's model folder holding the student, with the student's generation defaults.
A LoRA run's checkpoint (``configs/finetune/lora.yaml``) becomes an adapter folder
(:mod:`foley.adapters.folder`), or with ``--merge`` a standalone model folder of the base it
was trained from with the adapter folded in; ``--model M --adapter A --merge`` does the same
from folders.

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
    model: str | None = None,
    adapter: str | None = None,
    merge: bool = False,
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
        model: a model folder (or Hub id) to start from instead of checkpoints, with ``adapter``.
        adapter: an adapter folder to fold into ``model`` (needs ``merge``).
        merge: fold the adapter (of a LoRA checkpoint, or ``adapter``) into the base weights and
            write a standalone model folder; without it a LoRA checkpoint is written as an adapter folder.
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
    from foley.adapters.folder import load_adapter, merge_adapters
    from foley.pipeline import FoleyPipeline

    kind = _checkpoint_kind(flow_ckpt) if flow_ckpt is not None else None
    generation = dict(sampler=sampler, steps=steps, cfg=cfg, negative_prompt=negative_prompt)
    if kind == "distilled":
        return _export_distilled_checkpoint(Path(out), flow_ckpt, stereo_ckpt, overwrite, store_encoders, generation)
    if kind == "adapter":
        return _export_lora_checkpoint(Path(out), flow_ckpt, stereo_ckpt, merge, overwrite, store_encoders, generation)
    if model is not None:
        if flow_ckpt or stereo_ckpt or codec_ckpt or bundle:
            raise ValueError("give either --model (with --adapter --merge) or checkpoints/--bundle, not both")
        if adapter is None or not merge:
            raise ValueError("--model is exported with an adapter folded in: pass --adapter ADAPTER_DIR --merge")
        pipeline = FoleyPipeline.from_pretrained(model)
        load_adapter(pipeline, adapter)
        merge_adapters(pipeline)
    elif adapter is not None or merge:
        raise ValueError("--merge folds an adapter into a model: pass --model MODEL_DIR --adapter ADAPTER_DIR, or "
                         "--flow_ckpt of a LoRA run (configs/finetune/lora.yaml)")
    elif bundle is not None:
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


def _checkpoint_kind(path: str) -> str:
    """``"adapter"`` (a LoRA run), ``"distilled"`` (a few-step student) or ``"stage2"``, from its hyper-parameters."""
    import torch

    hparams = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters") or {}
    if hparams.get("adapter"):
        return "adapter"
    return "distilled" if hparams.get("distillation") is not None else "stage2"


def _base_with_network(base: str, network: object, stereo_ckpt: str | None, generation: dict, out: Path,
                       overwrite: bool, store_encoders: bool) -> Path:
    """The ``init_from`` model folder ``base`` with its generator replaced by ``network``, written to ``out``."""
    from foley.pipeline import FoleyPipeline

    pipeline = FoleyPipeline.from_pretrained(base)
    if stereo_ckpt is not None:
        from foley.stages.stereo_module import StereoModule

        pipeline.stereo = StereoModule.from_checkpoint(stereo_ckpt, codec=pipeline.flow.codec).eval()
    pipeline.flow.network = network
    pipeline.set_generation_params(**generation)
    return pipeline.save_pretrained(out, overwrite=overwrite, store_encoders=store_encoders)


def _export_distilled_checkpoint(out: Path, flow_ckpt: str, stereo_ckpt: str | None, overwrite: bool,
                                 store_encoders: bool, generation: dict) -> Path:
    """A few-step student's checkpoint as a copy of its teacher's model folder holding the student.

    The stored defaults are the student's (plain Euler, its largest step count, no guidance pass)
    unless given.
    """
    import copy

    from foley.stages.distill_module import DistillModule

    student = DistillModule.load_from_checkpoint(flow_ckpt, map_location="cpu", weights_only=True)
    defaults = {"sampler": "euler", "steps": student.sample_steps, "cfg": 1.0}
    defaults.update({k: v for k, v in generation.items() if v is not None})
    network = copy.deepcopy(student.inference_network).requires_grad_(False)
    folder = _base_with_network(str(student.hparams["init_from"]), network, stereo_ckpt, defaults, out, overwrite,
                                store_encoders)
    logger.info("exported %s: the %s-step student of %s (%s); use it with `foley generate VIDEOS --model %s --out OUT`",
                folder, student.distillation.student_steps, student.hparams["init_from"], flow_ckpt, folder)
    return folder


def _export_lora_checkpoint(out: Path, flow_ckpt: str, stereo_ckpt: str | None, merge: bool, overwrite: bool,
                            store_encoders: bool, generation: dict) -> Path:
    """A LoRA run's checkpoint as an adapter folder, or merged into its base as a model folder."""
    import copy

    from foley.adapters.folder import save_adapter
    from foley.adapters.lora import merge_lora
    from foley.stages.flow_module import FlowModule

    flow = FlowModule.load_from_checkpoint(flow_ckpt, map_location="cpu", weights_only=True)
    base = flow.hparams.get("init_from")
    if not merge:
        if stereo_ckpt is not None:
            raise ValueError("an adapter folder holds the generator's adapter only; leave out --stereo_ckpt (or --merge)")
        folder = save_adapter(out, {"generator": flow.inference_network}, flow.adapter_fingerprints(),
                              overwrite=overwrite, trained_from=str(base))
        logger.info("exported the adapter %s; use it with `foley generate VIDEOS --model %s --adapter %s --out OUT`",
                    folder, base, folder)
        return folder
    network = merge_lora(copy.deepcopy(flow.inference_network)).requires_grad_(False)
    folder = _base_with_network(str(base), network, stereo_ckpt, generation, out, overwrite, store_encoders)
    logger.info("exported %s (%s with the adapter of %s merged)", folder, base, flow_ckpt)
    return folder
