"""Stage-1 audio codec: waveform ⇄ normalised Mel-VAE latent, plus the mel vocoder.

``Codec`` is the object other stages use (see docs/architecture.md §3):

- ``mel(wave (B, N)) -> (B, 128, N // 512)`` log-mel,
- ``encode(wave (B, N)) -> (B, C, ceil(N / 1024))`` normalised posterior mean,
- ``decode_mel(latent) -> (B, 128, 2T)``, ``vocode(mel) -> (B, 512 · F)``,
- ``decode(latent, length) -> (B, length)``,
- ``Codec.from_checkpoint(path)`` for Lightning checkpoints of ``CodecModule`` and for
  files written by ``Codec.save``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.io.atomic import atomic_path
from foley.models.bigvgan import BigVGAN
from foley.models.mel import LogMelSpectrogram
from foley.models.mel_vae import GaussianMelVAE

__all__ = ["Codec", "prepare_waveform"]

logger = logging.getLogger(__name__)

CONFIG_KEY = "foley_codec_config"


def prepare_waveform(
    wave: Tensor, target_rate: int, sample_rate: int | None = None, name: str = "waveform"
) -> Tensor:
    """Bring audio to a finite mono ``(B, N)`` float waveform in [-1, 1] at ``target_rate``.

    Accepts ``(N,)``, ``(B, N)`` or ``(B, channels, N)``; channels are averaged. Samples
    outside [-1, 1] are clamped (the front end and vocoder assume that range).

    Args:
        wave: Input audio.
        target_rate: Rate the codec works at.
        sample_rate: Rate of ``wave``; ``None`` means it already is ``target_rate``.
        name: What to call the input in error messages.

    Raises:
        ValueError: On non-finite samples, empty input or an unsupported shape.
    """
    if not torch.is_tensor(wave):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(wave).__name__}")
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    elif wave.dim() == 3:
        wave = wave.mean(dim=1)
    elif wave.dim() != 2:
        raise ValueError(f"{name} must be (N,), (B, N) or (B, channels, N); got shape {tuple(wave.shape)}")
    if wave.shape[-1] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    wave = wave.float()
    if not torch.isfinite(wave).all():
        bad = (~torch.isfinite(wave)).sum().item()
        raise ValueError(
            f"{name} has {bad} NaN/Inf samples; clean the audio (e.g. torch.nan_to_num) before encoding"
        )
    if sample_rate is not None and sample_rate != target_rate:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        wave = AF.resample(wave, orig_freq=int(sample_rate), new_freq=int(target_rate))
    peak = wave.abs().max().item()
    if peak > 1.0:
        logger.warning("%s peaks at %.3f > 1; clamping to [-1, 1]", name, peak)
        wave = wave.clamp(-1.0, 1.0)
    return wave


class Codec(Configurable, nn.Module):
    """Mel front end + Mel-VAE + vocoder + per-channel latent statistics.

    Args:
        vae: Mel-VAE whose ``n_mels`` matches the front end: foley's
            :class:`~foley.models.mel_vae.MelVAE`, or the
            :class:`~foley.models.mel_vae_mp.MagnitudePreservingMelVAE` of MMAudio's released codec.
        vocoder: Mel → waveform generator with ``num_mels`` and ``hop_length`` attributes,
            returning ``(B, 1, N)``: :class:`BigVGAN`, or the training-free
            :class:`~foley.models.griffin_lim.GriffinLimVocoder`. Its hop must equal the front
            end's hop. Like every part, it records its constructor arguments
            (:class:`~foley.configurable.Configurable`), which :meth:`init_config` returns.
        mel: Log-mel front end; defaults to the BigVGAN-v2 44.1 kHz / 128-band one.
    """

    def __init__(self, vae: GaussianMelVAE, vocoder: nn.Module, mel: LogMelSpectrogram | None = None) -> None:
        super().__init__()
        mel = mel if mel is not None else LogMelSpectrogram()
        if vae.n_mels != mel.n_mels or vocoder.num_mels != mel.n_mels:
            raise ValueError(
                f"mel bands disagree: front end {mel.n_mels}, vae {vae.n_mels}, vocoder {vocoder.num_mels}"
            )
        if vocoder.hop_length != mel.hop_length:
            raise ValueError(
                f"vocoder upsamples by {vocoder.hop_length} but the mel hop is {mel.hop_length}; "
                "prod(upsample_rates) must equal hop_length"
            )
        self.mel = mel
        self.vae = vae
        self.vocoder = vocoder
        channels = vae.latent_channels
        self.register_buffer("latent_mean", torch.zeros(channels))
        self.register_buffer("latent_std", torch.ones(channels))
        # Number of latent frames the statistics were estimated from (0 = identity stats).
        self.register_buffer("latent_stats_count", torch.zeros((), dtype=torch.float64))

    # ----------------------------------------------------------------- geometry
    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def hop_length(self) -> int:
        """Samples per mel frame."""
        return self.mel.hop_length

    @property
    def samples_per_latent(self) -> int:
        """Samples per latent frame (1024 at the default configuration)."""
        return self.mel.hop_length * self.vae.downsample_factor

    @property
    def latent_rate(self) -> float:
        """Latent frames per second (≈43.07 Hz at the default configuration)."""
        return self.sample_rate / self.samples_per_latent

    def num_latents(self, num_samples: int) -> int:
        """Latent frames for a waveform of ``num_samples``: ``ceil(N / samples_per_latent)``."""
        return math.ceil(num_samples / self.samples_per_latent)

    def pad_to_latent_grid(self, wave: Tensor) -> Tensor:
        """Zero-pad ``(B, N)`` at the end to a whole number of latent frames."""
        target = self.num_latents(wave.shape[-1]) * self.samples_per_latent
        return nn.functional.pad(wave, (0, target - wave.shape[-1]))

    # ------------------------------------------------------------ statistics
    def normalize_latent(self, latent: Tensor) -> Tensor:
        return (latent - self.latent_mean.view(1, -1, 1)) / self.latent_std.view(1, -1, 1)

    def denormalize_latent(self, latent: Tensor) -> Tensor:
        return latent * self.latent_std.view(1, -1, 1) + self.latent_mean.view(1, -1, 1)

    @torch.no_grad()
    def update_latent_stats(self, latent: Tensor, mask: Tensor | None = None, momentum: float | None = 0.01) -> None:
        """Fold a batch of raw (unnormalised) latents into the per-channel mean/std.

        Args:
            latent: Raw posterior means ``(B, C, T)``.
            mask: ``(B, T)`` True on frames that cover real audio.
            momentum: Exponential moving-average weight of the new batch, which tracks the
                drifting encoder during training; ``None`` accumulates an exact running
                mean/variance over everything seen (for a dedicated pass over a data set).
        """
        values = latent.detach().double().transpose(1, 2).reshape(-1, latent.shape[1])
        if mask is not None:
            values = values[mask.reshape(-1)]
        count = values.shape[0]
        if count < 2:
            return
        batch_mean = values.mean(0)
        batch_var = values.var(0, unbiased=False)
        prev_count = float(self.latent_stats_count)
        old_mean = self.latent_mean.double()
        old_var = self.latent_std.double().pow(2)
        if prev_count == 0:
            new_mean, new_var = batch_mean, batch_var
        elif momentum is None:
            total = prev_count + count
            delta = batch_mean - old_mean
            new_mean = old_mean + delta * count / total
            new_var = (old_var * prev_count + batch_var * count + delta.pow(2) * prev_count * count / total) / total
        else:
            new_mean = (1 - momentum) * old_mean + momentum * batch_mean
            new_var = (1 - momentum) * old_var + momentum * batch_var
        self.latent_mean.copy_(new_mean.to(self.latent_mean.dtype))
        self.latent_std.copy_(new_var.clamp_min(1e-8).sqrt().to(self.latent_std.dtype))
        self.latent_stats_count.add_(count)

    @torch.no_grad()
    def fit_latent_stats(self, batches: Iterable[Mapping[str, Tensor] | Tensor], max_batches: int | None = None) -> int:
        """Recompute the latent statistics exactly over a data set (replaces the running estimate).

        Args:
            batches: Batch dicts (``audio_mono`` and optional ``audio_mask``, as the DataModule yields)
                or plain waveforms ``(B, N)`` at the codec's sample rate.
            max_batches: Stop after this many batches.

        Returns:
            Number of latent frames the statistics were computed from.
        """
        self.latent_mean.zero_()
        self.latent_std.fill_(1.0)
        self.latent_stats_count.zero_()
        device = self.latent_mean.device
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            wave = batch["audio_mono"] if isinstance(batch, Mapping) else batch
            mask = batch.get("audio_mask") if isinstance(batch, Mapping) else None
            wave = prepare_waveform(wave.to(device), self.sample_rate, name="audio_mono")
            mask = torch.ones_like(wave, dtype=torch.bool) if mask is None else mask.to(device).bool()
            padded = self.pad_to_latent_grid(wave * mask)
            mask = nn.functional.pad(mask, (0, padded.shape[-1] - mask.shape[-1]), value=False)
            mean, _ = self.vae.encode(self.mel(padded))
            self.update_latent_stats(mean, mask[:, :: self.samples_per_latent], momentum=None)
        return int(self.latent_stats_count)

    # --------------------------------------------------------------- encode
    def encode(
        self, wave: Tensor, sample_rate: int | None = None, sample_posterior: bool = False, normalize: bool = True
    ) -> Tensor:
        """Waveform → latent ``(B, C, ceil(N / samples_per_latent))``.

        Args:
            wave: ``(N,)``, ``(B, N)`` or ``(B, channels, N)`` audio in [-1, 1]; stereo is mixed down.
            sample_rate: Rate of ``wave`` if it differs from ``self.sample_rate`` (resampled;
                ``N`` then counts samples after resampling).
            sample_posterior: Draw from the posterior instead of returning its mean.
            normalize: Apply the stored per-channel statistics (what stage 2 trains on).
        """
        wave = prepare_waveform(wave, self.sample_rate, sample_rate)
        mel = self.mel(self.pad_to_latent_grid(wave))
        mean, logvar = self.vae.encode(mel)
        latent = self.vae.sample(mean, logvar) if sample_posterior else mean
        return self.normalize_latent(latent) if normalize else latent

    # --------------------------------------------------------------- decode
    def decode_mel(self, latent: Tensor, normalized: bool = True) -> Tensor:
        """Latent ``(B, C, T)`` → log-mel ``(B, n_mels, 2T)``."""
        if latent.dim() != 3 or latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"latent must be (B, {self.latent_channels}, T), got shape {tuple(latent.shape)}"
            )
        return self.vae.decode(self.denormalize_latent(latent) if normalized else latent)

    def vocode(self, mel: Tensor) -> Tensor:
        """Log-mel ``(B, n_mels, F)`` → waveform ``(B, hop · F)``."""
        return self.vocoder(mel).squeeze(1)

    def decode(self, latent: Tensor, length: int | None = None, normalized: bool = True) -> Tensor:
        """Latent ``(B, C, T)`` → waveform ``(B, length)``; ``length`` defaults to ``T · samples_per_latent``."""
        full = latent.shape[-1] * self.samples_per_latent
        length = full if length is None else int(length)
        if not 0 < length <= full:
            raise ValueError(
                f"length {length} is outside (0, {full}] for {latent.shape[-1]} latent frames "
                f"of {self.samples_per_latent} samples"
            )
        return self.vocode(self.decode_mel(latent, normalized))[..., :length]

    def forward(self, wave: Tensor) -> Tensor:
        """Round trip: waveform ``(B, N)`` → reconstruction ``(B, N)``."""
        wave = prepare_waveform(wave, self.sample_rate)
        return self.decode(self.encode(wave), wave.shape[-1])

    # ---------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write weights + architecture to ``path``, atomically.

        A path without a ``.safetensors`` / ``.pt`` suffix becomes a folder with ``codec.json`` and
        ``codec.safetensors``: the codec component exactly as a model folder holds it
        (``foley export``, docs/architecture.md §8), so stages 2 and 3 can train against either.
        The single-file forms are kept for files written before the model folder existed.
        """
        path = os.fspath(path)
        if not path.endswith((".safetensors", ".pt")):
            from foley.model_folder import save_component

            save_component(self, path, "codec", overwrite=True)
            return
        config_json = json.dumps(self.init_config())
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            if path.endswith(".safetensors"):
                from safetensors.torch import save_file

                save_file(state, str(tmp), metadata={CONFIG_KEY: config_json})
            else:
                torch.save({CONFIG_KEY: config_json, "state_dict": state}, tmp)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Codec:
        """Build an untrained codec from a ``class_path``/``init_args`` mapping (see :meth:`init_config`)."""
        from foley.configurable import build

        if "class_path" not in config:  # a bare init_args mapping
            config = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(config)}
        return build(config, cls, where="codec config")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Codec:
        """Rebuild a trained codec from a ``CodecModule`` Lightning checkpoint or a ``Codec.save`` file.

        Args:
            path: ``.ckpt`` from ``foley fit --config configs/stage1.yaml``, a model folder, or a
                folder / ``.safetensors`` / ``.pt`` written by :meth:`save`.
            map_location: Device for the weights.
        """
        path = os.fspath(path)
        if os.path.isdir(path):  # a model folder, or a codec folder from Codec.save
            from foley.model_folder import load_component

            return load_component(path, "codec", cls).to(map_location).eval()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"codec checkpoint {path!r} does not exist")
        config: Any = None
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(path, framework="pt") as handle:
                config = (handle.metadata() or {}).get(CONFIG_KEY)
            state = load_file(path, device=str(map_location))
        else:
            try:
                payload = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as error:  # unpickling refusals surface as several exception types
                raise ValueError(
                    f"could not read {path!r} as a weights-only torch checkpoint: {error}"
                ) from error
            if not isinstance(payload, Mapping):
                raise ValueError(f"{path!r} is not a codec checkpoint (top level is {type(payload).__name__})")
            config = payload.get(CONFIG_KEY)
            if "state_dict" not in payload:
                raise ValueError(f"{path!r} has no 'state_dict'; is it a stage-1 (CodecModule) checkpoint?")
            state = payload["state_dict"]
            if any(k.startswith("codec.") for k in state):
                state = {k[len("codec.") :]: v for k, v in state.items() if k.startswith("codec.")}
            if config is None:
                hparams = payload.get("hyper_parameters") or {}
                config = hparams.get("codec") if isinstance(hparams.get("codec"), Mapping) else None
        if config is None:
            raise ValueError(
                f"{path!r} does not record the codec architecture (no {CONFIG_KEY!r}); "
                "it was not written by CodecModule or Codec.save"
            )
        if isinstance(config, str):
            config = json.loads(config)
        codec = cls.from_config(config)
        codec.load_state_dict(state, strict=True)
        return codec.to(map_location).eval()
