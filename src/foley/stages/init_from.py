"""Start stage 2 from a trained model folder (``FlowModule(init_from=MODEL_DIR)``).

``foley fit --config configs/stage2.yaml --model.init_args.init_from MODEL_DIR`` (or the LoRA
config of ``configs/finetune/``) trains on from the generator weights of a model folder
written by ``foley export`` (the demo's, or a converted MMAudio model). Every part the
training config leaves out comes from the folder:

- ``network``: ``None`` builds the folder's generator (``generator.json``); a given network
  must have the same architecture and receives ``generator.safetensors``.
- ``codec``: neither ``codec`` nor ``codec_checkpoint`` uses the folder's codec.
- ``clip_encoder`` / ``sync_encoder`` / ``text_encoder``: ``None`` uses the folder's encoder
  when it has one.
- ``flow``: ``None`` uses the folder's flow-matching settings.

Parts the config does give must be the ones the generator was trained with: the codec's and
every encoder's weight fingerprint (:func:`foley.encoders.fingerprint.weights_fingerprint`) is
compared with the folder's, and a difference is refused with both fingerprints, since the
generator's inputs (latents, features) would change meaning under it.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["InitParts", "load_init_parts", "check_data_settings", "FINGERPRINT_NAMES", "InitFromError"]

logger = logging.getLogger(__name__)

# Model-folder component name -> name in FlowModule.encoder_fingerprints().
FINGERPRINT_NAMES = {"codec": "codec", "clip_encoder": "clip", "sync_encoder": "sync", "text_encoder": "text"}


class InitFromError(ValueError):
    """A model folder that cannot start this training run; the message names the folder and both sides."""


@dataclass
class InitParts:
    """What a model folder contributes to a stage-2 module.

    Args:
        folder: The resolved model folder.
        network: The generator with the folder's weights loaded.
        codec: The folder's codec when the config gave none, else ``None``.
        encoders: Encoders built from the folder (those the config left ``None``).
        flow: The folder's flow-matching settings when the config gave none, else ``None``.
        settings: The folder's data-stream settings (``PipelineSettings`` fields).
        generation: The folder's generation defaults (``GenerationDefaults`` fields).
        fingerprints: Fingerprints of the folder's codec and encoders (``encoder_fingerprints`` names).
    """

    folder: Path
    network: nn.Module
    codec: nn.Module | None = None
    encoders: dict[str, nn.Module] = field(default_factory=dict)
    flow: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


def _index(folder: Path) -> Mapping[str, Any]:
    from foley.model_folder import FORMAT, PIPELINE_FILE, ModelFolderError

    path = folder / PIPELINE_FILE
    if not path.is_file():
        raise ModelFolderError(f"init_from {folder}: no {PIPELINE_FILE}; pass a model folder written by `foley export`")
    index = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(index, Mapping) or index.get("format") != FORMAT:
        raise ModelFolderError(f"init_from {path}: not a foley model folder (no \"format\": \"{FORMAT}\")")
    return index


def _same_reference(folder_entry: Mapping[str, Any], folder: Path, module: nn.Module) -> bool:
    """A referenced encoder (weights from its own file) described exactly as the config's module."""
    if folder_entry.get("weights") or not getattr(module, "weights_from_file", False):
        return False
    init_config = getattr(module, "init_config", None)
    if init_config is None:
        return False
    stored = json.loads((folder / str(folder_entry["config"])).read_text(encoding="utf-8"))
    return stored == init_config()


def _refuse(folder: Path, name: str, file: str, theirs: str, ours: str) -> InitFromError:
    what = "codec" if name == "codec" else f"{name} (the {FINGERPRINT_NAMES[name]} encoder)"
    return InitFromError(
        f"init_from {folder}: the model folder's {what} ({file}, weight fingerprint {theirs}) differs from this "
        f"training config's (fingerprint {ours}). The folder's generator was trained on that {what}'s "
        f"{'latents' if name == 'codec' else 'features'}, so it cannot be fine-tuned on another's. Leave "
        f"{'codec and codec_checkpoint unset' if name == 'codec' else name + ' unset (null)'} to use the folder's, "
        "or give the one the model was trained with (re-run `foley extract` with it if you train on feature shards)."
    )


