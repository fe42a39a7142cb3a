"""Adapter folders: LoRA adapters of a model folder, applied without merging, switched and merged.

Layout (format version 1)::

    ADAPTER_DIR/
      foley_adapter.json                 format + version, the base model's weight fingerprints,
                                         the adapted components, where training started
      generator/adapter_config.json      peft's LoraConfig of the MM-DiT adapter
      generator/adapter_model.safetensors  its weights (peft's layout; the EMA weights when
                                         trained with EMA)
      codec/..., stereo/...              the same for the Mel-VAE decoder and Mono2Stereo, when adapted

Each component folder is a plain peft adapter (``PeftModel.from_pretrained(network, "ADAPTER_DIR/generator")``
reads it). An adapter only fits the base it was trained on: its recorded fingerprints (generator,
codec and frozen encoders) must equal the model's, otherwise :func:`load_adapter` refuses it and
names both.

In Python::

    pipe = FoleyPipeline.from_pretrained("demo_out/model")
    load_adapter(pipe, "bells_adapter", name="bells")      # active at once, not merged
    load_adapter(pipe, "doors_adapter", name="doors")
    use_adapter(pipe, "bells"); use_adapter(pipe, None)     # switch; None = the base model
    merge_adapters(pipe); pipe.save_pretrained("merged")    # fold the active one in (foley export --merge)
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foley.adapters.lora import (
    LoraSettings,
    adapter_names,
    add_lora,
    base_fingerprint,
    load_lora_state,
    lora_state_dict,
    merge_lora,
    set_active_adapter,
)

__all__ = ["ADAPTER_FILE", "AdapterError", "save_adapter", "load_adapter", "use_adapter", "merge_adapters",
           "model_fingerprints", "read_adapter"]

logger = logging.getLogger(__name__)

ADAPTER_FILE = "foley_adapter.json"
FORMAT = "foley-adapter"
FORMAT_VERSION = 1
COMPONENTS = ("generator", "codec", "stereo")
_PEFT_CONFIG = "adapter_config.json"
_PEFT_WEIGHTS = "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter that cannot be read or does not fit the model; the message names the file or both fingerprints."""


def _components(pipeline: Any) -> dict[str, nn.Module]:
    """The adaptable networks of a :class:`~foley.pipeline.FoleyPipeline`."""
    return {"generator": pipeline.flow.inference_network, "codec": pipeline.flow.codec, "stereo": pipeline.stereo.network}


def model_fingerprints(pipeline: Any) -> dict[str, str]:
    """Base-weight fingerprints of a pipeline's generator, codec, Mono2Stereo and frozen encoders."""
    from foley.encoders.fingerprint import weights_fingerprint

    prints = {name: base_fingerprint(module) for name, module in _components(pipeline).items()}
    for short in ("clip", "sync", "text"):
        encoder = getattr(pipeline.flow, f"{short}_encoder", None)
        if encoder is not None:
            prints[short] = weights_fingerprint(encoder)
    return prints


def save_adapter(
    out: str | os.PathLike[str],
    components: Mapping[str, nn.Module],
    base: Mapping[str, str],
    adapter: str = "default",
    overwrite: bool = False,
    trained_from: str | None = None,
) -> Path:
    """Write adapter ``adapter`` of each component as an adapter folder (layout above), atomically.

    Args:
        out: The folder; must not exist or be empty unless ``overwrite``.
        components: ``{"generator": network, ...}`` holding the adapter (:data:`COMPONENTS` names).
        base: Fingerprints of the base model (:func:`model_fingerprints` names); the components'
            own base fingerprints are added.
        adapter: Name of the adapter inside the networks.
        overwrite: Replace an existing folder.
        trained_from: The model folder training started from (recorded for people, not checked).
    """
    from safetensors.torch import save_file

    from foley.model_folder import _atomic_folder, _foley_version

    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown adapter components {unknown}; choose from {COMPONENTS}")
    out = Path(out)
    index: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "written_by": _foley_version(),
                             "base": dict(base), "components": {}, "trained_from": trained_from}
    with _atomic_folder(out, overwrite) as root:
        for name, module in components.items():
            index["base"][name] = base_fingerprint(module)
            folder = root / name
            folder.mkdir(parents=True)
            module.peft_config[adapter].save_pretrained(str(folder))  # type: ignore[index,union-attr]
            state = {k: v.contiguous() for k, v in lora_state_dict(module, adapter).items()}
            save_file(state, str(folder / _PEFT_WEIGHTS), metadata={"format": "pt"})
            index["components"][name] = {"config": f"{name}/{_PEFT_CONFIG}", "weights": f"{name}/{_PEFT_WEIGHTS}"}
        (root / ADAPTER_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("wrote adapter %s (%s; %.2f MB)", out, ", ".join(components), size / 1e6)
    return out


def read_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, tuple[LoraSettings, dict[str, torch.Tensor]]]]:
    """Read an adapter folder: its index and, per component, the LoRA settings and weights.

    Raises:
        AdapterError: the folder or one of its files is missing or unreadable.
    """
    from safetensors.torch import load_file

    root = Path(path)
    index_file = root / ADAPTER_FILE
    if not index_file.is_file():
        hint = " (a `foley fit` checkpoint? make an adapter folder with `foley export --flow_ckpt CKPT --out DIR`)" \
            if root.is_file() else ""
        raise AdapterError(f"{root}: not an adapter folder, no {ADAPTER_FILE}{hint}")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AdapterError(f"{index_file}: not valid JSON ({error})") from error
    if index.get("format") != FORMAT:
        raise AdapterError(f"{index_file}: not a foley adapter (no \"format\": \"{FORMAT}\")")
    if index.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"{index_file}: format_version {index.get('format_version')!r} is not {FORMAT_VERSION}")
    parts: dict[str, tuple[LoraSettings, dict[str, torch.Tensor]]] = {}
    for name, entry in (index.get("components") or {}).items():
        config_file, weights_file = root / entry["config"], root / entry["weights"]
        for file in (config_file, weights_file):
            if not file.is_file():
                raise AdapterError(f"{file}: missing; the adapter folder is incomplete")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        targets = config.get("target_modules")
        settings = LoraSettings(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                                dropout=float(config.get("lora_dropout") or 0.0),
                                targets=_suffix_pattern(targets) if isinstance(targets, list) else str(targets),
                                rslora=bool(config.get("use_rslora", False)))
        parts[name] = (settings, load_file(str(weights_file)))
    return index, parts


