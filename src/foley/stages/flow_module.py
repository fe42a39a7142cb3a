"""Stage 2: flow matching of codec latents with the MM-DiT, conditioned on video and text.

The module wires frozen parts (stage-1 codec, CLIP / Synchformer / T5 encoders) around
the trainable network; the losses and samplers live in :class:`foley.flow.FlowMatching`.
Batches follow docs/architecture.md §2. When a batch carries precomputed members from
``foley extract`` shards (``latent``, ``latent_std``, ``clip_features``, ...), those are
used instead of running the frozen models.

Condition encoding, CFG flags and the provenance checks of precomputed features are in
:mod:`foley.stages.conditions`, the weight average in :mod:`foley.stages.ema`.
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.flow import FlowMatching
from foley.stages import conditions as cond_lib
from foley.stages.conditions import MODALITIES, Conditions
from foley.adapters.lora import LoraSettings, add_lora, base_fingerprint, share_frozen
from foley.stages.ema import ema_decay, update_ema
from foley.stages.init_from import check_data_settings, load_init_parts
from foley.stages.sharding import broadcast_buffers, data_parallel_mesh, shard_networks
from foley.stages.training_rng import StepGenerator

__all__ = ["FlowModule", "Conditions"]

logger = logging.getLogger(__name__)
# Frozen submodules; their weights are left out of checkpoints when they come from their own files.
FROZEN = ("codec", "clip_encoder", "sync_encoder", "text_encoder")


class FlowModule(LightningModule):
    """Trains the stage-2 generator and generates waveforms with it.

    Args:
        network: Velocity network (``foley.models.mmdit.MMDiT``); ``None`` with ``init_from``
            builds the model folder's generator.
        flow: Flow-matching loss and sampler settings (default ``FlowMatching()``, or the model
            folder's with ``init_from``).
        codec_checkpoint: Stage-1 checkpoint, loaded with ``Codec.from_checkpoint`` and frozen.
        codec: An already built codec instead of ``codec_checkpoint``.
        clip_encoder: Frozen CLIP frame encoder; ``None`` = no visual-semantics stream
            (the network's placeholder is used) unless the batch holds ``clip_features``.
        sync_encoder: Frozen Synchformer encoder; ``None`` as above for ``sync_features``.
        text_encoder: Frozen T5 encoder; ``None`` as above for ``text_features``.
        optimizer: Optimiser factory, called with the network's parameters.
        lr_scheduler: Optional scheduler factory (stepped every optimiser step); when absent a
            linear warm-up over ``warmup_steps`` is used.
        warmup_steps: Linear learning-rate warm-up length (ignored with ``lr_scheduler``).
        ema_decay: Decay of the exponential moving average of the network weights, used for
            validation and generation and saved in checkpoints; ``0`` disables it.
        ema_warmup: Use ``min(ema_decay, (1 + step) / (10 + step))`` so early averages are not
            dominated by the random initialisation.
        cond_dropout: Probability, per sample and modality, of replacing a condition by its
            placeholder during training (classifier-free guidance).
        cfg_strength: Default guidance strength for :meth:`generate`.
        sample_steps: Default number of sampler steps.
        sampler: Default ODE method (``"euler"``, ``"midpoint"`` or ``"heun"``).
        sample_posterior: Train on latents drawn from the codec posterior when the batch holds
            ``latent_std`` (precomputed features); otherwise on the posterior mean.
        init_from: A model folder (``foley export``) or Hub id to start from: its generator
            weights are loaded into ``network``, and the parts left unset (network, codec,
            encoders, flow) come from it; a codec or encoder given here must have the folder's
            weights (:mod:`foley.stages.init_from`). The data stream must match the folder's.
        adapter: LoRA settings (:class:`foley.adapters.LoraSettings`: rank, alpha, dropout,
            targets): train only a LoRA adapter on the frozen ``init_from`` generator.
            Checkpoints then hold the adapter (and its EMA and optimiser state) only; the EMA
            network shares the frozen base weights.
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        flow: FlowMatching | None = None,
        codec_checkpoint: str | None = None,
        codec: nn.Module | None = None,
        clip_encoder: nn.Module | None = None,
        sync_encoder: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 1000,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        cond_dropout: float = 0.1,
        cfg_strength: float = 4.5,
        sample_steps: int = 25,
        sampler: Literal["euler", "midpoint", "heun"] = "euler",
        sample_posterior: bool = True,
        init_from: str | None = None,
        adapter: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        if adapter is not None and init_from is None:
            raise ValueError("LoRA fine-tuning (adapter) trains on a trained generator: pass init_from MODEL_DIR "
                             "(a model folder from `foley export`, e.g. demo_out/model)")
        adapter_settings = LoraSettings.coerce(adapter) if adapter is not None else None
        # Plain data in the hyper-parameters (checkpoints are read with weights_only=True).
        adapter = adapter_settings.as_dict() if adapter_settings is not None else None
        if codec is not None and codec_checkpoint is not None:
            raise ValueError("FlowModule takes one of `codec` (a module) or `codec_checkpoint`, not both")
        if init_from is None and codec is None and codec_checkpoint is None:
            raise ValueError(
                "FlowModule needs one of `codec` (a module) or `codec_checkpoint` (a stage-1 checkpoint path, e.g. "
                "--model.init_args.codec_checkpoint=runs/stage1/last.ckpt), or `init_from` MODEL_DIR (a model folder)"
            )
        if init_from is None and network is None:
            raise ValueError("FlowModule needs a `network` (e.g. foley.models.mmdit.MMDiT), or `init_from` MODEL_DIR "
                             "to build the model folder's generator")
        if not 0.0 <= cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1], got {cond_dropout}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if codec is None and codec_checkpoint is not None:
            from foley.models.codec import Codec

            codec = Codec.from_checkpoint(codec_checkpoint)
        with warnings.catch_warnings():
            # Lightning warns about module-valued arguments; they are removed just below.
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        # Objects passed from Python are not plain data; under LightningCLI these entries are
        # class_path/init_args dicts and are kept so load_from_checkpoint can rebuild the module.
        self.remove_ignored_hparams(
            [k for k, v in self.hparams.items() if isinstance(v, (nn.Module, Configurable)) or callable(v)]
        )
        # Parts rebuilt from the init_from folder are left out of checkpoints like files' weights.
        self._from_folder: set[str] = set()
        # The folder's data-stream settings and generation defaults (checked against the data in setup).
        self.init_settings: dict[str, Any] = {}
        self.init_generation: dict[str, Any] = {}
        if init_from is not None:
            encoders = {"clip_encoder": clip_encoder, "sync_encoder": sync_encoder, "text_encoder": text_encoder}
            parts = load_init_parts(init_from, network, codec, encoders, flow)
            self.init_settings, self.init_generation = parts.settings, parts.generation
            network, flow = parts.network, flow if flow is not None else parts.flow
            if codec is None:
                codec = parts.codec
                self._from_folder.add("codec")
            clip_encoder = parts.encoders.get("clip_encoder", clip_encoder)
            sync_encoder = parts.encoders.get("sync_encoder", sync_encoder)
            text_encoder = parts.encoders.get("text_encoder", text_encoder)
            self._from_folder.update(parts.encoders)
        assert network is not None and codec is not None
        self.adapter_settings = adapter_settings
        # Fingerprints of the base an adapter belongs to (recorded in checkpoints and adapter folders).
        self.adapter_base: dict[str, str] = {}
        if adapter_settings is not None:
            add_lora(network, adapter_settings)
            self.adapter_base = {"generator": base_fingerprint(network)}
        self.network = network
        self.ema_network = copy.deepcopy(network).requires_grad_(False) if ema_decay > 0 else None
        if adapter_settings is not None and self.ema_network is not None:
            share_frozen(self.ema_network, self.network)
        self.flow = flow if flow is not None else FlowMatching()
        self.codec = codec.eval().requires_grad_(False)
        self.clip_encoder = self._freeze(clip_encoder)
        self.sync_encoder = self._freeze(sync_encoder)
        self.text_encoder = self._freeze(text_encoder)
        self.codec_from_file = codec_checkpoint is not None
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.warmup_steps = warmup_steps
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.cond_dropout = cond_dropout
        self.cfg_strength = cfg_strength
        self.sample_steps = sample_steps
        self.sampler = sampler
        self.sample_posterior = sample_posterior
        self._fingerprints: dict[str, str] | None = None
        # Training draws (posterior sample, times, noise, condition dropout): exact on resume.
        self._step_generator = StepGenerator()

    @staticmethod
    def _freeze(module: nn.Module | None) -> nn.Module | None:
        return None if module is None else module.eval().requires_grad_(False)

    # ------------------------------------------------------------------ geometry
    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def samples_per_latent(self) -> int:
        return int(self.codec.samples_per_latent)

    @property
    def latent_channels(self) -> int:
        return int(self.codec.latent_channels)

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.samples_per_latent

    def train(self, mode: bool = True) -> FlowModule:
        super().train(mode)
        # Frozen parts never switch to training behaviour (dropout, norm statistics).
        for name in FROZEN:
            module = getattr(self, name)
            if module is not None:
                module.eval()
        if self.ema_network is not None:
            self.ema_network.eval()
        return self

    def setup(self, stage: str) -> None:
        # A model started from a folder reads frames as the folder's model was trained to.
        if self.init_settings and self._trainer is not None:
            datamodule = getattr(self.trainer, "datamodule", None)
            check_data_settings(self.hparams.get("init_from"), self.init_settings, getattr(datamodule, "hparams", None))

    # ---------------------------------------------------------------- conditions
    def encode_conditions(self, batch: Mapping[str, Any]) -> Conditions:
        """CLIP / sync / text features and masks of a batch (precomputed ones when present).

        Returns:
            ``{"clip", "clip_mask", "sync", "sync_mask", "text", "text_mask"}``; a modality
            without features or encoder is ``None`` (:func:`foley.stages.conditions.encode_conditions`).
        """
        return cond_lib.encode_conditions(batch, self.clip_encoder, self.sync_encoder, self.text_encoder)

    def encode_latents(self, batch: Mapping[str, Any], sample: bool = False,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Normalised codec latents ``(B, T, C)`` of the batch audio and their mask ``(B, T)``.

        Uses ``batch["latent"]`` (and ``latent_std`` when ``sample``, drawing from ``generator``)
        from feature shards when present, otherwise runs the frozen codec on ``audio_mono``
        (zero on padding).
        """
        if "latent" in batch:
            latent = batch["latent"].float()
            if sample and "latent_std" in batch:
                noise = torch.randn(latent.shape, generator=generator, device=latent.device, dtype=latent.dtype)
                latent = latent + batch["latent_std"].float() * noise
        else:
            audio = batch["audio_mono"] * batch["audio_mask"].to(batch["audio_mono"].dtype)
            # The latents are the regression targets: keep the codec in fp32 under bf16 autocast.
            with torch.no_grad(), torch.autocast(device_type=audio.device.type, enabled=False):
                latent = self.codec.encode(audio.float()).transpose(1, 2)
        return latent, self.latent_mask(batch, latent.shape[1])

    def latent_mask(self, batch: Mapping[str, Any], length: int) -> Tensor:
        """``(B, length)`` True on latent frames that cover real audio."""
        samples = self.sample_counts(batch)
        frames = torch.div(samples + self.samples_per_latent - 1, self.samples_per_latent, rounding_mode="floor")
        return torch.arange(length, device=frames.device)[None] < frames[:, None]

    @staticmethod
    def sample_counts(batch: Mapping[str, Any]) -> Tensor:
        """Real audio samples per batch item (``audio_mask``)."""
        return batch["audio_mask"].sum(dim=1).long()

    @staticmethod
    def drop_flags(conditions: Conditions, dropout: Tensor | None = None) -> dict[str, Tensor | None]:
        """Per-modality ``drop_*`` flags: dropped by CFG dropout, or no real token at all."""
        return cond_lib.drop_flags(conditions, dropout)

    def encoder_fingerprints(self) -> dict[str, str]:
        """Weight fingerprints of the frozen codec and condition encoders (``foley extract``
        records them with the features; training on features checks them)."""
        if self._fingerprints is None:
            self._fingerprints = cond_lib.encoder_fingerprints(
                {"codec": self.codec, "clip": self.clip_encoder, "sync": self.sync_encoder, "text": self.text_encoder}
            )
        return self._fingerprints

    # ------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Any], network: nn.Module | None = None, dropout: float | None = None,
             generator: torch.Generator | None = None, sample_posterior: bool = False) -> Tensor:
        """Flow-matching loss on a batch.

        Random draws happen in a fixed order (posterior sample, times, noise, then dropout
        flags) so that losses with different dropout settings are comparable under the same
        seed; all come from ``generator`` (the global RNG when ``None``).
        """
        network = self.network if network is None else network
        cond_lib.check_feature_crop(batch)
        cond_lib.check_feature_provenance(batch, self.encoder_fingerprints)
        x1, mask = self.encode_latents(batch, sample=sample_posterior, generator=generator)
        conditions = self.encode_conditions(batch)
        batch_size, device = x1.shape[0], x1.device
        t = self.flow.sample_t(batch_size, device, generator)
        noise = torch.randn(x1.shape, device=device, dtype=x1.dtype, generator=generator)
        p = self.cond_dropout if dropout is None else dropout
        draws = torch.rand(len(MODALITIES), batch_size, device=device, generator=generator)
        flags = self.drop_flags(conditions, draws < p)
        seconds_start = batch["seconds_start"].to(device).float()
        seconds_total = batch["seconds_total"].to(device).float()

        def velocity(x_t: Tensor, times: Tensor) -> Tensor:
            return network(x_t, times, seconds_start=seconds_start, seconds_total=seconds_total,
                           audio_mask=mask, **conditions, **flags)

        return self.flow.loss(velocity, x1, mask, t=t, noise=noise)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        generator = self._step_generator(self, batch_idx)
        loss = self.loss(batch, sample_posterior=self.sample_posterior, generator=generator)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["seconds_total"]))
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        # A fixed generator per batch makes validation losses comparable across epochs.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.loss(batch, network=self.inference_network, dropout=0.0, generator=generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["seconds_total"]))
        return loss

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.loss(batch, network=self.inference_network, dropout=0.0, generator=generator)
        self.log("test/loss", loss, sync_dist=True, batch_size=len(batch["seconds_total"]))
        return loss

    # ----------------------------------------------------------------------- EMA
    @property
    def inference_network(self) -> nn.Module:
        """The EMA network when EMA is on, else the trained one."""
        return self.ema_network if self.ema_network is not None else self.network

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """Fold the current network weights into the EMA (buffers are copied)."""
        if self.ema_network is not None:
            update_ema(self.ema_network, self.network, ema_decay(step, self.ema_decay, self.ema_warmup),
                       only_trainable=self.adapter_settings is not None)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here (once per real optimiser step), not in on_train_batch_end: checkpoint callbacks
        # run before the module's on_train_batch_end, so a checkpoint written at this step would
        # miss the update and a resumed run's average would lag the uninterrupted one.
        # Lightning counts this step in global_step only after the hook returns.
        self.update_ema(int(self.trainer.global_step) + 1)

    # ------------------------------------------------------------------ sharding
    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy``: shard the network and its EMA with FSDP2
        (:func:`foley.stages.sharding.shard_networks`); the frozen codec and encoders stay whole
        on every rank. Other strategies (no device mesh) leave the module as it is."""
        if self.device_mesh is None:
            return
        if self.adapter_settings is not None:
            raise ValueError("LoRA fine-tuning (adapter) shares the frozen base weights between the network and its "
                             "EMA, which FSDP cannot shard; train adapters with --trainer.strategy=ddp")
        shard_networks((self.network, self.ema_network), data_parallel_mesh(self.device_mesh))

    def _broadcast_network_buffers(self) -> None:
        # Under FSDP2, rank 0's buffers everywhere before each training and validation step, as
        # DDP does before each forward (foley.stages.sharding.broadcast_buffers).
        if self.device_mesh is not None:
            broadcast_buffers((self.network, self.ema_network), data_parallel_mesh(self.device_mesh))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._broadcast_network_buffers()

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._broadcast_network_buffers()

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        parameters = self.network.parameters()
        if self.adapter_settings is not None:
            parameters = [p for p in parameters if p.requires_grad]  # the adapter only
        optimizer = self.optimizer(parameters)
        if self.lr_scheduler is not None:
            scheduler = self.lr_scheduler(optimizer)
        elif self.warmup_steps > 0:
            warmup = self.warmup_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """``foley predict``: generated mono waveforms ``(B, 1, N)`` with the default settings."""
        return self.generate(batch)

    # --------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_latents(
        self,
        batch: Mapping[str, Any],
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        negative_prompt: str | list[str] | None = None,
        method: Literal["euler", "midpoint", "heun"] | None = None,
        noise: Tensor | None = None,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
    ) -> Tensor:
        """Sample normalised codec latents ``(B, T, C)`` for a batch (see :meth:`generate`).

        ``T = ceil(N / samples_per_latent)`` for the batch's padded audio length ``N``.

        Args:
            batch: Batch dict (frames and/or precomputed features, caption, durations).
            steps: Sampler steps (default :attr:`sample_steps`).
            cfg: Guidance strength (default :attr:`cfg_strength`); 1 disables guidance.
            seed: Seed of the initial noise (drawn on the CPU, so the same on every device);
                ``None`` draws from the global generator. Ignored when ``noise`` is given.
            negative_prompt: Text for the unconditional branch (one string for the whole batch
                or one per sample) instead of the placeholders.
            method: ODE method (default :attr:`sampler`).
            noise: Initial noise ``(B, T, C)`` instead of a seeded draw (e.g. slices of one long
                noise sequence, so overlapping windows of a long video share their noise).
            known: Latents ``(B, T, C)`` to inpaint around (see :meth:`FlowMatching.sample`).
            known_mask: ``(B, T)`` True on the latent frames where ``known`` holds.
        """
        network = self.inference_network
        steps = self.sample_steps if steps is None else int(steps)
        cfg = self.cfg_strength if cfg is None else float(cfg)
        method = self.sampler if method is None else method
        counts = self.sample_counts(batch).to(self.device)
        batch_size = counts.shape[0]
        length = math.ceil(int(batch["audio_mask"].shape[1]) / self.samples_per_latent)
        conditions = {k: (v.to(self.device) if v is not None else None) for k, v in self.encode_conditions(batch).items()}
        frames = torch.div(counts + self.samples_per_latent - 1, self.samples_per_latent, rounding_mode="floor")
        mask = torch.arange(length, device=self.device)[None] < frames[:, None]
        common = {
            "seconds_start": batch["seconds_start"].to(self.device).float(),
            "seconds_total": batch["seconds_total"].to(self.device).float(),
            "audio_mask": mask,
        }
        cond = {**common, **conditions, **self.drop_flags(conditions)}
        uncond = cond_lib.unconditional(conditions, common, negative_prompt, batch_size, self.text_encoder)

        channels = self.latent_channels
        if noise is None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            noise = torch.randn(batch_size, length, channels, generator=generator)
        elif tuple(noise.shape) != (batch_size, length, channels):
            raise ValueError(f"noise has shape {tuple(noise.shape)}; this batch needs {(batch_size, length, channels)} "
                             "(batch, latent frames, latent channels)")
        noise = noise.to(self.device).float()
        if known is not None:
            known = known.to(self.device).float()
        if known_mask is not None:
            known_mask = known_mask.to(self.device)
        inpaint = {"known": known, "known_mask": known_mask}
        guided = cfg != 1.0
        if hasattr(network, "prepare_conditions") and hasattr(network, "guided_velocity_fn"):
            step = self._student_step_size(network, steps, method)
            cond_cache = network.prepare_conditions(length, **cond)
            if guided:
                velocity = network.guided_velocity_fn(cond_cache, network.prepare_conditions(length, **uncond), cfg,
                                                      **step)
            else:
                velocity = network.velocity_fn(cond_cache, **step)
            return self.flow.sample(velocity, noise, steps=steps, method=method, **inpaint)
        return self.flow.sample(
            lambda x, t: network(x, t, **cond), noise, steps=steps, method=method, cfg_strength=cfg,
            uncond_velocity_fn=(lambda x, t: network(x, t, **uncond)) if guided else None, **inpaint,
        )

    @staticmethod
    def _student_step_size(network: nn.Module, steps: int, method: str) -> dict[str, float]:
        """``{"step_size": 1 / steps}`` for a few-step student (``distilled_steps``), else ``{}``."""
        distilled = getattr(network, "distilled_steps", None)
        if not distilled:
            return {}
        if method != "euler":
            raise ValueError(f"this generator is a few-step student (distilled for {distilled} steps): it predicts "
                             f"whole Euler steps; use sampler 'euler', not {method!r}")
        if steps not in distilled:
            logger.warning("this generator was distilled for %s steps; %d steps is outside what it learnt "
                           "(its step-size embedding is interpolated)", distilled, steps)
        return {"step_size": 1.0 / steps}

    @torch.no_grad()
    def latent_mel(self, latent: Tensor) -> Tensor:
        """Normalised latents ``(B, T, C)`` → the codec's log-mel ``(B, n_mels, 2T)`` (fp32)."""
        with torch.autocast(device_type=latent.device.type, enabled=False):
            return self.codec.decode_mel(latent.transpose(1, 2).float()).float()

    @torch.no_grad()
    def generate_mel(self, batch: Mapping[str, Any], **kwargs: Any) -> Tensor:
        """Generated mono log-mel ``(B, n_mels, F)`` before the vocoder (arguments of :meth:`generate_latents`).

        Stage 3 pans this mel directly, so the pipeline vocodes once per ear instead of
        vocoding the mono signal, re-analysing it and vocoding again.
        """
        return self.latent_mel(self.generate_latents(batch, **kwargs))

    @torch.no_grad()
    def generate(
        self,
        batch: Mapping[str, Any],
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        negative_prompt: str | list[str] | None = None,
        method: Literal["euler", "midpoint", "heun"] | None = None,
        noise: Tensor | None = None,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
    ) -> Tensor:
        """Generate mono waveforms ``(B, 1, N)`` in [-1, 1] for a batch.

        ``N`` is the batch's padded audio length (``audio_mask``); each sample is exactly as
        long as its own duration and zero after it. Latents come from :meth:`generate_latents` (same arguments), mels
        from :meth:`latent_mel`, waveforms from the codec's vocoder.
        """
        counts = self.sample_counts(batch).to(self.device)
        total = int(batch["audio_mask"].shape[1])
        mel = self.generate_mel(batch, steps=steps, cfg=cfg, seed=seed, negative_prompt=negative_prompt, method=method,
                                noise=noise, known=known, known_mask=known_mask)
        with torch.autocast(device_type=mel.device.type, enabled=False):
            wave = self.codec.vocode(mel)[..., :total].float().clamp(-1.0, 1.0)
        wave = wave * (torch.arange(total, device=wave.device)[None] < counts[:, None].to(wave.device))
        return wave[:, None]

    # -------------------------------------------------------------- checkpoints
    def _frozen_from_file(self) -> list[str]:
        names = ["codec"] if self.codec_from_file or "codec" in self._from_folder else []
        for name in ("clip_encoder", "sync_encoder", "text_encoder"):
            module = getattr(self, name)
            if module is not None and (getattr(module, "weights_from_file", False) or name in self._from_folder):
                names.append(name)
        return names

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._step_generator.on_save_checkpoint(checkpoint)
        # Frozen pretrained parts are rebuilt from their own files; copying them into every
        # stage-2 checkpoint would multiply its size (MetaCLIP ViT-H alone is ~2.5 GB). Under
        # FSDP2 they stay: Lightning loads a checkpoint into the whole sharded module before
        # on_load_checkpoint could put them back, and asks it for every key (strictly from a full
        # file; torch.distributed.checkpoint fails on any key a sharded one lacks).
        prefixes = tuple(f"{name}." for name in self._frozen_from_file())
        if prefixes and self.device_mesh is None:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}
        if self.adapter_settings is not None:
            # The frozen base comes from init_from: an adapter checkpoint holds the adapter (a few MB).
            frozen = self._frozen_network_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["foley_adapter"] = {"base": self.adapter_fingerprints(), "init_from": self.hparams.get("init_from")}

    def _frozen_network_keys(self) -> set[str]:
        names = {name for name, p in self.network.named_parameters() if not p.requires_grad}
        return {f"{prefix}.{name}" for name in names for prefix in ("network", "ema_network")}

    def adapter_fingerprints(self) -> dict[str, str]:
        """Fingerprints of the base model an adapter trained here belongs to (generator, codec, encoders)."""
        return {**self.encoder_fingerprints(), **self.adapter_base}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._step_generator.on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if state is None:
            # FSDP2 (ModelParallelStrategy) has loaded the weights into the sharded module itself
            # and passes on the rest of the checkpoint only.
            return
        if self.adapter_settings is not None:
            recorded = (checkpoint.get("foley_adapter") or {}).get("base", {}).get("generator")
            if recorded is not None and recorded != self.adapter_base["generator"]:
                raise ValueError(
                    f"this adapter checkpoint was trained on a base generator with fingerprint {recorded}; init_from "
                    f"{self.hparams.get('init_from')} holds one with fingerprint {self.adapter_base['generator']}. "
                    "Pass the model folder it was trained from (--model.init_args.init_from)"
                )
            own = self.state_dict()
            state.update({k: own[k] for k in self._frozen_network_keys() if k not in state})
        for name in FROZEN:
            module = getattr(self, name)
            if module is not None and not any(k.startswith(f"{name}.") for k in state):
                state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        if self.ema_network is not None and not any(k.startswith("ema_network.") for k in state):
            # A checkpoint written without EMA: start the average from the trained weights.
            state.update({f"ema_{k}": v for k, v in list(state.items()) if k.startswith("network.")})
