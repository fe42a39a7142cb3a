"""CodecModule: training lowers reconstruction error, freezing, GAN schedule, bad batches, CLI."""

from __future__ import annotations

import io
import json
import math
import tarfile
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from foley.models.bigvgan import BigVGAN
from foley.models.codec import Codec
from foley.models.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from foley.models.mel_vae import MelVAE
from foley.stages.codec_losses import masked_l1
from foley.stages.codec_module import CodecModule

SR = 44100
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("single_thread")


def _module(**overrides) -> CodecModule:
    vae = MelVAE(latent_channels=8, hidden_channels=32, encoder_layers=4, decoder_layers=4)
    vocoder = BigVGAN(
        upsample_rates=[8, 4, 4, 4],
        upsample_kernel_sizes=[16, 8, 8, 8],
        upsample_initial_channel=32,
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]],
    )
    kwargs = dict(
        period_discriminator=MultiPeriodDiscriminator(periods=[2, 3], channels=[4, 8]),
        resolution_discriminator=MultiResolutionDiscriminator(resolutions=[[512, 128, 512]], channels=4),
        generator_optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        discriminator_optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        vocoder_segment_frames=8,
        stft_resolutions=[(512, 128, 512)],
        mel_loss_n_ffts=[256, 1024],
        mel_loss_n_mels=[20, 40],
        gan_start_step=0,
    )
    kwargs.update(overrides)
    return CodecModule(Codec(vae, vocoder), **kwargs)