def _suffix_pattern(names: list[str]) -> str:
    """A list of ``target_modules`` as the expression foley matches whole module names with.

    peft matches a list entry against a module name that equals it or ends with ``"." + entry``;
    and when it saves a config of 20 or more full names, it writes instead the shortest name
    suffixes that pick out the same modules ("qkv", "mlp.fc1", "1", ...). Both read the same way here.
    """
    import re

    return r"(?:.*\.)?(?:" + "|".join(map(re.escape, names)) + ")"


def load_adapter(pipeline: Any, path: str | os.PathLike[str], name: str | None = None, activate: bool = True) -> str:
    """Add the adapter in ``path`` to ``pipeline`` (unmerged) and, by default, make it the active one.

    Args:
        pipeline: A :class:`~foley.pipeline.FoleyPipeline`.
        path: An adapter folder (:func:`save_adapter`, ``foley export --flow_ckpt LORA.ckpt``).
        name: Name to switch to it by (default: the folder's name).
        activate: Use it at once (otherwise the active adapter stays).

    Returns:
        The adapter's name.

    Raises:
        AdapterError: the adapter was made for another base model (both fingerprints are named),
            or its files are unreadable.
    """
    index, parts = read_adapter(path)
    name = name or Path(path).name
    recorded = index.get("base") or {}
    own = model_fingerprints(pipeline)
    wrong = [k for k in own if k in recorded and recorded[k] != own[k]
             and (k in parts or k in ("codec", "clip", "sync", "text", "generator"))]
    if wrong:
        listing = "; ".join(f"{k}: adapter's base {recorded[k]}, this model {own[k]}" for k in wrong)
        raise AdapterError(
            f"{path}: this adapter was trained on another base model than this one ({listing}). Use it with the model "
            "folder it was trained from" + (f" ({index['trained_from']})" if index.get("trained_from") else "")
            + ", or train an adapter for this model."
        )
    components = _components(pipeline)
    for component, (settings, state) in parts.items():
        module = components[component]
        if name in adapter_names(module):
            raise AdapterError(f"{path}: the model already has an adapter named {name!r}; pass another name")
        add_lora(module, settings, name)
        try:
            load_lora_state(module, state, name)
        except ValueError as error:
            raise AdapterError(f"{path}: {component}: {error}") from error
        module.requires_grad_(False)
    _stash(pipeline).append(name)
    if activate:
        use_adapter(pipeline, name)
    else:
        use_adapter(pipeline, _active(pipeline))
    logger.info("adapter %r (%s) added from %s", name, ", ".join(parts), path)
    return name


def _stash(pipeline: Any) -> list[str]:
    names = getattr(pipeline, "_foley_adapters", None)
    if names is None:
        names = []
        object.__setattr__(pipeline, "_foley_adapters", names)
        object.__setattr__(pipeline, "_foley_active_adapter", None)
    return names


def _active(pipeline: Any) -> str | None:
    return getattr(pipeline, "_foley_active_adapter", None)


def use_adapter(pipeline: Any, name: str | None) -> None:
    """Generate with adapter ``name`` (``None``: the base model); adapters stay loaded."""
    names = _stash(pipeline)
    if name is not None and name not in names:
        raise ValueError(f"no adapter named {name!r} is loaded; loaded: {names}")
    for module in _components(pipeline).values():
        if adapter_names(module):
            set_active_adapter(module, name if name in adapter_names(module) else None)
            module.requires_grad_(False)
    object.__setattr__(pipeline, "_foley_active_adapter", name)


def merge_adapters(pipeline: Any) -> Any:
    """Fold the active adapter into the base weights and drop every adapter (in place).

    The pipeline is then a plain model again; :meth:`~foley.pipeline.FoleyPipeline.save_pretrained`
    writes it as a standalone model folder.
    """
    for module in _components(pipeline).values():
        if adapter_names(module):
            merge_lora(module)
    object.__setattr__(pipeline, "_foley_adapters", [])
    object.__setattr__(pipeline, "_foley_active_adapter", None)
    pipeline.flow._fingerprints = None  # the codec's weights may have changed
    return pipeline
