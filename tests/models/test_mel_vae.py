"""Mel-VAE: latent geometry, configurable depth, reparameterisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from foley.models.mel_vae import MelVAE


pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny(latent_channels: int = 8) -> MelVAE:
    return MelVAE(latent_channels=latent_channels, hidden_channels=16, encoder_layers=4, decoder_layers=6)


@pytest.mark.parametrize("latent_frames", [1, 13, 44])
def test_one_latent_per_two_mel_frames(latent_frames: int) -> None:
    vae = _tiny()
    mel = torch.randn(2, 128, 2 * latent_frames) - 5
    mean, logvar = vae.encode(mel)
    assert mean.shape == logvar.shape == (2, 8, latent_frames)
    assert vae.decode(mean).shape == mel.shape


def test_odd_mel_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="multiple of 2"):
        _tiny().encode(torch.zeros(1, 128, 7))


@pytest.mark.parametrize("layers", [4, 32])
def test_encoder_depth_counts_convolution_layers(layers: int) -> None:
    with torch.device("meta"):
        vae = MelVAE(hidden_channels=64, encoder_layers=layers, decoder_layers=layers)
    convs = [m for m in vae.encoder.modules() if isinstance(m, nn.Conv1d)]
    # Every counted layer is a convolution; the 1x1 output projection comes on top.
    assert len(convs) == layers + 1
    assert convs[-1].out_channels == 2 * 40 and convs[-1].kernel_size == (1,)
    strided = [c for c in convs if c.stride == (2,)]
    assert len(strided) == 1  # exactly one 2x temporal downsample


def test_invalid_depth_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="even number"):
        MelVAE(encoder_layers=5)


def test_reparameterisation_has_the_posterior_moments() -> None:
    mean = torch.full((4, 3, 5000), 1.5)
    logvar = torch.full_like(mean, math.log(4.0))
    samples = MelVAE.sample(mean, logvar, generator=torch.Generator().manual_seed(0))
    assert abs(float(samples.mean()) - 1.5) < 0.02
    assert abs(float(samples.std()) - 2.0) < 0.02


def test_decoder_starts_near_the_mel_mean() -> None:
    # Zero-initialised residual branches keep the untrained output O(1) in normalised units,
    # i.e. within a few std of mel_mean in log-mel units: no exploding initial losses.
    vae = _tiny()
    out = vae.decode(torch.randn(1, 8, 10))
    assert float((out - vae.mel_mean).abs().mean()) < 3 * vae.mel_std
