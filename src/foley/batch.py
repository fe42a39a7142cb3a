"""The batch dict every stage consumes (docs/architecture.md §2), built in one place.

:func:`collate_examples` is the only constructor: the DataModule's loaders use it as their
``collate_fn`` and :class:`foley.pipeline.FoleyPipeline` builds its generation windows with
it, so stages read one field set and need no fallbacks for hand-made batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["collate_examples"]


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


def _sample_mask(counts: list[int]) -> torch.Tensor:
    """``(B, max(counts))`` True on each row's first ``counts[row]`` samples."""
    return torch.arange(max(counts))[None] < torch.tensor(counts)[:, None]


_FIXED_KEYS = {"audio", "num_samples", "clip_frames", "sync_frames", "caption", "seconds_start", "seconds_total", "key", "meta"}


def collate_examples(examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch examples into the dict of docs/architecture.md §2, padding to the longest.

    Each example holds ``caption`` (str), ``seconds_start`` and ``seconds_total`` (float),
    ``key`` (str), ``meta`` (dict) and either

    - ``audio``: float ``(2, n)`` target (training and evaluation, e.g. from
      :func:`foley.data_modules.decoding.decode_sample`), giving ``audio``, ``audio_mono`` and
      ``audio_mask``; or
    - ``num_samples``: the length ``n`` of audio to generate (no target), giving ``audio_mask``
      only.

    Optional ``clip_frames`` / ``sync_frames`` uint8 ``(T, 3, H, W)`` give the frame streams and
    their masks (in every example or none). Any other member (precomputed features of
    ``foley extract``) is passed through, zero-padded to the largest size per dimension.

    Raises:
        ValueError: a precomputed member is missing in some examples, or its examples have
            different ranks.
    """
    batch: dict[str, Any] = {}
    if "audio" in examples[0]:
        audio, audio_mask = _pad_stack([e["audio"] for e in examples], dim=1)
        batch.update({"audio": audio, "audio_mono": audio.mean(dim=1), "audio_mask": audio_mask})
    else:
        batch["audio_mask"] = _sample_mask([int(e["num_samples"]) for e in examples])
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
