"""MMAudio's feature front ends as foley encoders: DFN5B-CLIP frames and text, Synchformer.

Each is one of foley's encoder classes configured to compute what MMAudio's ``FeaturesUtils``
computes from ``load_video``'s frames (tests/encoders/test_mmaudio_*.py compare them with the
reference code):

* ``clip_encoder``: :class:`~foley.encoders.clip.ClipEncoder` on open_clip
  ``hf-hub:apple/DFN5B-CLIP-ViT-H-14-384``; frames resized whole to 384 x 384 (bicubic,
  antialiased, torchvision's uint8 kernel on the CPU), scaled to [0, 1], normalised with CLIP's
  mean and std; ``encode_image(normalize=True)``: (B, T, 1024).
* ``text_encoder``: :class:`~foley.encoders.text.ClipTextEncoder` on the same model: per-token
  states after ``ln_final``, L2-normalised, 77 tokens of the ``ViT-H-14-378-quickgelu`` tokenizer,
  every token position real (MMAudio's network attends to all 77), ``""`` encoded like any
  caption: (B, 77, 1024).
* ``sync_encoder``: :class:`~foley.encoders.synchformer.SynchformerEncoder` with the
  ``vfeat_extractor.*`` weights of ``synchformer_state_dict.pth`` (MD5 checked); short side to
  224 and centre crop like torchvision, mean and std 0.5, 16-frame segments with stride 8:
  (B, S * 8, 768).

Their frames come from the pipeline settings of :data:`MMAUDIO_STREAM_SETTINGS` (8 and 25 fps
with MMAudio's frame rule; 384 stretched and 224 centre crop). The weights are MMAudio's
(CC-BY-NC 4.0) and Apple's (DFN5B-CLIP, Apple sample code licence); they are referenced, not
bundled.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from foley.encoders.clip import CLIP_MEAN, CLIP_STD

__all__ = [
    "CLIP_MODEL",
    "CLIP_TOKENIZER",
    "SYNCHFORMER_MD5",
    "SYNCHFORMER_URL",
    "MMAUDIO_STREAM_SETTINGS",
    "mmaudio_encoder_configs",
    "mmaudio_encoders",
    "check_synchformer_file",
]

CLIP_MODEL = "hf-hub:apple/DFN5B-CLIP-ViT-H-14-384"
CLIP_TOKENIZER = "ViT-H-14-378-quickgelu"
SYNCHFORMER_MD5 = "5b2f5594b0730f70e41e549b7c94390c"
SYNCHFORMER_URL = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/synchformer_state_dict.pth"

# PipelineSettings values giving the encoders MMAudio's frames (load_video in its eval_utils.py).
MMAUDIO_STREAM_SETTINGS: dict[str, Any] = {
    "clip_fps": 8.0,
    "clip_size": 384,
    "clip_crop": "resize",
    "sync_fps": 25.0,
    "sync_size": 224,
    "frame_rule": "mmaudio",
}


def check_synchformer_file(path: str | os.PathLike[str], md5: str | None = SYNCHFORMER_MD5) -> Path:
    """The Synchformer file as a :class:`~pathlib.Path`, after checking that it exists (and its MD5).

    Raises:
        FileNotFoundError: no such file; the message says where to download it.
        ValueError: the MD5 sum differs from the published one.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: Synchformer weights not found; download synchformer_state_dict.pth from "
                                f"{SYNCHFORMER_URL} and pass its path")
    if md5 is not None:
        from foley.convert.mmaudio_vae import verify_md5

        verify_md5(file, md5, "MMAudio's Synchformer (synchformer_state_dict.pth)", SYNCHFORMER_URL)
    return file


def mmaudio_encoder_configs(synchformer_path: str | os.PathLike[str], clip_model: str = CLIP_MODEL) -> dict[str, dict[str, Any]]:
    """``class_path``/``init_args`` of MMAudio's three encoders, as a model folder's ``encoders/<name>.json`` holds them.

    Builds nothing and reads no file: :func:`foley.configurable.build` on an entry builds the
    encoder (downloading DFN5B-CLIP through open_clip unless it is in the Hugging Face cache).

    Args:
        synchformer_path: ``synchformer_state_dict.pth`` (recorded as given; an absolute path
            keeps the folder usable from elsewhere).
        clip_model: open_clip name of the CLIP model (``"local-dir:DIR"`` for a downloaded copy).

    Returns:
        ``{"clip_encoder": ..., "sync_encoder": ..., "text_encoder": ...}``.
    """
    return {
        "clip_encoder": {
            "class_path": "foley.encoders.clip.ClipEncoder",
            "init_args": {"model_name": clip_model, "pretrained": None, "checkpoint_path": None, "model_config": None,
                          "image_size": None, "frame_batch_size": 64, "resize": "stretch", "preprocess": "torchvision",
                          "mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
        },
        "sync_encoder": {
            "class_path": "foley.encoders.synchformer.SynchformerEncoder",
            "init_args": {"checkpoint_path": os.fspath(synchformer_path), "preprocess": "torchvision"},
        },
        "text_encoder": {
            "class_path": "foley.encoders.text.ClipTextEncoder",
            "init_args": {"model_name": clip_model, "pretrained": None, "checkpoint_path": None, "model_config": None,
                          "tokenizer_name": CLIP_TOKENIZER, "normalize": True, "empty_caption": "encode",
                          "mask_padding": False},
        },
    }


def mmaudio_encoders(
    synchformer_path: str | os.PathLike[str],
    md5: str | None = SYNCHFORMER_MD5,
    clip_model: str = CLIP_MODEL,
) -> dict[str, nn.Module]:
    """Build MMAudio's three encoders with their released weights.

    Args:
        synchformer_path: ``synchformer_state_dict.pth`` (the whole audio-visual model; only its
            ``vfeat_extractor.*`` keys are loaded, strictly).
        md5: Its expected MD5 sum (``None`` skips the check).
        clip_model: open_clip name of the CLIP model. Offline, the default needs
            ``open_clip_config.json`` and the weights of ``apple/DFN5B-CLIP-ViT-H-14-384`` in the
            Hugging Face cache; the error says how to get them (or pass ``"local-dir:DIR"``).

    Returns:
        ``{"clip_encoder", "sync_encoder", "text_encoder"}`` modules, frozen, for
        :class:`~foley.stages.flow_module.FlowModule` (their ``init_config`` is
        :func:`mmaudio_encoder_configs`' entry, with the Synchformer path made absolute).

    Raises:
        FileNotFoundError: the Synchformer file is missing.
        ValueError: its MD5 sum or keys do not match.
        RuntimeError: the CLIP model cannot be loaded (offline and not cached).
    """
    from foley.encoders.clip import ClipEncoder
    from foley.encoders.synchformer import SynchformerEncoder
    from foley.encoders.text import ClipTextEncoder

    file = check_synchformer_file(synchformer_path, md5)
    configs = mmaudio_encoder_configs(file.resolve(), clip_model)
    classes = {"clip_encoder": ClipEncoder, "sync_encoder": SynchformerEncoder, "text_encoder": ClipTextEncoder}
    # Synchformer first: a wrong file fails before the CLIP model is downloaded or read.
    return {name: classes[name](**configs[name]["init_args"]) for name in ("sync_encoder", "clip_encoder", "text_encoder")}
