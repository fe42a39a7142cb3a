"""MMAudio's 44.1 kHz codec as a foley :class:`~foley.models.codec.Codec`.

MMAudio encodes and decodes audio with its Mel-VAE ``v1-44.pth`` (an EDM2-style
magnitude-preserving 1-D VAE: :class:`~foley.models.mel_vae_mp.MagnitudePreservingMelVAE`)
over the BigVGAN-v2 44.1 kHz / 128-band mel front end, and vocodes with NVIDIA's
``bigvgan_generator.pt`` (:class:`~foley.models.bigvgan.BigVGAN`, which loads it as published).

``v1-44.pth`` is a flat state dict in MMAudio's module layout, which
:class:`MagnitudePreservingMelVAE` shares key for key. It holds the *raw* convolution weights:
MMAudio calls ``remove_weight_norm()`` after loading, which normalises every weight once
(:func:`~foley.models.mel_vae_mp.magnitude_preserving_weight`); the converter does the same.

The MMAudio checkpoints are CC-BY-NC 4.0: foley never bundles them.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from foley.models.bigvgan import BigVGAN, load_bigvgan_checkpoint
from foley.models.codec import Codec
from foley.models.mel import LogMelSpectrogram
from foley.models.mel_vae_mp import MagnitudePreservingMelVAE, magnitude_preserving_weight

__all__ = [
    "VAE_FILE",
    "VAE_MD5",
    "VAE_URL",
    "VOCODER_FILE",
    "VOCODER_URL",
    "vae_config",
    "expected_vae_shapes",
    "convert_vae_state_dict",
    "verify_md5",
    "read_vae_file",
    "build_vae",
    "mel_front_end",
    "build_codec",
]

logger = logging.getLogger(__name__)

VAE_FILE = "v1-44.pth"
VAE_MD5 = "fab020275fa44c6589820ce025191600"  # from MMAudio's download list
VAE_URL = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/v1-44.pth"
VOCODER_FILE = "bigvgan_generator.pt"
VOCODER_URL = "https://huggingface.co/nvidia/bigvgan_v2_44khz_128band_512x"


def vae_config(**overrides: Any) -> dict[str, Any]:
    """:class:`MagnitudePreservingMelVAE` keyword arguments of MMAudio's 44.1 kHz VAE.

    Args:
        **overrides: Changed sizes (tiny test models keep the structure: ``hidden_channels``,
            ``latent_channels``).
    """
    return {"n_mels": 128, "latent_channels": 40, "hidden_channels": 512, **overrides}


def _meta_vae(config: Mapping[str, Any]) -> MagnitudePreservingMelVAE:
    with torch.device("meta"):
        return MagnitudePreservingMelVAE(**config)


def expected_vae_shapes(config: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """Key → shape of MMAudio's VAE state dict for ``config`` (default: ``v1-44.pth``'s).

    The layout is :class:`MagnitudePreservingMelVAE`'s own, built on the meta device, so a match
    with MMAudio's published manifest checks the module tree.
    """
    model = _meta_vae(vae_config() if config is None else config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_vae_state_dict(
    reference: Mapping[str, Tensor], config: Mapping[str, Any] | None = None, source: str = VAE_FILE
) -> dict[str, Tensor]:
    """MMAudio VAE state dict (raw weights, as stored) → :class:`MagnitudePreservingMelVAE` state dict.

    Every convolution weight is normalised as MMAudio's ``remove_weight_norm()`` does, in float32;
    the output gains and the per-bin mel statistics are copied.

    Args:
        reference: The state dict as read from the file (``torch.load(weights_only=True)``).
        config: :func:`vae_config` of the model (default: the released 44.1 kHz one).
        source: The file's name, for error messages.

    Raises:
        ValueError: naming every missing or unexpected key and every key whose shape differs.
    """
    config = vae_config() if config is None else config
    model = _meta_vae(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in reference]
    unexpected = sorted(set(reference) - set(expected))
    wrong = [
        f"{k}: file {tuple(reference[k].shape)}, expected {expected[k]}"
        for k in expected
        if k in reference and tuple(reference[k].shape) != expected[k]
    ]
    not_tensors = sorted(k for k in expected if k in reference and not isinstance(reference[k], Tensor))
    if missing or unexpected or wrong or not_tensors:
        lines = [
            f"{source} is not MMAudio's Mel-VAE of the expected size "
            f"({config.get('n_mels')} mel bins, {config.get('latent_channels')} latent channels, "
            f"width {config.get('hidden_channels')}):"
        ]
        lines += [f"  missing key {k}" for k in missing[:20]] + [f"  unexpected key {k}" for k in unexpected[:20]]
        lines += [f"  shape mismatch {w}" for w in wrong[:20]] + [f"  not a tensor: {k}" for k in not_tensors[:20]]
        lines.append(f"The 44.1 kHz VAE is {VAE_FILE} ({VAE_URL}); its layout is listed in "
                     "tests/fixtures/mmaudio/mmaudio_vae_44k.json.")
        raise ValueError("\n".join(lines))
    convs = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Conv1d)}
    state: dict[str, Tensor] = {}
    for key in expected:
        value = reference[key].detach().to(torch.float32)
        state[key] = (magnitude_preserving_weight(value) if key in convs else value).contiguous()
    return state


def verify_md5(path: str | os.PathLike[str], expected: str, what: str, url: str | None = None) -> None:
    """Raise if the MD5 sum of the file at ``path`` is not ``expected``.

    Args:
        path: The file.
        expected: Its published MD5 sum (hex).
        what: What the file is, for the message.
        url: Where to download it again.

    Raises:
        ValueError: the sums differ (the message names the file, both sums and where to get it).
    """
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        where = f" from {url}" if url else ""
        raise ValueError(
            f"{os.fspath(path)}: md5 {actual} differs from {expected} published for {what}; the file is damaged "
            f"or another version: download it again{where}"
        )


def read_vae_file(path: str | os.PathLike[str], md5: str | None = VAE_MD5) -> dict[str, Tensor]:
    """Read ``v1-44.pth`` (weights only, on the CPU), checking its MD5 sum unless ``md5`` is ``None``.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says where to download it).
        ValueError: wrong MD5 sum, or not a flat state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MMAudio VAE {path!r} not found; download {VAE_FILE} from {VAE_URL} and pass its path")
    if md5 is not None:
        verify_md5(path, md5, f"MMAudio's VAE {VAE_FILE}", VAE_URL)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refusals and corrupt files surface as several types
        raise ValueError(f"{path}: not a weights-only torch file ({error})") from error
    if not isinstance(payload, Mapping) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors (as {VAE_FILE}), got {type(payload).__name__}")
    return dict(payload)


