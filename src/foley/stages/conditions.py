"""Stage-2 conditions: encoding a batch's video and text, CFG flags, and feature provenance.

:class:`~foley.stages.flow_module.FlowModule` calls these; they live apart from its training
and sampling code because they change for other reasons (new encoders, new precomputed
members of ``foley extract`` shards, new provenance rules).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Conditions", "MODALITIES", "encode_conditions", "drop_flags", "unconditional",
    "encoder_fingerprints", "check_feature_provenance", "check_feature_crop",
]

Conditions = dict[str, Tensor | None]
MODALITIES = ("clip", "sync", "text")


def _checked(features: Tensor | None, mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    if features is None or features.shape[1] == 0:
        # e.g. a clip shorter than one CLIP frame: treat the modality as absent.
        return None, None
    if mask is None:
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return features.float(), mask.bool()


def encode_conditions(batch: Mapping[str, Any], clip_encoder: nn.Module | None, sync_encoder: nn.Module | None,
                      text_encoder: nn.Module | None) -> Conditions:
    """CLIP / sync / text features and masks of a batch (precomputed ones when present).

    Args:
        batch: Batch dict of docs/architecture.md §2, possibly with ``*_features`` members.
        clip_encoder: Frozen CLIP frame encoder, or ``None``.
        sync_encoder: Frozen Synchformer encoder, or ``None``.
        text_encoder: Frozen T5 encoder, or ``None``.

    Returns:
        ``{"clip", "clip_mask", "sync", "sync_mask", "text", "text_mask"}``; a modality
        without features or encoder is ``None``.
    """
    out: Conditions = {}
    with torch.no_grad():
        for name, frames_key, mask_key, encoder in (
            ("clip", "clip_frames", "clip_mask", clip_encoder),
            ("sync", "sync_frames", "sync_mask", sync_encoder),
        ):
            features, mask = None, None
            if f"{name}_features" in batch:
                features, mask = batch[f"{name}_features"], batch.get(f"{name}_features_mask")
            elif encoder is not None and frames_key in batch:
                features, mask = encoder(batch[frames_key], batch[mask_key])
            out[name], out[f"{name}_mask"] = _checked(features, mask)
        features, mask = None, None
        if "text_features" in batch:
            features, mask = batch["text_features"], batch.get("text_features_mask")
        elif text_encoder is not None and "caption" in batch:
            features, mask = text_encoder(list(batch["caption"]))
        out["text"], out["text_mask"] = _checked(features, mask)
    return out


def drop_flags(conditions: Conditions, dropout: Tensor | None = None) -> dict[str, Tensor | None]:
    """Per-modality ``drop_*`` flags: dropped by CFG dropout, or no real token at all.

    Args:
        conditions: Output of :func:`encode_conditions`.
        dropout: ``(len(MODALITIES), B)`` bool, True where CFG dropout drops a modality.
    """
    flags: dict[str, Tensor | None] = {}
    for index, name in enumerate(MODALITIES):
        mask = conditions[f"{name}_mask"]
        if mask is None:
            flags[f"drop_{name}"] = None
            continue
        drop = ~mask.any(dim=1)
        if dropout is not None:
            drop = drop | dropout[index].to(drop.device)
        flags[f"drop_{name}"] = drop
    return flags


def unconditional(conditions: Conditions, common: dict[str, Tensor], negative_prompt: str | list[str] | None,
                  batch_size: int, text_encoder: nn.Module | None) -> dict[str, Any]:
    """Network keyword arguments of the unconditional CFG branch.

    Every present modality is dropped (its learned placeholder stands in), unless a
    ``negative_prompt`` replaces the text placeholder by that prompt's features.

    Args:
        conditions: The conditional branch's conditions (on the sampling device).
        common: ``seconds_start``, ``seconds_total`` and ``audio_mask`` shared by both branches.
        negative_prompt: One prompt for the batch or one per sample, or ``None``.
        batch_size: Number of samples.
        text_encoder: Encoder of ``negative_prompt``.

    Raises:
        ValueError: a negative prompt without a text encoder, with the wrong number of
            entries, or with another token count than the captions.
    """
    device = common["seconds_total"].device
    all_dropped = torch.ones(batch_size, dtype=torch.bool, device=device)
    uncond: dict[str, Any] = {**common, **conditions}
    for name in MODALITIES:
        uncond[f"drop_{name}"] = all_dropped if conditions[name] is not None else None
    if negative_prompt is not None:
        if text_encoder is None:
            raise ValueError("negative_prompt needs a text encoder; this FlowModule has text_encoder=None")
        prompts = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(prompts) != batch_size:
            raise ValueError(f"negative_prompt has {len(prompts)} entries for a batch of {batch_size}")
        text, text_mask = text_encoder(prompts)
        uncond["text"], uncond["text_mask"] = text.float().to(device), text_mask.to(device)
        uncond["drop_text"] = ~uncond["text_mask"].any(dim=1)
        if conditions["text"] is not None and conditions["text"].shape[1] != text.shape[1]:
            raise ValueError("negative prompt and caption features have different token counts")
    return uncond


# ------------------------------------------------------------------ provenance
def encoder_fingerprints(modules: Mapping[str, nn.Module | None]) -> dict[str, str]:
    """Weight fingerprints of the given frozen modules (``None`` entries are left out)."""
    from foley.encoders.fingerprint import weights_fingerprint

    return {name: weights_fingerprint(m) for name, m in modules.items() if m is not None}


def check_feature_provenance(batch: Mapping[str, Any], fingerprints: Callable[[], Mapping[str, str]]) -> None:
    """Precomputed features must come from the model's own frozen encoders: generation
    encodes the video with them, so features from other weights (another checkpoint, or
    tiny encoders initialised from another seed) train a model that fails at inference.

    Args:
        batch: Batch whose ``meta[i]["extracted"]["encoders"]`` records the fingerprints
            ``foley extract`` used.
        fingerprints: Returns the model's fingerprints (:func:`encoder_fingerprints`); called only
            when the batch records some, because hashing large encoders takes a while.

    Raises:
        ValueError: a precomputed member was extracted with other weights.
    """
    metas = batch.get("meta") or []
    recorded = next((m["extracted"]["encoders"] for m in metas if (m or {}).get("extracted", {}).get("encoders")), None)
    if recorded is None:
        return
    present = {"codec": "latent" in batch, **{name: f"{name}_features" in batch for name in ("clip", "sync", "text")}}
    own = fingerprints()
    wrong = [name for name, used in present.items() if used and name in recorded and name in own and recorded[name] != own[name]]
    if wrong:
        key = batch.get("key", ["?"])[0]
        raise ValueError(
            f"sample {key!r}: its precomputed {', '.join(wrong)} features were extracted with different "
            f"weights than this model's {', '.join(wrong)} (fingerprints {[recorded[n] for n in wrong]} vs "
            f"{[own[n] for n in wrong]}); generation would encode videos differently from training. Re-run "
            "`foley extract` with this same config, checkpoints and seed_everything"
        )


def check_feature_crop(batch: Mapping[str, Any]) -> None:
    """Precomputed features cover whole extracted clips; the audio crop must be that clip.

    Raises:
        ValueError: the DataModule cropped a feature-shard sample.
    """
    if "latent" not in batch:
        return
    starts = batch["seconds_start"].tolist()
    totals = batch["seconds_total"].tolist()
    metas = batch.get("meta") or [{}] * len(totals)
    for key, start, total, meta in zip(batch.get("key", [""] * len(totals)), starts, totals, metas):
        extracted = (meta or {}).get("extracted", {}).get("seconds", total)
        if start > 0 or abs(extracted - total) > 1e-3:
            raise ValueError(
                f"sample {key!r}: precomputed features cover the whole extracted clip ({extracted:.3f} s) "
                f"but the DataModule cropped {total:.3f} s from {start:.3f} s; read feature shards with "
                "clip_seconds at least as long as the extracted clips, min_seconds: null and load_video: false"
            )
