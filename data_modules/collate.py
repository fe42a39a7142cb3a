"""Batching decoded examples into the batch dict of docs/architecture.md §2."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["collate_examples", "describe_batch"]


def _pad_stack(tensors: list[torch.Tensor], dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad tensors along ``dim`` to the longest and stack; return (stacked, mask)."""
    lengths = [t.shape[dim] for t in tensors]
    longest = max(lengths)
    shape = list(tensors[0].shape)
    shape[dim] = longest
    out = tensors[0].new_zeros((len(tensors), *shape))
    mask = torch.zeros((len(tensors), longest), dtype=torch.bool)
    for row, (tensor, length) in enumerate(zip(tensors, lengths)):
        out[row].narrow(dim, 0, length).copy_(tensor)
        mask[row, :length] = True
    return out, mask


def _pad_any(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors of equal rank, zero-padding every dimension to the largest size."""
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    if len({t.ndim for t in tensors}) != 1:
        raise ValueError(f"cannot batch tensors of different ranks: {[tuple(t.shape) for t in tensors]}")
    shape = [max(sizes) for sizes in zip(*(t.shape for t in tensors))]
    out = tensors[0].new_zeros((len(tensors), *shape))
    for row, tensor in enumerate(tensors):
        out[(row, *(slice(0, s) for s in tensor.shape))] = tensor
    return out


_FIXED_KEYS = {"audio", "clip_frames", "sync_frames", "caption", "seconds_start", "seconds_total", "key", "meta"}


def collate_examples(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch examples from :func:`decode_sample`, padding to the longest (architecture §2)."""
    audio, audio_mask = _pad_stack([e["audio"] for e in examples], dim=1)
    batch: dict[str, Any] = {
        "audio": audio,
        "audio_mono": audio.mean(dim=1),
        "audio_mask": audio_mask,
    }
    for name, mask_name in (("clip_frames", "clip_mask"), ("sync_frames", "sync_mask")):
        if name in examples[0]:
            batch[name], batch[mask_name] = _pad_stack([e[name] for e in examples], dim=0)
    batch["caption"] = [e["caption"] for e in examples]
    batch["seconds_start"] = torch.tensor([e["seconds_start"] for e in examples], dtype=torch.float32)
    batch["seconds_total"] = torch.tensor([e["seconds_total"] for e in examples], dtype=torch.float32)
    batch["key"] = [e["key"] for e in examples]
    batch["meta"] = [e["meta"] for e in examples]
    extras = sorted({k for e in examples for k in e} - _FIXED_KEYS)
    for name in extras:
        values = [e.get(name) for e in examples]
        if any(v is None for v in values):
            raise ValueError(f"precomputed member {name!r} is missing in some samples of the batch: {batch['key']}")
        batch[name] = _pad_any(values)
    return batch


def describe_batch(batch: dict[str, Any]) -> str:
    """Human-readable summary of a batch: one line per field with shape, dtype and range."""
    lines = []
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            text = f"{name:14s} {str(value.dtype).removeprefix('torch.'):8s} {tuple(value.shape)}"
            if value.numel() and value.dtype != torch.bool:
                text += f"  min {value.min().item():.4g}  max {value.max().item():.4g}"
            elif value.numel():
                text += f"  true {value.float().mean().item():.1%}"
            lines.append(text)
        elif name == "meta":
            counts = [len(m.get("events", [])) for m in value]
            lines.append(f"{name:14s} list[{len(value)}] of dicts; events per sample {counts}")
        elif isinstance(value, list):
            shown = ", ".join(repr(v)[:40] for v in value[:3]) + (", ..." if len(value) > 3 else "")
            lines.append(f"{name:14s} list[{len(value)}]: {shown}")
        else:
            lines.append(f"{name:14s} {value!r}")
    return "\n".join(lines)