def build_vae(
    path: str | os.PathLike[str], md5: str | None = VAE_MD5, config: Mapping[str, Any] | None = None
) -> MagnitudePreservingMelVAE:
    """:class:`MagnitudePreservingMelVAE` with the weights of ``v1-44.pth``, in eval mode.

    Args:
        path: The VAE file.
        md5: Expected MD5 sum; ``None`` skips the check (tests, re-saved copies).
        config: :func:`vae_config` of the model in the file (default: the released one).
    """
    config = vae_config() if config is None else dict(config)
    state = convert_vae_state_dict(read_vae_file(path, md5), config, source=os.fspath(path))
    vae = MagnitudePreservingMelVAE(**config)
    vae.load_state_dict(state, strict=True)
    return vae.eval()


def mel_front_end() -> LogMelSpectrogram:
    """The log-mel front end MMAudio's 44.1 kHz VAE and BigVGAN-v2 were trained with (waveform clamped to [-1, 1])."""
    return LogMelSpectrogram(
        sample_rate=44100, n_fft=2048, hop_length=512, win_length=2048, n_mels=128, f_min=0.0, f_max=None,
        clamp_min=1e-5, clamp_waveform=True,
    )


def build_codec(
    vae_path: str | os.PathLike[str],
    vocoder_path: str | os.PathLike[str],
    vae_md5: str | None = VAE_MD5,
    vocoder_md5: str | None = None,
    vae_overrides: Mapping[str, Any] | None = None,
    vocoder_config: Mapping[str, Any] | None = None,
) -> Codec:
    """MMAudio's 44.1 kHz codec as a foley :class:`Codec`: front end, ``v1-44.pth`` VAE, BigVGAN-v2.

    Its latent statistics are the identity, so ``Codec.encode`` returns the VAE's posterior mean
    as MMAudio's ``encode_audio(...).mean`` does; MMAudio's networks normalise latents with
    statistics of their own (``latent_mean`` / ``latent_std`` in the network file), which the
    caller may copy into ``codec.latent_mean`` / ``codec.latent_std``. Save it with
    ``codec.save(folder)`` (the codec component of a model folder).

    Args:
        vae_path: ``v1-44.pth``.
        vocoder_path: ``bigvgan_generator.pt`` of ``nvidia/bigvgan_v2_44khz_128band_512x``.
        vae_md5: Expected MD5 of the VAE file; ``None`` skips the check.
        vocoder_md5: Expected MD5 of the vocoder file, if known; ``None`` skips the check.
        vae_overrides: Sizes changed from the released VAE (:func:`vae_config`; tiny test files).
        vocoder_config: :class:`BigVGAN` arguments if not the released 44.1 kHz / 128-band / 512× ones.
    """
    vae = build_vae(vae_path, vae_md5, vae_config(**(vae_overrides or {})))
    vocoder_path = os.fspath(vocoder_path)
    if vocoder_md5 is not None and os.path.isfile(vocoder_path):
        verify_md5(vocoder_path, vocoder_md5, f"BigVGAN-v2 {VOCODER_FILE}", VOCODER_URL)
    vocoder = load_bigvgan_checkpoint(BigVGAN(**(vocoder_config or {})), vocoder_path)
    codec = Codec(vae, vocoder, mel_front_end()).eval()
    logger.info("built MMAudio's 44.1 kHz codec from %s and %s", os.fspath(vae_path), vocoder_path)
    return codec