def _synthetic_batch(seconds: float = 0.75, batch_size: int = 2, seed: int = 0) -> dict:
    """Decaying harmonic tones with known padding on the second example."""
    gen = torch.Generator().manual_seed(seed)
    n = round(seconds * SR)
    t = torch.arange(n) / SR
    waves = []
    for _ in range(batch_size):
        f0 = float(torch.empty(()).uniform_(150, 900, generator=gen))
        env = torch.exp(-4 * (t % 0.25))
        waves.append(0.3 * env * (torch.sin(2 * math.pi * f0 * t) + 0.5 * torch.sin(4 * math.pi * f0 * t)))
    audio_mono = torch.stack(waves)
    mask = torch.ones(batch_size, n, dtype=torch.bool)
    mask[-1, n // 2 :] = False
    audio_mono = audio_mono * mask
    return {
        "audio": audio_mono.unsqueeze(1).repeat(1, 2, 1),
        "audio_mono": audio_mono,
        "audio_mask": mask,
        "key": [f"tone-{i}" for i in range(batch_size)],
    }


class _RepeatBatch(torch.utils.data.Dataset):
    def __init__(self, batch: dict, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        i = index % self.batch["audio_mono"].shape[0]
        return {k: v[i] for k, v in self.batch.items()}


def _loader(batch: dict, steps: int) -> torch.utils.data.DataLoader:
    size = batch["audio_mono"].shape[0]
    return torch.utils.data.DataLoader(_RepeatBatch(batch, steps * size), batch_size=size)


def _trainer(tmp_path: Path, steps: int, logger=False) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


@torch.no_grad()
def _vae_mel_l1(module: CodecModule, batch: dict) -> float:
    wave, mask = module._prepare_batch(batch)
    frame_mask, _ = module._frame_masks(mask)
    mel = module.codec.mel(wave)
    mean, _ = module.codec.vae.encode(mel)
    return float(masked_l1(module.codec.vae.decode(mean), mel, frame_mask))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_short_training_lowers_mel_reconstruction_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _module(train_vocoder=False, kl_margin=0.1)
    batch = _synthetic_batch()
    initial = _vae_mel_l1(module, batch)
    _trainer(tmp_path, steps=40).fit(module, _loader(batch, 40))
    final = _vae_mel_l1(module, batch)
    assert final < 0.7 * initial, (initial, final)
    # The running latent statistics describe the raw latents of this data.
    assert float(module.codec.latent_stats_count) > 0
    normalised = module.codec.encode(batch["audio_mono"][:1])
    assert abs(float(normalised.mean())) < 1.5 and 0.2 < float(normalised.std()) < 5.0


def test_frozen_vae_keeps_weights_and_statistics(tmp_path: Path) -> None:
    module = _module(train_vae=False)
    vae_before, voc_before = _snapshot(module.codec.vae), _snapshot(module.codec.vocoder)
    disc_before = _snapshot(module.discriminators)
    _trainer(tmp_path, steps=2).fit(module, _loader(_synthetic_batch(0.4), 2))
    assert not _changed(vae_before, module.codec.vae)
    assert float(module.codec.latent_stats_count) == 0
    assert _changed(voc_before, module.codec.vocoder)
    assert _changed(disc_before, module.discriminators)
    assert int(module.generator_steps) == 2


def test_frozen_vocoder_keeps_weights_and_drops_discriminators(tmp_path: Path) -> None:
    module = _module(train_vocoder=False)
    assert len(module.discriminators) == 0
    voc_before, vae_before = _snapshot(module.codec.vocoder), _snapshot(module.codec.vae)
    _trainer(tmp_path, steps=2).fit(module, _loader(_synthetic_batch(0.4), 2))
    assert not _changed(voc_before, module.codec.vocoder)
    assert _changed(vae_before, module.codec.vae)


def test_discriminators_wait_for_gan_start_step(tmp_path: Path) -> None:
    module = _module(train_vae=False, gan_start_step=2)
    disc_before = _snapshot(module.discriminators)
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(module, _loader(_synthetic_batch(0.4), 2))
    assert not _changed(disc_before, module.discriminators)
    assert "train/disc" not in trainer.callback_metrics
    module.hparams.gan_start_step = 0
    _trainer(tmp_path, steps=1).fit(module, _loader(_synthetic_batch(0.4), 1))
    assert _changed(disc_before, module.discriminators)


def test_nothing_to_train_is_rejected() -> None:
    with pytest.raises(ValueError, match="nothing to train"):
        _module(train_vae=False, train_vocoder=False)


def test_non_finite_samples_are_masked_and_losses_stay_finite(tmp_path: Path) -> None:
    module = _module()
    batch = _synthetic_batch(0.4)
    batch["audio_mono"][0, 100:200] = float("nan")
    batch["audio_mono"][1, 50] = float("inf")
    trainer = _trainer(tmp_path, steps=2)
    with pytest.warns(UserWarning, match="non-finite audio"):
        trainer.fit(module, _loader(batch, 2))
    for name, value in trainer.callback_metrics.items():
        assert torch.isfinite(value), name
    assert all(torch.isfinite(p).all() for p in module.parameters())


@torch.no_grad()
def test_generate_reconstructs_with_the_batch_length_and_silent_padding() -> None:
    module = _module().eval()
    batch = _synthetic_batch(0.3)
    out = module.generate(batch)
    n = batch["audio_mono"].shape[-1]
    assert out.shape == (2, 1, n)
    assert float(out[1, 0, ~batch["audio_mask"][1]].abs().max()) == 0.0
    latent = module.encode(batch["audio_mono"])
    assert latent.shape == (2, 8, math.ceil(n / 1024))
    assert module.decode(latent, n).shape == (2, n)


@pytest.mark.parametrize("logger_cls", [CSVLogger, TensorBoardLogger])
def test_validation_logs_with_any_logger(tmp_path: Path, logger_cls) -> None:
    module = _module()
    batch = _synthetic_batch(0.4)
    trainer = _trainer(tmp_path, steps=1, logger=logger_cls(tmp_path))
    trainer.fit(module, _loader(batch, 1), _loader(batch, 1))
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    if logger_cls is TensorBoardLogger:
        assert list(Path(trainer.logger.log_dir).glob("events.out.tfevents.*"))


def test_checkpoint_rebuilds_the_codec(tmp_path: Path) -> None:
    module = _module(train_vocoder=False)
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(module, _loader(_synthetic_batch(0.4), 1))
    path = tmp_path / "codec.ckpt"
    trainer.save_checkpoint(path)
    rebuilt = Codec.from_checkpoint(path)
    wave = _synthetic_batch(0.3)["audio_mono"]
    module.codec.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode(wave), module.codec.encode(wave))
        torch.testing.assert_close(rebuilt(wave), module.codec(wave))


def _write_audio_shard(folder: Path, count: int, seconds: float, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    with tarfile.open(folder / "shard-000000.tar", "w") as tar:
        for index in range(count):
            tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 1500) * t) * np.exp(-3 * (t % 0.5))
            buffer = io.BytesIO()
            sf.write(buffer, np.stack([tone, 0.5 * tone], axis=1).astype(np.float32), SR, format="FLAC")
            key = f"tone-{seed}-{index:04d}"
            meta = {"key": key, "caption": "", "category": "tone", "duration": seconds, "fps": 25.0,
                    "sample_rate": SR, "width": 32, "height": 32, "events": [], "source": {"generator": "test"}}
            for ext, payload in (("flac", buffer.getvalue()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_foley_fit_tiny_stage1_through_the_cli(tmp_path: Path) -> None:
    from foley.cli import main

    _write_audio_shard(tmp_path / "train", count=4, seconds=1.3, seed=0)
    _write_audio_shard(tmp_path / "val", count=2, seconds=1.3, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = main([
            "fit",
            "--config", str(REPO / "configs/tiny/stage1.yaml"),
            f"--data.init_args.train_shards={tmp_path / 'train'}",
            f"--data.init_args.val_shards={tmp_path / 'val'}",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.logger=false",
            "--model.init_args.gan_start_step=1",
            "--trainer.limit_train_batches=2",  # the shard holds exactly two batches
        ])
    assert int(cli.model.generator_steps) == 2  # 4 samples / batch 2, both steps completed
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    checkpoints = sorted((tmp_path / "run").rglob("*.ckpt"))
    assert checkpoints
    codec = Codec.from_checkpoint(checkpoints[-1])
    assert codec.latent_channels == 40 and codec.samples_per_latent == 1024
    for name, value in codec.state_dict().items():
        torch.testing.assert_close(value, cli.model.codec.state_dict()[name].cpu(), msg=name)
    wave = torch.zeros(1, 12345)
    assert codec.decode(codec.encode(wave), 12345).shape == (1, 12345)


def test_paper_scale_config_parses_with_resolved_interpolations(capsys: pytest.CaptureFixture) -> None:
    from foley.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(REPO / "configs/stage1.yaml"), "--print_config"])
    assert stop.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "${" not in printed
    assert "upsample_initial_channel: 1536" in printed and "encoder_layers: 32" in printed
    assert "latent_channels: 40" in printed and "load_video: false" in printed


def test_initialisation_from_pretrained_files(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = _module()
    with torch.no_grad():
        for p in source.codec.parameters():
            p.add_(0.01)
    vocoder_file = tmp_path / "bigvgan_generator.pt"
    legacy = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v"): v
        for k, v in source.codec.vocoder.state_dict().items()
    }
    torch.save({"generator": legacy}, vocoder_file)
    codec_file = tmp_path / "codec.safetensors"
    source.codec.save(codec_file)

    with_vocoder = _module(pretrained_vocoder=str(vocoder_file))
    for name, value in source.codec.vocoder.state_dict().items():
        torch.testing.assert_close(with_vocoder.codec.vocoder.state_dict()[name], value)
    with_codec = _module(pretrained_codec=str(codec_file))
    for name, value in source.codec.state_dict().items():
        torch.testing.assert_close(with_codec.codec.state_dict()[name], value)
