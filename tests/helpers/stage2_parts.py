"""Tiny real stage-1 codec shared by the stage-2 tests (FlowModule, ``foley extract``)."""
from __future__ import annotations

from pathlib import Path

import torch

from foley.models.bigvgan import BigVGAN
from foley.models.codec import Codec
from foley.models.mel import LogMelSpectrogram
from foley.models.mel_vae import MelVAE


def tiny_codec(latent_channels: int = 4) -> Codec:
    """A randomly initialised Codec at 44.1 kHz / hop 512 (1024 samples per latent), 16 mel bands."""
    mel = LogMelSpectrogram(n_mels=16)
    vae = MelVAE(n_mels=16, latent_channels=latent_channels, hidden_channels=16, encoder_layers=2, decoder_layers=2)
    vocoder = BigVGAN(num_mels=16, upsample_rates=(8, 8, 8), upsample_kernel_sizes=(16, 16, 16),
                      upsample_initial_channel=16, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    return Codec(vae, vocoder, mel)


def save_tiny_codec(path: Path, latent_channels: int = 40) -> str:
    """Write a tiny codec checkpoint (``Codec.save``) matching configs/tiny/stage2.yaml's latent width."""
    torch.manual_seed(0)
    tiny_codec(latent_channels).save(path)
    return str(path)
