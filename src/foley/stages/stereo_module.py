"""Stage 3 training recipe: :class:`~foley.models.mono2stereo.Mono2Stereo` on a frozen codec.

Loss. The network predicts the left share ``p`` of every mel bin, so it is trained on
exactly that: the target ``p* = L / (L + R)`` comes from the codec's mels of the true
left and right channels, and the loss is a soft-target binary cross-entropy between
``sigmoid(logit)`` and ``p*``, weighted per bin by the linear mono magnitude (normalised
per clip). Silent bins, whose ratio is noise, carry almost no weight; loud bins — the ones
that set the audible inter-channel level difference — dominate; quiet and loud clips
count the same. Cross-entropy on the ratio keeps a useful gradient at hard pans
(``p* → 0`` or ``1``) where a loss on log-mels of each ear would be dominated by the
quieter ear's floor.

Validation also reports the frame-level ILD correlation in the mel domain (cheap) and,
on the first batch, renders stereo waveforms through the vocoder and scores them with
:func:`foley.metrics.synthetic.pan_correlation` (the number the demo reports).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from foley.models.mono2stereo import Mono2Stereo, apply_pan, pan_target

__all__ = ["StereoModule", "mel_ild_correlation", "NETWORK_CONFIG_KEY"]

logger = logging.getLogger(__name__)

NETWORK_CONFIG_KEY = "foley_stereo_network_config"


def mel_ild_correlation(predicted: Tensor, target: Tensor, frame_mask: Tensor | None = None, dynamic_range_db: float = 40.0) -> Tensor:
    """Per-clip Pearson correlation over time of the frame ILD of two stereo log-mels.

    The frame ILD is ``10·log10(Σ_f L² / Σ_f R²)`` over mel bins in linear magnitude.
    Frames more than ``dynamic_range_db`` below the clip's loudest target frame are skipped.

    Args:
        predicted: ``(B, 2, n_mels, F)`` stereo log-mel.
        target: ``(B, 2, n_mels, F)`` stereo log-mel.
        frame_mask: ``(B, F)`` True on real frames.

    Returns:
        ``(B,)`` correlations; ``nan`` where fewer than 3 frames qualify or an ILD is constant.
    """
    def frame_power(mel: Tensor) -> Tensor:
        return (2.0 * mel.double()).exp().sum(dim=2)  # (B, 2, F)

    p_pred, p_true = frame_power(predicted), frame_power(target)
    ild_pred = 10.0 * torch.log10(p_pred[:, 0] / p_pred[:, 1])
    ild_true = 10.0 * torch.log10(p_true[:, 0] / p_true[:, 1])
    level = 10.0 * torch.log10(p_true.sum(dim=1))
    valid = level >= level.amax(dim=1, keepdim=True) - dynamic_range_db
    if frame_mask is not None:
        valid &= frame_mask
    out = torch.full((predicted.shape[0],), math.nan, dtype=torch.float64)
    for i in range(predicted.shape[0]):
        x, y = ild_pred[i][valid[i]], ild_true[i][valid[i]]
        if x.numel() < 3:
            continue
        xc, yc = x - x.mean(), y - y.mean()
        denominator = xc.norm() * yc.norm()
        if denominator > 1e-9:
            out[i] = (xc * yc).sum() / denominator
    return out


class StereoModule(LightningModule):
    """Trains Mono2Stereo on stereo targets and renders stereo audio from mono.

    Args:
        network: the pan-mask network.
        codec: frozen stage-1 codec (anything with ``mel(wave)``, ``vocode(mel)``,
            ``hop_length``, ``sample_rate``); give this or ``codec_checkpoint``.
        codec_checkpoint: stage-1 checkpoint loaded with ``Codec.from_checkpoint``. Its weights
            are then not copied into stage-3 checkpoints (the path is recorded instead).
        video_stream: which batch stream the network reads: ``"sync"`` (dense in time),
            ``"clip"``, or ``"none"``.
        render: how :meth:`generate` turns the stereo mel into audio: ``"vocoder"`` (each ear's mel
            through the codec's vocoder, as in the paper) or ``"stft"`` (the pan ratios, spread from
            mel bands to STFT bins, scale the mono waveform's STFT; keeps the mono signal bit-for-bit
            where nothing is panned and avoids a second vocoder pass on already vocoded audio).
            ``"stft"`` needs a codec whose ``mel`` is a :class:`foley.models.mel.LogMelSpectrogram`.
        num_examples: clips of the first validation batch rendered to stereo, scored with the
            waveform pan correlation and logged as audio (when the logger supports it).
        optimizer: optimiser factory, called with the network's parameters.
        scheduler: optional learning-rate scheduler factory (stepped every optimiser step).
    """

    def __init__(
        self,
        network: Mono2Stereo,
        codec: nn.Module | None = None,
        codec_checkpoint: str | None = None,
        video_stream: Literal["sync", "clip", "none"] = "sync",
        render: Literal["vocoder", "stft"] = "vocoder",
        num_examples: int = 2,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if (codec is None) == (codec_checkpoint is None):
            raise ValueError("StereoModule needs exactly one of `codec` (a module) or `codec_checkpoint` (a path)")
        if codec is None:
            from foley.models.codec import Codec

            codec = Codec.from_checkpoint(codec_checkpoint)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        # Objects passed directly from Python are not plain data; under LightningCLI these entries
        # are class_path/init_args dicts and are kept, so load_from_checkpoint can rebuild the module.
        self.remove_ignored_hparams([k for k, v in self.hparams.items() if isinstance(v, nn.Module) or callable(v)])
        self.network = network
        self.codec = codec.eval().requires_grad_(False)
        self.codec_from_file = codec_checkpoint is not None
        self.video_stream = video_stream
        self.render = render
        self.num_examples = num_examples
        self.optimizer = optimizer
        self.scheduler = scheduler

    # ----------------------------------------------------------------- helpers
    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    def train(self, mode: bool = True) -> StereoModule:
        super().train(mode)
        self.codec.eval()  # frozen: never let its norm/dropout layers switch to training behaviour
        return self

    def _frames(self, batch: Mapping[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        if self.video_stream == "none" or f"{self.video_stream}_frames" not in batch:
            return None, None
        return batch[f"{self.video_stream}_frames"].to(self.device), batch[f"{self.video_stream}_mask"].to(self.device)

    def _mel(self, wave: Tensor) -> Tensor:
        """``(B, N)`` → ``(B, n_mels, ceil(N / hop))`` log-mel (the tail is zero-padded to a whole frame)."""
        hop = int(self.codec.hop_length)
        padded = F.pad(wave.float(), (0, (-wave.shape[-1]) % hop))
        with torch.no_grad():
            return self.codec.mel(padded)

    def _frame_mask(self, audio_mask: Tensor, num_frames: int) -> Tensor:
        hop = int(self.codec.hop_length)
        padded = F.pad(audio_mask, (0, num_frames * hop - audio_mask.shape[-1]))
        return padded.reshape(audio_mask.shape[0], num_frames, hop).any(-1)

    def _pan_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        audio = batch["audio"]
        b = audio.shape[0]
        mono_mel = self._mel(batch["audio_mono"])
        stereo_mel = self._mel(audio.flatten(0, 1)).unflatten(0, (b, 2))
        frames, frames_mask = self._frames(batch)
        logits = self.network(mono_mel, frames, frames_mask)
        target, energy = pan_target(stereo_mel)
        frame_mask = self._frame_mask(batch["audio_mask"], mono_mel.shape[-1]).unsqueeze(1).float()
        weight = energy * frame_mask
        weight = weight / weight.flatten(1).sum(-1).clamp_min(1e-12).view(b, 1, 1)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        loss = (weight * bce).sum() / b
        with torch.no_grad():
            pan = torch.sigmoid(logits.float())
            stats = {
                "pan_mae": ((weight * (pan - target).abs()).sum() / b),
                "ild_corr_mel": torch.nanmean(
                    mel_ild_correlation(apply_pan(mono_mel, pan), stereo_mel, frame_mask.squeeze(1).bool())
                ).float(),
            }
        return loss, stats

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, stats = self._pan_loss(batch)
        b = batch["audio"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/pan_mae", stats["pan_mae"], batch_size=b)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")
        if batch_idx == 0 and self.num_examples > 0:
            self._log_examples(batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # Generation metrics of `foley test` come from callbacks (pl_module.generate).
        self._evaluate(batch, "test")

    def _evaluate(self, batch: Mapping[str, Any], split: str) -> None:
        loss, stats = self._pan_loss(batch)
        b = batch["audio"].shape[0]
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True, batch_size=b)
        self.log(f"{split}/pan_mae", stats["pan_mae"], sync_dist=True, batch_size=b)
        if not torch.isnan(stats["ild_corr_mel"]):
            self.log(f"{split}/ild_corr_mel", stats["ild_corr_mel"], sync_dist=True, batch_size=b)

    def _log_examples(self, batch: Mapping[str, Any]) -> None:
        from foley.metrics.synthetic import pan_correlation

        count = min(self.num_examples, batch["audio"].shape[0])
        subset = {k: (v[:count] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()}
        stereo = self.generate(subset)
        correlations = []
        for i in range(count):
            n = int(subset["audio_mask"][i].sum())
            corr, _ = pan_correlation(stereo[i, :, :n].cpu(), subset["audio"][i, :, :n].cpu(), self.sample_rate)
            if not math.isnan(corr):
                correlations.append(corr)
            experiment = getattr(self.logger, "experiment", None)
            if hasattr(experiment, "add_audio"):
                key = subset["key"][i] if "key" in subset else str(i)
                # torch's TensorBoard writer only takes mono clips: log each ear.
                for side, channel in (("left", 0), ("right", 1)):
                    experiment.add_audio(
                        f"val/stereo/{key}/{side}", stereo[i, channel, :n].clamp(-1, 1).cpu(), self.global_step, self.sample_rate
                    )
        if correlations:
            self.log("val/pan_corr", sum(correlations) / len(correlations), batch_size=count)

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def stereo_mel(self, mono_mel: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        """``(B, n_mels, F)`` mono log-mel (+ the batch's video stream) → ``(B, 2, n_mels, F)``."""
        frames, frames_mask = self._frames(batch or {})
        return self.network.stereo_mel(mono_mel, frames, frames_mask)

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any]) -> Tensor:
        """Stereo waveform ``(B, 2, N)`` from a mono mel or waveform (+ the video stream).

        The mono source is ``batch["mel_mono"]`` ``(B, n_mels, F)`` when present — the
        stage-2 generator's own log-mel (:meth:`FlowModule.generate_mel`), so nothing is
        vocoded and re-analysed before panning — otherwise the log-mel of
        ``batch["audio_mono"]`` ``(B, N)``, with ``N`` the length of ``batch["audio_mask"]``
        (every batch of :func:`foley.batch.collate_examples` has it). A given mel is cut to the
        ``ceil(N / hop)`` frames the codec's mel of ``N`` samples has (the generator's mel covers
        whole latent frames), so the network sees the frame grid it was trained on.

        With ``render="vocoder"`` each ear's mel is rendered by the codec's vocoder; with
        ``render="stft"`` the pan ratios are applied to the STFT of the mono waveform
        (``audio_mono``, or the vocoded ``mel_mono`` when only the mel is given). Either way the
        result has exactly ``N`` samples.
        """
        mono = batch["audio_mono"].to(self.device).float() if "audio_mono" in batch else None
        hop = int(self.codec.hop_length)
        n = int(batch["audio_mask"].shape[-1])
        if "mel_mono" in batch:
            mono_mel = batch["mel_mono"].to(self.device).float()
            frames_needed = math.ceil(n / hop)
            if mono_mel.shape[-1] < frames_needed:
                raise ValueError(
                    f"mel_mono has {mono_mel.shape[-1]} frames but {n} samples need {frames_needed} "
                    f"(hop {hop}); pass the generator's full mel"
                )
            mono_mel = mono_mel[..., :frames_needed]
        elif mono is not None:
            mono_mel = self._mel(mono)
        else:
            raise KeyError("StereoModule.generate needs batch['mel_mono'] or batch['audio_mono']")
        b = mono_mel.shape[0]
        frames, frames_mask = self._frames(batch)
        if self.render == "stft":
            if mono is None:
                # One vocoder pass for the mono signal whose STFT the pan ratios scale.
                mono = F.pad(self.codec.vocode(mono_mel).float(), (0, max(0, n - mono_mel.shape[-1] * hop)))[..., :n]
            return self._render_stft(mono, self.network.pan(mono_mel, frames, frames_mask))
        stereo = self.network.stereo_mel(mono_mel, frames, frames_mask)
        wave = self.codec.vocode(stereo.flatten(0, 1)).unflatten(0, (b, 2))
        return F.pad(wave, (0, max(0, n - wave.shape[-1])))[..., :n].float()

    def _render_stft(self, mono: Tensor, pan: Tensor) -> Tensor:
        """Apply mel-band pan ratios ``(B, n_mels, F)`` to the STFT of ``mono`` ``(B, N)``."""
        front = self.codec.mel
        basis = front.mel_basis.float()  # (n_mels, n_freqs)
        # Each linear bin takes the filter-weighted mean pan of the mel bands covering it;
        # bins no filter covers stay centred.
        coverage = basis.sum(0)
        weights = basis / coverage.clamp_min(1e-12)
        # Spread the deviation from centre, so an unpanned band stays exactly at 0.5 (no rounding ILD).
        pan_linear = 0.5 + torch.einsum("mk,bmf->bkf", weights, pan - 0.5)
        pan_linear = torch.where(coverage.view(1, -1, 1) > 0, pan_linear, torch.full_like(pan_linear, 0.5))
        # Mel frame j is centred on sample j·hop + hop/2, STFT frame k (center=True) on k·hop:
        # the pan of STFT frame k is the mean of mel frames k-1 and k.
        padded = F.pad(pan_linear, (1, 1), mode="replicate")
        pan_frames = 0.5 * (padded[..., :-1] + padded[..., 1:])
        n = mono.shape[-1]
        spec = torch.stft(
            mono, front.n_fft, front.hop_length, front.win_length, window=front.window, center=True, return_complex=True
        )
        pan_frames = pan_frames[..., : spec.shape[-1]]
        ears = torch.stack([spec * (2.0 * pan_frames), spec * (2.0 * (1.0 - pan_frames))], dim=1)
        wave = torch.istft(
            ears.flatten(0, 1), front.n_fft, front.hop_length, front.win_length, window=front.window, center=True, length=n
        )
        return wave.unflatten(0, (mono.shape[0], 2)).float()

    # ---------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.network.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "step"}}

    # ----------------------------------------------------------- persistence
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NETWORK_CONFIG_KEY] = self.network.init_config()
        if self.codec_from_file:
            # The frozen codec is reloaded from its own checkpoint; do not copy it into every stage-3 file.
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("codec.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if not any(k.startswith("codec.") for k in state):
            state.update({f"codec.{k}": v for k, v in self.codec.state_dict().items()})

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], codec: nn.Module, map_location: str | torch.device = "cpu"
    ) -> StereoModule:
        """Rebuild a trained stage-3 module around an already loaded ``codec``.

        Only the network's architecture (stored by :meth:`on_save_checkpoint`) and weights are
        read from ``path``; the codec weights in the file, if any, are ignored.

        Args:
            path: stage-3 ``.ckpt`` written by ``foley fit --config configs/stage3.yaml``.
            codec: the stage-1 codec the network was trained with.
            map_location: device for the weights.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"stage-3 checkpoint {path!r} does not exist")
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(checkpoint, Mapping) or NETWORK_CONFIG_KEY not in checkpoint:
            raise ValueError(
                f"{path!r} is not a stage-3 checkpoint: no {NETWORK_CONFIG_KEY!r} entry "
                "(expected a file written while training foley.stages.stereo_module.StereoModule)"
            )
        prefix = "network."
        network_state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        hparams = checkpoint.get("hyper_parameters", {})
        module = cls.from_network_state(
            checkpoint[NETWORK_CONFIG_KEY], network_state, codec, hparams.get("video_stream", "sync"), hparams.get("render", "vocoder")
        )
        return module.to(map_location)

    @classmethod
    def from_network_state(
        cls,
        network_config: Mapping[str, Any],
        network_state: Mapping[str, Tensor],
        codec: nn.Module,
        video_stream: Literal["sync", "clip", "none"] = "sync",
        render: Literal["vocoder", "stft"] = "vocoder",
    ) -> StereoModule:
        """Build the module from a network ``class_path``/``init_args`` config and its state dict."""
        from foley.configurable import build

        network = build(network_config, Mono2Stereo, where="stage-3 network config")
        network.load_state_dict(dict(network_state))
        return cls(network=network, codec=codec, video_stream=video_stream, render=render, num_examples=0).eval()