def load_init_parts(
    init_from: str | os.PathLike[str],
    network: nn.Module | None,
    codec: nn.Module | None,
    encoders: Mapping[str, nn.Module | None],
    flow: Any,
) -> InitParts:
    """Read a model folder for ``FlowModule(init_from=...)`` (see the module docstring).

    Args:
        init_from: A model folder, or a Hugging Face Hub id of one.
        network: The config's network, or ``None`` to build the folder's.
        codec: The config's codec (already built), or ``None`` to use the folder's.
        encoders: ``{"clip_encoder": ..., "sync_encoder": ..., "text_encoder": ...}`` from the config.
        flow: The config's ``FlowMatching``, or ``None`` to use the folder's.

    Raises:
        foley.model_folder.ModelFolderError: the folder is incomplete, or its generator weights do not
            fit the config's network.
        InitFromError: the config's codec or an encoder has other weights than the folder's.
    """
    from foley.configurable import ConfigError, build
    from foley.encoders.fingerprint import weights_fingerprint
    from foley.flow import FlowMatching
    from foley.hub import resolve_model
    from foley.model_folder import ModelFolderError, load_component
    from foley.models.codec import Codec

    folder = resolve_model(init_from)
    if not folder.is_dir():
        raise ModelFolderError(f"init_from {folder}: not a model folder (an old one-file bundle? convert it with "
                               "`foley export --bundle FILE --out MODEL_DIR`)")
    index = _index(folder)
    components = index.get("components") or {}
    parts = InitParts(folder=folder, network=network, settings=dict((index.get("settings") or {}).get("init_args") or {}),
                      generation=dict((index.get("generation") or {}).get("init_args") or {}))

    # Codec: the folder's, or the config's if its weights are the folder's.
    folder_codec = load_component(folder, "codec", Codec)
    parts.fingerprints["codec"] = weights_fingerprint(folder_codec)
    if codec is None:
        parts.codec = folder_codec
    else:
        ours = weights_fingerprint(codec)
        if ours != parts.fingerprints["codec"]:
            raise _refuse(folder, "codec", str(components["codec"].get("weights")), parts.fingerprints["codec"], ours)
        del folder_codec

    for name, module in encoders.items():
        entry = components.get(name)
        short = FINGERPRINT_NAMES[name]
        if entry is None:
            if module is not None:
                logger.warning("init_from %s: the model folder has no %s; the config adds one, whose features the "
                               "generator has never seen", folder, name)
            continue
        if module is not None and _same_reference(entry, folder, module):
            parts.fingerprints[short] = weights_fingerprint(module)  # same file, same weights
            continue
        stored = load_component(folder, name, nn.Module)
        parts.fingerprints[short] = weights_fingerprint(stored)
        if module is None:
            parts.encoders[name] = stored
            continue
        ours = weights_fingerprint(module)
        if ours != parts.fingerprints[short]:
            raise _refuse(folder, name, str(entry.get("weights") or entry.get("config")), parts.fingerprints[short], ours)

    # Generator: the folder's architecture, or the config's with the folder's weights.
    generator = components.get("generator") or {}
    if network is None:
        parts.network = load_component(folder, "generator", nn.Module)
    else:
        from foley.model_folder import _load_weights  # reports missing, extra and misshapen tensors by name

        if not generator.get("weights"):
            raise ModelFolderError(f"init_from {folder}: the index names no generator weights")
        _load_weights(network, folder / str(generator["weights"]))
    if flow is None and isinstance(index.get("flow_matching"), Mapping):
        try:
            parts.flow = build(index["flow_matching"], FlowMatching, where=f"{folder} (flow_matching)")
        except ConfigError as error:
            raise ModelFolderError(str(error)) from error
    logger.info("init_from %s: generator weights loaded%s", folder,
                "" if not parts.encoders and parts.codec is None else
                f"; from the folder: {', '.join((['codec'] if parts.codec is not None else []) + list(parts.encoders))}")
    return parts


# Data-module settings that must equal the model folder's (the frame streams the encoders see).
_STREAM_SETTINGS = ("sample_rate", "clip_fps", "clip_size", "sync_fps", "sync_size", "clip_crop")


def check_data_settings(init_from: Any, folder_settings: Mapping[str, Any], data_hparams: Mapping[str, Any] | None) -> None:
    """Refuse a data module that reads audio or frames differently from the model folder's training.

    Raises:
        InitFromError: a stream setting differs; the message gives the override that fixes it.
    """
    if not data_hparams:
        return
    wrong = [(k, folder_settings[k], data_hparams[k]) for k in _STREAM_SETTINGS
             if k in folder_settings and k in data_hparams and data_hparams[k] != folder_settings[k]]
    if wrong:
        listing = ", ".join(f"{k} {theirs!r} (data: {ours!r})" for k, theirs, ours in wrong)
        fix = " ".join(f"--data.init_args.{k}={theirs}" for k, theirs, _ in wrong)
        raise InitFromError(f"init_from {init_from}: the model folder's model was trained with {listing}; "
                            f"read the data the same way: {fix}")
