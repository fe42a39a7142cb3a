"""The model folder: foley's one format for a trained pipeline, the same on disk and on the Hub.

Layout (format version 1)::

    MODEL_DIR/
      pipeline.json            format + version, data-stream settings, generation defaults,
                               flow-matching sampler, stage-3 rendering, index of the components
      codec.json               Codec (mel front end + Mel-VAE + vocoder), class_path/init_args
      codec.safetensors        its state dict (with the latent statistics)
      generator.json           the MM-DiT
      generator.safetensors    its state dict (the EMA weights when it was trained with EMA)
      stereo.json              Mono2Stereo (absent in a model without stage 3: dual mono output)
      stereo.safetensors       its state dict
      encoders/<name>.json     frozen encoders (clip_encoder, sync_encoder, text_encoder) present
                               in the model; the config *references* the weights (open_clip /
                               transformers names or local paths) ...
      encoders/<name>.safetensors  ... or, for encoders with weights of their own (random tiny
                               ones) and with ``store_encoders``, holds a copy

Every component is one ``nn.Module``: its JSON is the module's
:meth:`~foley.configurable.Configurable.init_config`, rebuilt with jsonargparse
(:func:`foley.configurable.build`, foley classes only), and its safetensors file is exactly
that module's ``state_dict``. Loading reads JSON and safetensors only; nothing is unpickled.
Folders are written to a temporary sibling and renamed into place, so a folder that exists
is complete.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from foley.configurable import ConfigError, build, dataclass_config

if TYPE_CHECKING:
    from foley.pipeline import FoleyPipeline

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PIPELINE_FILE",
    "ENCODERS",
    "ModelFolderError",
    "save_model_folder",
    "load_model_folder",
    "load_legacy_bundle",
    "save_component",
    "load_component",
    "model_files",
]

logger = logging.getLogger(__name__)

FORMAT = "foley-model"
FORMAT_VERSION = 1
PIPELINE_FILE = "pipeline.json"
ENCODERS = ("clip_encoder", "sync_encoder", "text_encoder")
LEGACY_BUNDLE_FORMAT = "foley-pipeline-bundle"

# Constructor arguments that make a frozen encoder read its weights from elsewhere. A stored
# copy is loaded into the architecture built with these switched off (no download, no file).
_WEIGHT_SOURCES: dict[str, dict[str, Any]] = {
    "foley.encoders.clip.ClipEncoder": {"pretrained": None, "checkpoint_path": None},
    "foley.encoders.text.ClipTextEncoder": {"pretrained": None, "checkpoint_path": None},
    "foley.encoders.synchformer.SynchformerEncoder": {"checkpoint_path": None},
}


class ModelFolderError(ValueError):
    """A model folder (or a file in it) that cannot be read; the message names the file."""


# --------------------------------------------------------------------------- writing
@contextmanager
def _atomic_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "folder")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _write_component(root: Path, name: str, module: nn.Module, weights: bool) -> dict[str, str | None]:
    """Write ``name.json`` (+ ``name.safetensors``); returns the component's index entry."""
    from safetensors.torch import save_model

    config = module.init_config()  # type: ignore[operator]
    _write_json(root / f"{name}.json", config)
    entry: dict[str, str | None] = {"config": f"{name}.json", "weights": None}
    if weights:
        # save_model drops aliases of shared tensors (e.g. T5's tied embeddings), which save_file refuses.
        save_model(module, str(root / f"{name}.safetensors"))
        entry["weights"] = f"{name}.safetensors"
    return entry


def save_component(module: nn.Module, out: str | os.PathLike[str], name: str, overwrite: bool = False) -> Path:
    """Write one component as a folder of its own: ``name.json`` + ``name.safetensors``, atomically.

    The files are exactly those the component has inside a model folder, so the folder of a
    single component (e.g. the stage-1 codec that stages 2 and 3 train against) and a whole
    model folder are read by the same :func:`load_component`.
    """
    target = Path(out)
    with _atomic_folder(target, overwrite) as tmp:
        _write_component(tmp, name, module, weights=True)
    return target


