"""``foley convert mmaudio``: MMAudio's released 44.1 kHz models as foley model folders.

A converted folder computes the same function as MMAudio's reference implementation (see
tests/models/test_mmaudio_*.py and docs/mmaudio.md): its generator is foley's
:class:`~foley.models.mmdit.MMDiT` configured as the released network
(:mod:`foley.convert.mmaudio_network`), its codec the ``v1-44.pth`` Mel-VAE with BigVGAN-v2
(:mod:`foley.convert.mmaudio_vae`), its encoders DFN5B-CLIP (frames and per-token text) and
Synchformer (:mod:`foley.convert.mmaudio_encoders`), and its stream settings MMAudio's
(8 s windows, CLIP at 8 fps stretched to 384², Synchformer at 25 fps, PyAV frame rule). The
generation defaults are MMAudio's demo's: 25 Euler steps, CFG 4.5.

There is no stage 3: the output is dual mono unless a foley stage-3 model is attached
(``stereo``), whose mel front end must be the codec's.

The weights are CC-BY-NC 4.0 and never bundled with foley; the licence is logged on every
conversion and download.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from foley.convert.mmaudio_network import MMAUDIO_LICENSE, VARIANTS, MMAudioVariant, convert_network_state_dict, network_config
from foley.convert.mmaudio_vae import VAE_FILE, VAE_MD5, VAE_URL, VOCODER_FILE, build_codec, verify_md5

__all__ = ["convert_mmaudio", "convert", "required_files", "resolve_mmaudio", "cache_root", "MODEL_PREFIX",
           "MMAUDIO_HUB_REPO", "SYNCHFORMER_FILE"]

logger = logging.getLogger(__name__)

MMAUDIO_HUB_REPO = "hkchengrex/MMAudio"  # networks under weights/
BIGVGAN_HUB_REPO = "nvidia/bigvgan_v2_44khz_128band_512x"
SYNCHFORMER_FILE = "synchformer_state_dict.pth"
SYNCHFORMER_MD5 = "5b2f5594b0730f70e41e549b7c94390c"
SYNCHFORMER_URL = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/synchformer_state_dict.pth"


def required_files(variant: str | MMAudioVariant) -> list[tuple[str, str, str | None]]:
    """``(file name, where to download it, md5 or None)`` of everything a conversion reads."""
    spec = _variant(variant)
    return [
        (spec.filename, f"https://huggingface.co/{MMAUDIO_HUB_REPO}/resolve/main/weights/{spec.filename}", spec.md5),
        (VAE_FILE, VAE_URL, VAE_MD5),
        (SYNCHFORMER_FILE, SYNCHFORMER_URL, SYNCHFORMER_MD5),
        (VOCODER_FILE, f"https://huggingface.co/{BIGVGAN_HUB_REPO}/resolve/main/{VOCODER_FILE}", None),
    ]


def _variant(variant: str | MMAudioVariant) -> MMAudioVariant:
    if isinstance(variant, MMAudioVariant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown MMAudio variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def _find(weights_dir: Path, name: str) -> Path | None:
    """``name`` in ``weights_dir`` or in MMAudio's own layout (``weights/``, ``ext_weights/``)."""
    for folder in (weights_dir, weights_dir / "weights", weights_dir / "ext_weights"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_state_dict(path: Path, md5: str | None, what: str, url: str) -> dict[str, Tensor]:
    if md5 is not None:
        verify_md5(path, md5, what, url)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # refused pickles and corrupt files raise several types
        raise ValueError(f"{path}: not a weights-only torch file ({type(error).__name__}: {error}); "
                         f"download {what} again from {url}") from error
    if not isinstance(payload, Mapping) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors ({what}), got {type(payload).__name__}")
    return dict(payload)


def _default_encoders(synchformer_path: Path, verify: bool) -> dict[str, nn.Module]:
    from foley.convert.mmaudio_encoders import mmaudio_encoders

    return mmaudio_encoders(synchformer_path, md5=SYNCHFORMER_MD5 if verify else None)


def _attach_stereo(stereo: str, codec: nn.Module) -> nn.Module:
    """A foley stage 3 (model folder or stage-3 checkpoint) rendering with ``codec``'s mel."""
    from foley.model_folder import load_model_folder
    from foley.stages.stereo_module import StereoModule

    path = Path(stereo)
    if path.is_dir():
        source = load_model_folder(path).stereo
        if source is None:
            raise ValueError(f"{path}: this model folder has no stage 3 (stereo component) to attach")
        module = StereoModule(network=source.network, codec=codec, video_stream=source.video_stream,
                              render=source.render, num_examples=0)
    else:
        module = StereoModule.from_checkpoint(path, codec=codec)
    for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
        ours, theirs = getattr(codec.mel, name, None), getattr(module.network, name, None)
        if theirs is not None and ours is not None and ours != theirs:
            raise ValueError(f"{path}: its stage 3 works on mels with {name}={theirs}, MMAudio's codec uses {ours}; "
                             "train a stage 3 against this codec (foley fit --config configs/stage3.yaml)")
    return module


def convert_mmaudio(
    variant: str | MMAudioVariant,
    weights_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    verify: bool = True,
    overwrite: bool = False,
    stereo: str | None = None,
    store_encoders: bool = False,
    encoders: Mapping[str, nn.Module] | None = None,
    feature_overrides: Mapping[str, Any] | None = None,
    vae_overrides: Mapping[str, Any] | None = None,
    vocoder_config: Mapping[str, Any] | None = None,
    stream_settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write a foley model folder computing MMAudio's ``variant`` from its released files.

    Args:
        variant: ``small_44k``, ``medium_44k``, ``large_44k`` or ``large_44k_v2`` (or a
            :class:`MMAudioVariant`).
        weights_dir: folder holding the files of :func:`required_files` (flat, or MMAudio's
            ``weights/`` + ``ext_weights/`` layout).
        out: the model folder to write (atomically).
        verify: check the MD5 sums published by MMAudio.
        overwrite: replace an existing model folder.
        stereo: a foley stage 3 to attach (model folder or stage-3 ``.ckpt``); default dual mono.
        store_encoders: store copies of the encoders' weights in the folder (several GB for
            DFN5B-CLIP) instead of references (open_clip Hub name, the Synchformer file's path).
        encoders: ready encoders instead of MMAudio's (tests with tiny random encoders).
        feature_overrides: :data:`~foley.convert.mmaudio_network.FEATURES` changes (tiny tests).
        vae_overrides: VAE size changes (tiny tests).
        vocoder_config: BigVGAN arguments if not the released 44.1 kHz / 128-band ones (tiny tests).
        stream_settings: :class:`~foley.pipeline_settings.PipelineSettings` changes (tiny encoders' frame sizes).

    Returns:
        The model folder.

    Raises:
        FileNotFoundError: files are missing (all of them are named, with where to get them).
        ValueError: an MD5 sum, key or shape does not match (named).
    """
    from foley.flow import FlowMatching
    from foley.model_folder import save_model_folder
    from foley.models.mmdit import MMDiT
    from foley.pipeline import FoleyPipeline
    from foley.pipeline_settings import PipelineSettings
    from foley.stages.flow_module import FlowModule

    spec = _variant(variant)
    root = Path(weights_dir)
    files = required_files(spec)
    needed = files if encoders is None else [f for f in files if f[0] != SYNCHFORMER_FILE]
    found = {name: _find(root, name) for name, _, _ in needed}
    missing = [(name, url) for name, url, _ in needed if found[name] is None]
    if missing:
        listing = "\n".join(f"  {name}  <- {url}" for name, url in missing)
        raise FileNotFoundError(f"{root}: missing MMAudio file(s) for {spec.name}:\n{listing}\n"
                                f"Download them into {root} (flat, or MMAudio's weights/ and ext_weights/ folders).")
    logger.warning("%s", MMAUDIO_LICENSE)

    config = network_config(spec.hidden_dim, spec.num_heads, spec.depth, spec.fused_depth, spec.v2,
                            **(feature_overrides or {}))
    network_file = found[spec.filename]
    reference = _read_state_dict(network_file, spec.md5 if verify else None,
                                 f"MMAudio {spec.name} ({spec.filename})", files[0][1])
    state, latent_mean, latent_std = convert_network_state_dict(reference, config, source=str(network_file))
    network = MMDiT(**config)
    network.load_state_dict(state, strict=True)

    codec = build_codec(found[VAE_FILE], found[VOCODER_FILE], vae_md5=VAE_MD5 if verify else None,
                        vae_overrides=vae_overrides, vocoder_config=vocoder_config)
    with torch.no_grad():  # MMAudio's networks normalise latents with statistics of their own
        codec.latent_mean.copy_(latent_mean)
        codec.latent_std.copy_(latent_std)
    if encoders is None:
        encoders = _default_encoders(found[SYNCHFORMER_FILE], verify)
    flow = FlowModule(network=network, flow=FlowMatching(), codec=codec, **encoders, ema_decay=0.0,
                      cfg_strength=4.5, sample_steps=25, sampler="euler")
    latent_rate = float(config["latent_rate"])
    settings = PipelineSettings(sample_rate=44100, window_seconds=8.0, overlap_seconds=1.0, clip_fps=8.0,
                                clip_size=384, clip_crop="resize", sync_fps=25.0, sync_size=224, frame_rule="mmaudio")
    settings = settings.updated(**(stream_settings or {}))
    stereo_module = _attach_stereo(stereo, codec) if stereo else None
    pipeline = FoleyPipeline(flow.eval(), stereo_module, settings)
    folder = save_model_folder(pipeline, out, overwrite=overwrite, store_encoders=store_encoders)
    logger.info("converted MMAudio %s (%.0f M parameters, latents at %.2f Hz) into %s",
                spec.name, sum(p.numel() for p in network.parameters()) / 1e6, latent_rate, folder)
    return folder


def convert(
    variant: str,
    weights_dir: str,
    out: str,
    no_verify: bool = False,
    overwrite: bool = False,
    stereo: str | None = None,
    store_encoders: bool = False,
) -> Path:
    """Convert MMAudio's released 44.1 kHz checkpoints into a foley model folder.

    Prints MMAudio's licence (CC-BY-NC 4.0). Files: the network ``mmaudio_<variant>.pth``,
    ``v1-44.pth``, ``synchformer_state_dict.pth`` and ``bigvgan_generator.pt`` in
    ``weights_dir`` (flat or MMAudio's layout); the DFN5B-CLIP weights come through open_clip.

    Args:
        variant: small_44k, medium_44k, large_44k or large_44k_v2.
        weights_dir: folder with the downloaded files.
        out: model folder to write.
        no_verify: skip the MD5 checks.
        overwrite: replace an existing model folder.
        stereo: attach a foley stage 3 (model folder or stage-3 checkpoint); default dual mono.
        store_encoders: copy the encoders' weights into the folder instead of referencing them.
    """
    return convert_mmaudio(variant, weights_dir, out, verify=not no_verify, overwrite=overwrite, stereo=stereo,
                           store_encoders=store_encoders)


# ------------------------------------------------------------------ download by name
MODEL_PREFIX = "mmaudio:"


def cache_root() -> Path:
    """Where ``mmaudio:<variant>`` models live: ``$FOLEY_CACHE/mmaudio`` or ``$HF_HOME/foley/mmaudio``."""
    from huggingface_hub import constants

    base = os.environ.get("FOLEY_CACHE") or os.path.join(constants.HF_HOME, "foley")
    return Path(base) / "mmaudio"


def _download(name: str, url: str, md5: str | None, folder: Path) -> Path:
    """One file into ``folder`` (Hub files through huggingface_hub, release assets over HTTPS), atomically."""
    target = folder / name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    hub = "https://huggingface.co/"
    if url.startswith(hub):
        from huggingface_hub import hf_hub_download

        repo, _, path = url[len(hub):].partition("/resolve/main/")
        cached = Path(hf_hub_download(repo, path, etag_timeout=10)).resolve()
        partial = target.with_name(f".{name}.partial")
        partial.unlink(missing_ok=True)
        if _same_device(cached, folder):
            os.link(cached, partial)  # no second copy of a multi-GB file
        else:
            shutil.copyfile(cached, partial)
    else:
        import urllib.request

        partial = target.with_name(f".{name}.partial")
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
    if md5 is not None:
        try:
            verify_md5(partial, md5, name, url)
        except ValueError:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, target)
    return target


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.resolve().stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def resolve_mmaudio(name: str) -> Path:
    """The converted model folder for ``mmaudio:<variant>``, downloading and converting on first use.

    Files go to ``cache_root()/files`` and the model folder to ``cache_root()/<variant>``. Offline
    (``HF_HUB_OFFLINE=1``) with files missing, fails at once naming every file and where to put it.

    Raises:
        ValueError: unknown variant.
        foley.hub.HubUnavailableError: offline or unreachable, with the file list.
    """
    from huggingface_hub import constants

    from foley.hub import HubUnavailableError

    variant = name[len(MODEL_PREFIX):]
    spec = _variant(variant)
    root = cache_root()
    folder = root / spec.name
    if (folder / "pipeline.json").is_file():
        return folder
    files = root / "files"
    needed = [(n, url, md5) for n, url, md5 in required_files(spec) if _find(files, n) is None]
    if needed:
        listing = "\n".join(f"  {n}  <- {url}" for n, url, _ in needed)
        help_text = (f"Fetch them where there is a network and put them in {files}, then load {name} again "
                     f"(or run `foley convert mmaudio --variant {spec.name} --weights_dir DIR --out MODEL_DIR`). "
                     "DFN5B-CLIP (open_clip hf-hub:apple/DFN5B-CLIP-ViT-H-14-384) must also be in the Hugging Face cache.")
        if constants.HF_HUB_OFFLINE:
            raise HubUnavailableError(f"{name}: offline (HF_HUB_OFFLINE=1) and these files are missing:\n{listing}\n{help_text}")
        logger.warning("%s", MMAUDIO_LICENSE)
        for file_name, url, md5 in needed:
            logger.info("downloading %s from %s", file_name, url)
            try:
                _download(file_name, url, md5, files)
            except OSError as error:  # includes huggingface_hub's and urllib's network errors
                raise HubUnavailableError(f"{name}: cannot download {file_name} from {url} "
                                          f"({type(error).__name__}: {error}); missing:\n{listing}\n{help_text}") from error
    return convert_mmaudio(spec, files, folder)
