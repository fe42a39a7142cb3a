"""Batching decoded examples into the batch dict of docs/architecture.md §2.

The constructor itself is :func:`foley.batch.collate_examples`, shared with the pipeline's
generation windows; it is re-exported here as the loaders' ``collate_fn``.
"""

from __future__ import annotations

from typing import Any

import torch

from foley.batch import collate_examples

__all__ = ["collate_examples", "describe_batch"]


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