def load_component(folder: str | os.PathLike[str], name: str, base: type) -> Any:
    """Build component ``name`` from a model folder or a single-component folder (JSON + safetensors only).

    Raises:
        ModelFolderError: the folder lacks the component's files, or they do not fit.
    """
    root = Path(folder)
    entry: Mapping[str, Any] = {"config": f"{name}.json", "weights": f"{name}.safetensors"}
    if (root / PIPELINE_FILE).is_file():
        entry = (_read_json(root, PIPELINE_FILE).get("components") or {}).get(name) or entry
    if not (root / str(entry["config"])).is_file():
        raise ModelFolderError(
            f"{root}: holds no {name} component (no {entry['config']}); pass a model folder from `foley export` "
            f"or a folder written by {base.__name__}.save"
        )
    return _load_component(root, name, entry, base)


def _encoder_entry(root: Path, name: str, encoder: nn.Module, store: bool) -> dict[str, str | None]:
    from_file = bool(getattr(encoder, "weights_from_file", False))
    if not from_file or not store:
        # Weights of its own must be stored; weights from a named source stay a reference.
        return _write_component(root, f"encoders/{name}", encoder, weights=not from_file)
    config = encoder.init_config()  # type: ignore[operator]
    if config["class_path"] == "foley.encoders.text.TextEncoder":
        # Architecture from the loaded config; the tokenizer stays a reference (small files).
        args = config["init_args"]
        args["tokenizer_name"] = args.get("tokenizer_name") or args["model_name"]
        args["model_config"] = encoder.model.config.to_diff_dict()  # type: ignore[union-attr]
    elif config["class_path"] in _WEIGHT_SOURCES:
        config["init_args"].update(_WEIGHT_SOURCES[config["class_path"]])
    else:
        raise ModelFolderError(f"{name}: do not know how to store a copy of a {config['class_path']}")
    from safetensors.torch import save_model

    _write_json(root / "encoders" / f"{name}.json", config)
    save_model(encoder, str(root / "encoders" / f"{name}.safetensors"))
    return {"config": f"encoders/{name}.json", "weights": f"encoders/{name}.safetensors"}


def save_model_folder(
    pipeline: FoleyPipeline, out: str | os.PathLike[str], overwrite: bool = False, store_encoders: bool = False
) -> Path:
    """Write ``pipeline`` as a model folder (layout in the module docstring), atomically.

    Args:
        pipeline: a pipeline with a :class:`~foley.stages.flow_module.FlowModule` generator and a
            :class:`~foley.stages.stereo_module.StereoModule` sharing its codec.
        out: the folder; must not exist or be empty unless ``overwrite``.
        overwrite: replace an existing non-empty folder.
        store_encoders: store copies of frozen encoders whose weights come from their own files.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.
    """
    out = Path(out)
    flow, stereo = pipeline.flow, pipeline.stereo
    parts = [(flow, ("codec", "inference_network", "flow"))] + ([(stereo, ("network", "codec"))] if stereo is not None else [])
    for part, attributes in parts:
        if not all(hasattr(part, a) for a in attributes):
            raise TypeError(f"cannot save a {type(part).__name__}: a model folder holds a FlowModule and a StereoModule")
    if stereo is not None and stereo.codec is not flow.codec and not _same_weights(stereo.codec, flow.codec):
        raise ValueError("stage 3 renders with a different codec than stage 2 generates with; a model folder holds one codec")
    generation = pipeline.generation
    index: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "written_by": _foley_version(),
        "settings": dataclass_config(pipeline.settings),
        "generation": dataclass_config(generation),
        "flow_matching": flow.flow.init_config(),
        "stereo": {"video_stream": stereo.video_stream, "render": stereo.render} if stereo is not None else None,
        "components": {},
    }
    with _atomic_folder(out, overwrite) as root:
        components = index["components"]
        components["codec"] = _write_component(root, "codec", flow.codec, weights=True)
        components["generator"] = _write_component(root, "generator", flow.inference_network, weights=True)
        if stereo is not None:
            components["stereo"] = _write_component(root, "stereo", stereo.network, weights=True)
        for name in ENCODERS:
            encoder = getattr(flow, name, None)
            if encoder is not None:
                components[name] = _encoder_entry(root, name, encoder, store_encoders)
        _write_json(root / PIPELINE_FILE, index)  # last: its presence marks a complete folder
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("wrote model folder %s (%d files, %.1f MB)", out, sum(1 for p in out.rglob("*") if p.is_file()), size / 1e6)
    return out


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _foley_version() -> str:
    from foley import __version__

    return f"foley {__version__}"


