"""Stage 1: train the Mel-VAE and the vocoder of a :class:`~foley.models.codec.Codec`.

GAN training uses manual optimisation: one discriminator step and one generator step
per batch. The generator step updates whichever of the VAE and vocoder are trained;
the VAE learns mel reconstruction under the margin KL, the vocoder learns mel → wave
from ground-truth mels (or the VAE's reconstructions) with multi-resolution mel/STFT,
adversarial and feature-matching losses.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from foley.models.bigvgan import load_bigvgan_checkpoint
from foley.models.codec import CONFIG_KEY, Codec
from foley.models.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from foley.stages.codec_losses import (
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    gaussian_kl,
    generator_adversarial_loss,
    margin_kl_loss,
    masked_l1,
)
from foley.stages.training_rng import StepGenerator

__all__ = ["CodecModule"]

logger = logging.getLogger(__name__)


class CodecModule(LightningModule):
    """LightningModule for stage-1 codec training.

    Args:
        codec: The codec to train (mel front end, Mel-VAE, vocoder, latent statistics).
        period_discriminator: Multi-period waveform discriminator; ``None`` disables it.
        resolution_discriminator: Multi-resolution spectrogram discriminator; ``None`` disables it.
        generator_optimizer: Optimiser for the trained codec parts; default AdamW(lr 2e-4, betas (0.8, 0.99)).
        discriminator_optimizer: Optimiser for the discriminators; same default.
        generator_scheduler: Optional scheduler, stepped once per generator step.
        discriminator_scheduler: Optional scheduler, stepped once per discriminator step.
        train_vae: Update the Mel-VAE (and its latent statistics).
        train_vocoder: Update the vocoder.
        kl_margin: Δ of the margin KL ``max(0, D_KL − Δ)``, in nats per latent element.
        kl_weight: Weight of the margin KL.
        vae_mel_weight: Weight of the VAE's log-mel L1.
        vocoder_mel_weight: Weight of the vocoder's multi-resolution mel L1 (BigVGAN uses 15).
        stft_weight: Weight of the vocoder's multi-resolution STFT loss.
        adversarial_weight: Weight of the generator's LSGAN loss.
        feature_matching_weight: Weight of discriminator feature matching.
        gan_start_step: Generator steps before the discriminators start (reconstruction warm-up).
        vocoder_segment_frames: Mel frames per random vocoder training crop (``None``: whole clip).
        vocode_reconstruction: Feed the vocoder the VAE's (detached) reconstructed mel instead of the
            ground truth, to adapt it to the VAE's artefacts.
        latent_stats_momentum: EMA weight for the per-channel latent mean/std updated while training the VAE.
        grad_clip_norm: Gradient-norm clip for both optimisers (``None``: off).
        pretrained_vocoder: Local BigVGAN generator checkpoint (e.g. ``bigvgan_generator.pt``) to start from.
        pretrained_codec: Stage-1 checkpoint (``.ckpt`` or ``Codec.save`` file) whose weights initialise the codec.
        num_logged_examples: Reconstructions logged as audio and mel images per validation epoch.
        stft_resolutions: ``(n_fft, hop, win)`` triples of the STFT loss.
        mel_loss_n_ffts: FFT sizes of the multi-resolution mel loss.
        mel_loss_n_mels: Mel bands of the multi-resolution mel loss.
    """

    def __init__(
        self,
        codec: Codec,
        period_discriminator: MultiPeriodDiscriminator | None = None,
        resolution_discriminator: MultiResolutionDiscriminator | None = None,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        generator_scheduler: LRSchedulerCallable | None = None,
        discriminator_scheduler: LRSchedulerCallable | None = None,
        train_vae: bool = True,
        train_vocoder: bool = True,
        kl_margin: float = 0.0,
        kl_weight: float = 1e-3,
        vae_mel_weight: float = 1.0,
        vocoder_mel_weight: float = 15.0,
        stft_weight: float = 1.0,
        adversarial_weight: float = 1.0,
        feature_matching_weight: float = 2.0,
        gan_start_step: int = 0,
        vocoder_segment_frames: int | None = 128,
        vocode_reconstruction: bool = False,
        latent_stats_momentum: float = 0.01,
        grad_clip_norm: float | None = 500.0,
        pretrained_vocoder: str | None = None,
        pretrained_codec: str | None = None,
        num_logged_examples: int = 2,
        stft_resolutions: Sequence[Sequence[int]] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048)),
        mel_loss_n_ffts: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        mel_loss_n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
    ) -> None:
        super().__init__()
        if not (train_vae or train_vocoder):
            raise ValueError("CodecModule has nothing to train: set train_vae and/or train_vocoder to true")
        if kl_margin < 0:
            raise ValueError(f"kl_margin must be ≥ 0, got {kl_margin}")
        self.save_hyperparameters(
            ignore=[
                "codec",
                "period_discriminator",
                "resolution_discriminator",
                "generator_optimizer",
                "discriminator_optimizer",
                "generator_scheduler",
                "discriminator_scheduler",
            ]
        )
        self.automatic_optimization = False
        self.codec = codec
        if pretrained_codec is not None:
            codec.load_state_dict(Codec.from_checkpoint(pretrained_codec).state_dict())
            logger.info("initialised the codec from %s", pretrained_codec)
        if pretrained_vocoder is not None:
            load_bigvgan_checkpoint(codec.vocoder, pretrained_vocoder)
        discriminators = [d for d in (period_discriminator, resolution_discriminator) if d is not None]
        self.discriminators = nn.ModuleList(discriminators if train_vocoder else [])
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        self.generator_scheduler = generator_scheduler
        self.discriminator_scheduler = discriminator_scheduler
        self.train_vae = train_vae
        self.train_vocoder = train_vocoder
        codec.vae.requires_grad_(train_vae)
        codec.vocoder.requires_grad_(train_vocoder)
        self.stft_loss = MultiResolutionSTFTLoss(stft_resolutions)
        self.mel_loss = MultiResolutionMelLoss(codec.sample_rate, mel_loss_n_ffts, mel_loss_n_mels)
        # Counts generator updates (Lightning's global_step counts every optimiser's steps).
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        # Training draws (posterior samples, vocoder crops): exact on resume.
        self._step_generator = StepGenerator()

    # ----------------------------------------------------------------- API
    def encode(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """Waveform ``(B, N)`` → normalised latent ``(B, C, ceil(N / 1024))``."""
        return self.codec.encode(wave, sample_rate=sample_rate)

    def decode(self, latent: Tensor, length: int | None = None) -> Tensor:
        """Normalised latent → waveform ``(B, length)``."""
        return self.codec.decode(latent, length)

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any]) -> Tensor:
        """Reconstruct ``batch["audio_mono"]`` through the codec → ``(B, 1, N)``, zero on padding."""
        wave, mask = self._prepare_batch(batch)
        length = batch["audio_mono"].shape[-1]
        recon = self.codec.decode(self.codec.encode(wave), wave.shape[-1])[:, :length]
        return (recon * mask[:, :length]).unsqueeze(1)

    # ---------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        generator_params = [p for p in self.codec.parameters() if p.requires_grad]
        gen_opt = (
            self.generator_optimizer(generator_params)
            if self.generator_optimizer is not None
            else torch.optim.AdamW(generator_params, lr=2e-4, betas=(0.8, 0.99))
        )
        optimizers = [gen_opt]
        schedulers = []
        if self.generator_scheduler is not None:
            schedulers.append(self.generator_scheduler(gen_opt))
        if len(self.discriminators):
            disc_params = list(self.discriminators.parameters())
            disc_opt = (
                self.discriminator_optimizer(disc_params)
                if self.discriminator_optimizer is not None
                else torch.optim.AdamW(disc_params, lr=2e-4, betas=(0.8, 0.99))
            )
            optimizers.append(disc_opt)
            if self.discriminator_scheduler is not None:
                schedulers.append(self.discriminator_scheduler(disc_opt))
        return optimizers, schedulers

    # --------------------------------------------------------------- data
    def _prepare_batch(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``audio_mono`` (+ ``audio_mask``) → finite wave and mask, zero-padded to whole latent frames."""
        if "audio_mono" not in batch:
            raise KeyError("CodecModule needs batch['audio_mono'] (B, N); see docs/architecture.md §2")
        wave = batch["audio_mono"]
        if wave.dim() == 3:  # (B, channels, N): mix down
            wave = wave.mean(dim=1)
        wave = wave.float()
        mask = batch.get("audio_mask")
        mask = torch.ones_like(wave, dtype=torch.bool) if mask is None else mask.bool()
        finite = torch.isfinite(wave)
        if not finite.all():
            keys = batch.get("key", [])
            bad_keys = [keys[i] for i in range(len(keys)) if not finite[i].all()] if keys else []
            rank_zero_warn(f"non-finite audio samples in batch (keys {bad_keys}); zeroed and masked out")
            wave = torch.where(finite, wave, torch.zeros_like(wave))
            mask = mask & finite
        wave = wave.clamp(-1.0, 1.0) * mask
        wave = self.codec.pad_to_latent_grid(wave)
        mask = nn.functional.pad(mask, (0, wave.shape[-1] - mask.shape[-1]), value=False)
        return wave, mask

    def _frame_masks(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Sample mask → (mel-frame mask, latent-frame mask): a frame counts if its first sample is real."""
        return mask[:, :: self.codec.hop_length], mask[:, :: self.codec.samples_per_latent]

    def _vocoder_crop(self, mel: Tensor, wave: Tensor, frame_mask: Tensor,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        frames = self.hparams.vocoder_segment_frames
        total = mel.shape[-1]
        if frames is None or frames >= total:
            return mel, wave
        # Start inside the real part of the shortest clip so crops are rarely all padding.
        valid = int(frame_mask.sum(dim=1).min().item())
        device = generator.device if generator is not None else None
        start = int(torch.randint(0, max(valid - frames, 0) + 1, (), generator=generator, device=device).item())
        start = min(start, total - frames)
        hop = self.codec.hop_length
        return mel[..., start : start + frames], wave[..., start * hop : (start + frames) * hop]

    def _discriminate(self, wave: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        logits, features = [], []
        for disc in self.discriminators:
            sub_logits, sub_features = disc(wave.unsqueeze(1))
            logits.extend(sub_logits)
            features.extend(sub_features)
        return logits, features

    # ------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        gen_opt = optimizers[0]
        disc_opt = optimizers[1] if len(optimizers) > 1 else None
        schedulers = self.lr_schedulers()
        schedulers = [] if schedulers is None else schedulers if isinstance(schedulers, list) else [schedulers]

        generator = self._step_generator(self, batch_idx)
        wave, mask = self._prepare_batch(batch)
        frame_mask, latent_mask = self._frame_masks(mask)
        with torch.no_grad():
            mel = self.codec.mel(wave)
        batch_size = wave.shape[0]
        logs: dict[str, Tensor] = {}
        generator_loss = wave.new_zeros(())
        mel_recon = None

        if self.train_vae:
            mean, logvar = self.codec.vae.encode(mel)
            mel_recon = self.codec.vae.decode(self.codec.vae.sample(mean, logvar, generator=generator))
            recon = masked_l1(mel_recon, mel, frame_mask)
            kl = gaussian_kl(mean, logvar, latent_mask)
            kl_term = margin_kl_loss(kl, self.hparams.kl_margin)
            generator_loss = generator_loss + self.hparams.vae_mel_weight * recon + self.hparams.kl_weight * kl_term
            logs.update({"train/vae_mel_l1": recon, "train/kl": kl, "train/kl_margin_loss": kl_term})
            self.codec.update_latent_stats(mean, latent_mask, self.hparams.latent_stats_momentum)

        if self.train_vocoder:
            source = mel_recon.detach() if (self.hparams.vocode_reconstruction and mel_recon is not None) else mel
            mel_crop, target = self._vocoder_crop(source, wave, frame_mask, generator)
            generated = self.codec.vocode(mel_crop)
            mel_term = self.mel_loss(generated, target)
            stft_term = self.stft_loss(generated, target)
            generator_loss = (
                generator_loss + self.hparams.vocoder_mel_weight * mel_term + self.hparams.stft_weight * stft_term
            )
            logs.update({"train/vocoder_mel": mel_term, "train/stft": stft_term})
            gan_active = disc_opt is not None and int(self.generator_steps) >= self.hparams.gan_start_step
            if gan_active:
                real_logits, _ = self._discriminate(target)
                fake_logits, _ = self._discriminate(generated.detach())
                disc_loss = discriminator_loss(real_logits, fake_logits)
                disc_opt.zero_grad(set_to_none=True)
                self.manual_backward(disc_loss)
                self._clip(disc_opt)
                disc_opt.step()
                if len(schedulers) > 1:
                    schedulers[1].step()
                logs["train/disc"] = disc_loss.detach()

                with torch.no_grad():
                    _, real_features = self._discriminate(target)
                fake_logits, fake_features = self._discriminate(generated)
                adversarial = generator_adversarial_loss(fake_logits)
                matching = feature_matching_loss(real_features, fake_features)
                generator_loss = (
                    generator_loss
                    + self.hparams.adversarial_weight * adversarial
                    + self.hparams.feature_matching_weight * matching
                )
                logs.update({"train/adversarial": adversarial, "train/feature_matching": matching})

        if not torch.isfinite(generator_loss):
            rank_zero_warn(f"non-finite generator loss at step {int(self.generator_steps)}; update skipped")
            gen_opt.zero_grad(set_to_none=True)
        else:
            gen_opt.zero_grad(set_to_none=True)
            self.manual_backward(generator_loss)
            self._clip(gen_opt)
            gen_opt.step()
            if schedulers:
                schedulers[0].step()
        self.generator_steps += 1
        self.log_dict({k: v.detach() for k, v in logs.items()}, batch_size=batch_size)
        self.log("train/loss", generator_loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/generator_steps", self.generator_steps.float(), batch_size=batch_size)
        return generator_loss.detach()

    def _clip(self, optimizer: Any) -> None:
        if self.hparams.grad_clip_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.grad_clip_norm, gradient_clip_algorithm="norm"
            )

    # ---------------------------------------------------------- validation
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # Generation metrics of `foley test` come from callbacks (pl_module.generate);
        # the step itself reports the reconstruction losses on the test split.
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: Mapping[str, Any], batch_idx: int, split: str) -> None:
        wave, mask = self._prepare_batch(batch)
        frame_mask, latent_mask = self._frame_masks(mask)
        mel = self.codec.mel(wave)
        mean, logvar = self.codec.vae.encode(mel)
        mel_recon = self.codec.vae.decode(mean)
        reconstruction = self.codec.vocode(mel_recon) * mask
        copy_synthesis = self.codec.vocode(mel) * mask
        vae_mel = masked_l1(mel_recon, mel, frame_mask)
        stft = self.stft_loss(reconstruction, wave)
        metrics = {
            f"{split}/vae_mel_l1": vae_mel,
            f"{split}/kl": gaussian_kl(mean, logvar, latent_mask),
            f"{split}/stft": stft,
            f"{split}/codec_mel": self.mel_loss(reconstruction, wave),
            f"{split}/vocoder_mel": self.mel_loss(copy_synthesis, wave),
            f"{split}/loss": vae_mel + stft,
        }
        self.log_dict(metrics, batch_size=wave.shape[0], sync_dist=True)
        if batch_idx == 0 and split == "val":
            self._log_examples(wave, mel, mel_recon, reconstruction, mask)

    def _log_examples(self, wave: Tensor, mel: Tensor, mel_recon: Tensor, reconstruction: Tensor, mask: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is None or not hasattr(experiment, "add_audio") or not hasattr(experiment, "add_image"):
            return  # e.g. CSVLogger: no media support
        if self.trainer is not None and getattr(self.trainer, "sanity_checking", False):
            return
        step = int(self.generator_steps)
        for index in range(min(self.hparams.num_logged_examples, wave.shape[0])):
            length = int(mask[index].sum().item())
            for tag, audio in (("target", wave[index, :length]), ("reconstruction", reconstruction[index, :length])):
                experiment.add_audio(
                    f"codec/{tag}_{index}", audio.detach().float().cpu().clamp(-1, 1), step, self.codec.sample_rate
                )
            stacked = torch.cat([mel[index], mel_recon[index]], dim=0).detach().float().cpu()
            low, high = stacked.min(), stacked.max()
            image = ((stacked - low) / (high - low).clamp_min(1e-5)).flip(0).unsqueeze(0)
            experiment.add_image(f"codec/mel_target_over_reconstruction_{index}", image, step)

    # -------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._step_generator.on_save_checkpoint(checkpoint)
        # JSON keeps the checkpoint loadable with torch.load(weights_only=True).
        checkpoint[CONFIG_KEY] = json.dumps(self.codec.init_config())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._step_generator.on_load_checkpoint(checkpoint)

    def export_codec(self, path: str | os.PathLike[str]) -> None:
        """Write the codec alone (weights + architecture) for later stages; see ``Codec.save``."""
        self.codec.save(path)
