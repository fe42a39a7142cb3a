"""``foley extract``: run the frozen stage-2 encoders and the codec encoder once over shards.

Training stage 2 on raw clips spends most of its compute in frozen models (MetaCLIP,
Synchformer, T5, the codec encoder). ``extract`` runs them once, through a Lightning
``Trainer.predict`` so any accelerator, strategy and node count works, and writes feature
shards that the same ``FoleyDataModule`` reads for stage 2 (with ``load_video: false``)::

    foley extract --fit_config configs/stage2.yaml --shards 'data/shard-*.tar' --out features/ \
        --codec_checkpoint runs/stage1/last.ckpt --accelerator gpu --devices 8 --strategy ddp
    foley fit --config configs/stage2.yaml --data.init_args.train_shards=features/ \
        --data.init_args.load_video=false --model.init_args.codec_checkpoint=runs/stage1/last.ckpt

Per sample, a feature shard holds:

| member | content |
|---|---|
| ``<key>.flac`` | the extracted span of the audio (24-bit) |
| ``<key>.json`` | the source metadata, events shifted to the span, plus ``extracted`` info |
| ``<key>.latent.pth`` | normalised codec posterior mean ``(T, C)`` |
| ``<key>.latent_std.pth`` | normalised posterior standard deviation ``(T, C)`` (when the codec has one) |
| ``<key>.clip_features.pth`` / ``clip_features_mask.pth`` | CLIP frame embeddings ``(Tc, D)`` / ``(Tc,)`` |
| ``<key>.sync_features.pth`` / ``sync_features_mask.pth`` | Synchformer tokens ``(Ts, D)`` / ``(Ts,)`` |
| ``<key>.text_features.pth`` / ``text_features_mask.pth`` | T5 tokens ``(L, D)`` / ``(L,)`` |

Every rank writes its own shards, ``features-r<rank>-p<part>-<n>.tar``, and appends the keys
of each completed shard to ``done-r<rank>.txt``. A rerun skips input shards whose samples
are all done and every sample already done, so an interrupted extraction resumes.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from foley.io.atomic import atomic_write_json
from foley.io.shards import INDEX_NAME, ShardWriter, list_shards

__all__ = ["extract", "FeatureExtractor", "done_keys"]

logger = logging.getLogger(__name__)

SHARD_PREFIX = "features"
DONE_PATTERN = re.compile(r"^done-r(\d+)\.txt$")
FEATURE_SHARD_PATTERN = re.compile(rf"^{SHARD_PREFIX}-r(\d+)-p(\d+)-\d{{6}}\.tar$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def done_keys(out: Path) -> dict[str, str]:
    """``key -> feature shard name`` for every sample in a completed feature shard under ``out``."""
    done: dict[str, str] = {}
    for path in sorted(out.glob("done-r*.txt")):
        for line in path.read_text().splitlines():
            shard, _, key = line.strip().partition(" ")
            if key and (out / shard).is_file():
                done[key] = shard
    return done


def _shard_keys(path: str) -> set[str]:
    with tarfile.open(path, mode="r") as tar:
        return {os.path.basename(name).partition(".")[0] for name in tar.getnames()}


def _tensor_bytes(tensor: Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous().clone(), buffer)
    return buffer.getvalue()


class FeatureExtractor(LightningModule):
    """Wraps a stage-2 ``FlowModule`` and writes its frozen features to shards in ``predict``.

    Args:
        flow_module: Provides the codec and the encoders (``encode_latents``-compatible).
        out: Output folder.
        skip: Keys already extracted.
        shard_size: Samples per output shard.
        dtype: Storage dtype of the feature tensors.
    """

    def __init__(self, flow_module: LightningModule, out: Path, skip: set[str], shard_size: int = 256,
                 dtype: str = "float16") -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.flow_module = flow_module
        self.out = Path(out)
        self.skip = skip
        self.shard_size = shard_size
        self.storage_dtype = DTYPES[dtype]
        self.written = 0
        self._writer: ShardWriter | None = None
        self._pending: list[str] = []
        self._done_file: Path | None = None
        self._completed = 0
        # Samples without frames for an encoder the model has (audio-only shards): counted and
        # reported, since stage 2 then trains on them without that video condition.
        self.missing_frames: dict[str, int] = {}

    # ----------------------------------------------------------------- writing
    def on_predict_start(self) -> None:
        rank = self.global_rank
        for stale in self.out.glob(f"{SHARD_PREFIX}-r{rank:03d}-*.tar.tmp"):
            stale.unlink()  # unfinished shard of an interrupted run; its keys are not in the done-list
        parts = [int(m.group(2)) for p in self.out.glob(f"{SHARD_PREFIX}-r{rank:03d}-p*.tar")
                 if (m := FEATURE_SHARD_PATTERN.match(p.name))]
        part = max(parts, default=-1) + 1
        self._writer = ShardWriter(self.out, shard_size=self.shard_size, prefix=f"{SHARD_PREFIX}-r{rank:03d}-p{part:04d}")
        self._done_file = self.out / f"done-r{rank:03d}.txt"
        self._completed = 0

    def _record_completed(self) -> None:
        # ShardWriter finishes at most one shard per write (and one on close); its keys are
        # exactly those written since the previous completed shard.
        assert self._writer is not None and self._done_file is not None
        if len(self._writer.shards) == self._completed:
            return
        name = self._writer.shards[-1]["name"]
        with open(self._done_file, "a") as handle:
            handle.writelines(f"{name} {key}\n" for key in self._pending)
            handle.flush()
            os.fsync(handle.fileno())
        self._pending = []
        self._completed = len(self._writer.shards)

    def on_predict_end(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._record_completed()
            self._writer = None
        self.trainer.strategy.barrier("foley-extract-done")
        if self.global_rank == 0:
            counts: dict[str, int] = {}
            for shard in done_keys(self.out).values():
                counts[shard] = counts.get(shard, 0) + 1
            shards = [{"name": name, "samples": counts[name]} for name in sorted(counts)]
            atomic_write_json(self.out / INDEX_NAME, {"shards": shards, "total": sum(counts.values())})

    # ---------------------------------------------------------------- features
    @torch.no_grad()
    def features(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per-sample feature members (tensors trimmed to each sample's real length)."""
        module = self.flow_module
        latent, latent_std = self._latent_posterior(batch)
        latent_mask = module.latent_mask(batch, latent.shape[1])
        conditions = module.encode_conditions(batch)
        samples = []
        for i in range(latent.shape[0]):
            frames = int(latent_mask[i].sum())
            sample: dict[str, Any] = {"latent.pth": latent[i, :frames].to(self.storage_dtype)}
            if latent_std is not None:
                sample["latent_std.pth"] = latent_std[i, :frames].to(self.storage_dtype)
            for name in ("clip", "sync", "text"):
                features, mask = conditions[name], conditions[f"{name}_mask"]
                if features is None:
                    if name != "text" and getattr(module, f"{name}_encoder", None) is not None:
                        self.missing_frames[name] = self.missing_frames.get(name, 0) + 1
                    continue
                # CLIP and sync masks are prefixes (padding at the end); text keeps its full width.
                length = features.shape[1] if name == "text" else int(mask[i].sum())
                sample[f"{name}_features.pth"] = features[i, :length].to(self.storage_dtype)
                sample[f"{name}_features_mask.pth"] = mask[i, :length].clone()
            samples.append(sample)
        return samples

    def _latent_posterior(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        module = self.flow_module
        codec = module.codec
        if not all(hasattr(codec, name) for name in ("vae", "mel", "pad_to_latent_grid", "latent_std")):
            latent, _ = module.encode_latents(batch)
            return latent, None
        from foley.models.codec import prepare_waveform

        audio = batch["audio_mono"] * batch["audio_mask"].to(batch["audio_mono"].dtype)
        mel = codec.mel(codec.pad_to_latent_grid(prepare_waveform(audio, codec.sample_rate)))
        mean, logvar = codec.vae.encode(mel)
        latent = codec.normalize_latent(mean).transpose(1, 2)
        std = (0.5 * logvar).exp() / codec.latent_std.view(1, -1, 1)
        return latent, std.transpose(1, 2)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        keys = list(batch["key"])
        todo = [i for i, key in enumerate(keys) if key not in self.skip]
        if not todo:
            return None
        if len(todo) < len(keys):
            batch = _select(batch, todo)
        from foley.io.media import encode_audio_bytes

        sample_rate = self.flow_module.sample_rate
        counts = self.flow_module.sample_counts(batch)
        for i, sample in enumerate(self.features(batch)):
            key = batch["key"][i]
            count = int(counts[i])
            meta = dict(batch["meta"][i])
            seconds = float(batch["seconds_total"][i])
            meta["extracted"] = {"seconds_start": float(batch["seconds_start"][i]), "seconds": seconds,
                                 "encoders": self.flow_module.encoder_fingerprints()}
            meta["duration"] = seconds
            members: dict[str, Any] = {
                "flac": encode_audio_bytes(batch["audio"][i, :, :count].float().cpu().numpy(), sample_rate),
                "json": meta,
            }
            members.update({name: _tensor_bytes(value) for name, value in sample.items()})
            assert self._writer is not None
            self._writer.write(key, members)
            self._pending.append(key)
            self.written += 1
            self._record_completed()
        return None


def _select(batch: Mapping[str, Any], rows: list[int]) -> dict[str, Any]:
    index = torch.tensor(rows)
    out: dict[str, Any] = {}
    for name, value in batch.items():
        if isinstance(value, Tensor):
            out[name] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list):
            out[name] = [value[i] for i in rows]
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def _argv_without_tool_args() -> Iterator[None]:
    # LightningCLI warns when it gets explicit args while sys.argv holds others (here the
    # `foley extract` arguments, which are not meant for it).
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _is_primary_process() -> bool:
    return all(int(os.environ.get(name, "0")) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def extract(
    fit_config: Path,
    shards: str,
    out: Path,
    codec_checkpoint: str | None = None,
    overrides: list[str] | None = None,
    batch_size: int = 8,
    num_workers: int = 4,
    accelerator: str = "auto",
    devices: str | int = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str = "32-true",
    shard_size: int = 256,
    dtype: str = "float16",
    overwrite: bool = False,
) -> Path:
    """Precompute codec latents and encoder features of shards for stage-2 training.

    The encoders, codec and frame streams come from a stage-2 fit config, so the features
    match what that config would compute on the fly. Clips are taken from their start, up
    to the config's ``clip_seconds``; train on the result with the same ``clip_seconds``,
    ``load_video: false`` and ``train_shards: OUT``.

    Args:
        fit_config: Stage-2 config (e.g. ``configs/stage2.yaml``); its ``model`` and ``data``
            sections are used.
        shards: Input shards (folder, glob, brace pattern or URL).
        out: Output folder for the feature shards.
        codec_checkpoint: Stage-1 checkpoint (sets ``model.init_args.codec_checkpoint``).
        overrides: More config overrides, e.g. ``["--data.init_args.clip_seconds=10"]``.
        batch_size: Clips per batch.
        num_workers: DataLoader workers per process.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``, ...).
        devices: Devices per node.
        strategy: Lightning strategy (``ddp`` spreads the shards over devices and nodes).
        num_nodes: Number of nodes.
        precision: Lightning precision for the encoders (``32-true`` keeps features exact).
        shard_size: Samples per output shard.
        dtype: Storage dtype of feature tensors: ``float16``, ``bfloat16`` or ``float32``.
        overwrite: Delete earlier feature shards in ``out`` instead of resuming.

    Returns:
        The output folder.
    """
    from foley.cli import FoleyCLI

    fit_config, out = Path(fit_config), Path(out)
    if not fit_config.is_file():
        raise FileNotFoundError(f"foley extract: config {fit_config} does not exist (expected e.g. configs/stage2.yaml)")
    input_shards = list_shards(shards)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and _is_primary_process():
        for path in out.iterdir():
            if FEATURE_SHARD_PATTERN.match(path.name) or DONE_PATTERN.match(path.name) or path.name == INDEX_NAME \
                    or (path.name.startswith(f"{SHARD_PREFIX}-r") and path.name.endswith(".tar.tmp")):
                path.unlink()
    done = done_keys(out)
    remaining = []
    for shard in input_shards:
        if "://" in shard or not os.path.isfile(shard) or not _shard_keys(shard) <= done.keys():
            remaining.append(shard)
    if not remaining:
        logger.info("foley extract: all %d input shard(s) are already extracted in %s", len(input_shards), out)
        return out
    logger.info("foley extract: %d of %d input shard(s) to process, %d sample(s) already done",
                len(remaining), len(input_shards), len(done))

    args = ["--config", str(fit_config), f"--data.init_args.predict_shards={remaining}",
            f"--data.init_args.batch_size={batch_size}", f"--data.init_args.num_workers={num_workers}",
            "--trainer.logger=false"]
    if codec_checkpoint is not None:
        args.append(f"--model.init_args.codec_checkpoint={codec_checkpoint}")
    args += list(overrides or [])
    # Last, so that no config or override can change them: a training overlay for feature
    # shards says `load_video: false` (e.g. configs/finetune/demo.yaml), and extracting with it
    # would silently write latents without any CLIP or sync features; a config's validation cap
    # (`max_val_samples`, e.g. 64 in configs/finetune/lora.yaml) also caps predict loaders and
    # would silently drop every sample after the first N.
    args += ["--data.init_args.load_video=true", "--data.init_args.max_val_samples=null"]
    with _argv_without_tool_args():
        cli = FoleyCLI(args=args, run=False)
    flow_module, datamodule = cli.model, cli.datamodule
    for name in ("encode_conditions", "latent_mask", "sample_counts", "codec"):
        if not hasattr(flow_module, name):
            raise TypeError(f"foley extract: the config's model {type(flow_module).__name__} is not a stage-2 FlowModule")
    extractor = FeatureExtractor(flow_module, out, set(done), shard_size=shard_size, dtype=dtype)
    trainer = Trainer(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
                      precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.predict(extractor, datamodule=datamodule, return_predictions=False)
    logger.info("foley extract: wrote %d sample(s) on rank %d to %s", extractor.written, trainer.global_rank, out)
    for name, count in sorted(extractor.missing_frames.items()):
        logger.warning("foley extract: %d of %d sample(s) on rank %d have no %s frames (no video in their shard), so "
                       "no %s features were written for them; stage 2 trains on those samples without that video "
                       "condition. If they should have video, re-run `foley prepare` on the source videos.",
                       count, extractor.written, trainer.global_rank, name, name)
    return out