# --------------------------------------------------------------------------- reading
def _read_json(root: Path, name: str) -> Any:
    path = root / name
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing; the model folder is incomplete (re-run `foley export`, or download it again)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{path}: not valid JSON ({error})") from error


def model_files(index: Mapping[str, Any]) -> list[str]:
    """Every file a model folder's ``pipeline.json`` index names (itself first)."""
    files = [PIPELINE_FILE]
    for entry in (index.get("components") or {}).values():
        files += [entry[k] for k in ("config", "weights") if entry.get(k)]
    return files


def _load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``module``, reporting missing, extra and misshapen tensors."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    if not path.is_file():
        raise ModelFolderError(f"{path}: missing; the model folder is incomplete (re-run `foley export`, or download it again)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
            dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ModelFolderError(f"{path}: not a readable safetensors file ({error})") from error
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    wrong = {k: (stored[k], expected[k]) for k in stored.keys() & expected.keys() if stored[k] != expected[k]}
    unexpected = sorted(stored.keys() - expected.keys())
    if wrong or unexpected:
        details = [f"{k}: file {s}, model {m}" for k, (s, m) in sorted(wrong.items())[:5]]
        details += [f"unexpected {k}" for k in unexpected[:5]]
        raise ModelFolderError(
            f"{path}: does not fit the architecture in its JSON file ({len(wrong)} tensors of another shape, "
            f"{len(unexpected)} unexpected): {'; '.join(details)}"
        )
    stored_floats = {d for d in dtypes if d in _DTYPES}
    if len(stored_floats) == 1:
        # Weights stored in half precision are used in it, as they ran when exported.
        target = _DTYPES[stored_floats.pop()]
        if any(p.is_floating_point() and p.dtype != target for p in module.parameters()):
            module.to(target)
    try:
        load_model(module, str(path), strict=True)
    except RuntimeError as error:  # missing tensors
        raise ModelFolderError(f"{path}: {error}") from error


_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def _load_component(root: Path, name: str, entry: Mapping[str, Any], base: type) -> Any:
    config_file = entry.get("config")
    if not isinstance(config_file, str):
        raise ModelFolderError(f"{root / PIPELINE_FILE}: component {name!r} names no config file")
    try:
        module = build(_read_json(root, config_file), base, where=str(root / config_file))
    except ConfigError as error:
        raise ModelFolderError(str(error)) from error
    if entry.get("weights"):
        _load_weights(module, root / entry["weights"])
    return module


def load_model_folder(folder: str | os.PathLike[str], device: str | torch.device = "cpu", **settings: Any) -> FoleyPipeline:
    """Build the pipeline a model folder describes (see the module docstring).

    Args:
        folder: the model folder.
        device: where to run.
        **settings: :class:`~foley.pipeline.PipelineSettings` overrides (``None`` values are ignored).

    Raises:
        ModelFolderError: a file is missing, unreadable or does not fit; the format version is unknown.
    """
    from foley.flow import FlowMatching
    from foley.models.codec import Codec
    from foley.models.mono2stereo import Mono2Stereo
    from foley.pipeline import FoleyPipeline
    from foley.pipeline_settings import GenerationDefaults, PipelineSettings
    from foley.stages.flow_module import FlowModule
    from foley.stages.stereo_module import StereoModule

    root = Path(folder)
    if not root.is_dir():
        raise ModelFolderError(f"{root}: no such model folder")
    index = _read_json(root, PIPELINE_FILE)
    where = root / PIPELINE_FILE
    if not isinstance(index, Mapping) or index.get("format") != FORMAT:
        raise ModelFolderError(f"{where}: not a foley model folder (no \"format\": \"{FORMAT}\")")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{where}: format_version {version!r} is not one this foley reads ({FORMAT_VERSION}); "
            + ("upgrade foley" if isinstance(version, int) and version > FORMAT_VERSION else "re-export the model with `foley export`")
        )
    components = index.get("components") or {}
    for required in ("codec", "generator"):
        if required not in components:
            raise ModelFolderError(f"{where}: no {required!r} component")
    try:
        defaults = build(index["generation"], GenerationDefaults, where=f"{where} (generation)")
        stream_settings = build(index["settings"], PipelineSettings, where=f"{where} (settings)")
        flow_matching = build(index["flow_matching"], FlowMatching, where=f"{where} (flow_matching)")
    except KeyError as error:
        raise ModelFolderError(f"{where}: no {error.args[0]!r} entry") from error
    except ConfigError as error:
        raise ModelFolderError(str(error)) from error
    stream_settings = stream_settings.updated(**settings)

    codec = _load_component(root, "codec", components["codec"], Codec)
    network = _load_component(root, "generator", components["generator"], nn.Module)
    encoders = {name: _load_component(root, name, components[name], nn.Module) for name in ENCODERS if name in components}
    flow = FlowModule(
        network=network, flow=flow_matching, codec=codec, **encoders, ema_decay=0.0,  # the stored weights are the EMA's
        cfg_strength=defaults.cfg, sample_steps=defaults.steps, sampler=defaults.sampler,
    )
    stereo = None  # no stage 3: dual mono (FoleyPipeline)
    if "stereo" in components:
        stereo_network = _load_component(root, "stereo", components["stereo"], Mono2Stereo)
        rendering = index.get("stereo") or {}
        stereo = StereoModule(network=stereo_network, codec=codec, video_stream=rendering.get("video_stream", "sync"),
                              render=rendering.get("render", "vocoder"), num_examples=0)
    pipeline = FoleyPipeline(flow, stereo, stream_settings, negative_prompt=defaults.negative_prompt)
    logger.info("loaded model folder %s (%s, %s)", root, index.get("written_by", "?"), defaults)
    return pipeline.to(device)


# ----------------------------------------------------------------------- old files
def load_legacy_bundle(path: str | os.PathLike[str], device: str | torch.device = "cpu", **settings: Any) -> FoleyPipeline:
    """Read an old one-file bundle (``FoleyPipeline.save_bundle``, before model folders).

    It is a torch file read with ``torch.load(weights_only=True)``; convert it once with
    ``foley export --bundle PATH --out MODEL_DIR``.
    """
    from foley.flow import FlowMatching
    from foley.models.codec import Codec
    from foley.pipeline import FoleyPipeline
    from foley.pipeline_settings import PipelineSettings
    from foley.stages.flow_module import FlowModule
    from foley.stages.stereo_module import StereoModule

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline bundle {os.fspath(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refusals and corrupt files surface as several types
        raise ModelFolderError(f"{path}: not a foley model folder or bundle ({error})") from error
    if not isinstance(payload, Mapping) or payload.get("format") != LEGACY_BUNDLE_FORMAT:
        hint = ""
        if isinstance(payload, Mapping) and "state_dict" in payload and "hyper_parameters" in payload:
            hint = (" It is a `foley fit` checkpoint: make a model folder with `foley export --flow_ckpt STAGE2.ckpt "
                    "--stereo_ckpt STAGE3.ckpt --out MODEL_DIR`, or load it with FoleyPipeline.from_checkpoints.")
        raise ModelFolderError(f"{path}: not a foley model folder or bundle.{hint}")
    logger.warning("%s is an old one-file bundle; convert it once with `foley export --bundle %s --out MODEL_DIR`", path, path)
    codec = Codec.from_config(json.loads(payload["codec"]["config"]))
    codec.load_state_dict(payload["codec"]["state_dict"])
    hparams = json.loads(payload["flow"]["hyper_parameters"])
    # The bundle keeps LightningCLI's hyper-parameters: class_path mappings for the parts.
    parts: dict[str, Any] = {}
    for name, base in (("network", nn.Module), ("flow", FlowMatching), *((e, nn.Module) for e in ENCODERS)):
        if isinstance(hparams.get(name), Mapping):
            parts[name] = build(hparams[name], base, where=f"{path} ({name})")
    keep = ("ema_decay", "cfg_strength", "sample_steps", "sampler")
    flow = FlowModule(codec=codec, **parts, **{k: hparams[k] for k in keep if k in hparams})
    missing, unexpected = flow.load_state_dict(payload["flow"]["state_dict"], strict=False)
    missing = [k for k in missing if not k.startswith("codec.")]
    if missing or unexpected:
        raise ModelFolderError(f"{path}: stage-2 weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    stereo = StereoModule.from_network_state(
        json.loads(payload["stereo"]["config"]), payload["stereo"]["state_dict"], codec,
        payload["stereo"]["video_stream"], payload["stereo"].get("render", "vocoder"),
    )
    return FoleyPipeline(flow, stereo, PipelineSettings(**payload["settings"]).updated(**settings)).to(device)
