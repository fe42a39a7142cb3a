"""Mono2Stereo: pan-mask algebra and the centred start."""
from __future__ import annotations

import torch

from foley.models.mono2stereo import LOG_MEL_FLOOR, Mono2Stereo, apply_pan, pan_target


def _mono_mel(b: int = 2, n_mels: int = 16, frames: int = 20) -> torch.Tensor:
    return torch.randn(b, n_mels, frames) - 4.0


def test_untrained_network_keeps_everything_centred() -> None:
    net = Mono2Stereo(n_mels=16, hidden=8, layers=2, video_channels=4, video_size=16, video_columns=4)
    mono = _mono_mel()
    frames = torch.randint(0, 256, (2, 7, 3, 24, 24), dtype=torch.uint8)
    for video in (None, frames, torch.zeros_like(frames)):
        stereo = net.stereo_mel(mono, video)
        assert torch.equal(stereo[:, 0], stereo[:, 1])
        torch.testing.assert_close(stereo[:, 0], mono)


def test_pan_target_and_apply_pan_invert_amplitude_panning() -> None:
    # A source panned by gains (gL, gR): each channel's linear mel is the gain times the source's.
    source = torch.rand(3, 16, 10) + 0.01
    gains = torch.rand(3, 2, 1, 10) + 0.05  # pan varies per clip and frame
    stereo_linear = gains * source.unsqueeze(1)
    stereo = stereo_linear.log()
    pan, energy = pan_target(stereo)
    torch.testing.assert_close(pan, (gains[:, 0] / gains.sum(1)).expand_as(pan))
    mono = stereo_linear.mean(1).log()
    torch.testing.assert_close(energy, stereo_linear.mean(1))
    torch.testing.assert_close(apply_pan(mono, pan), stereo, atol=1e-5, rtol=1e-5)


def test_apply_pan_preserves_the_mono_mix_and_extremes() -> None:
    mono = _mono_mel()
    pan = torch.rand_like(mono)
    stereo = apply_pan(mono, pan, floor=-100.0)
    torch.testing.assert_close(stereo.exp().mean(1), mono.exp(), atol=1e-6, rtol=1e-5)
    hard_left = apply_pan(mono, torch.ones_like(mono))
    torch.testing.assert_close(hard_left[:, 0], mono + torch.log(torch.tensor(2.0)), atol=1e-5, rtol=1e-5)
    # The silent ear sits at the mel front end's floor (ln 1e-5), like digital silence.
    torch.testing.assert_close(hard_left[:, 1], torch.full_like(mono, LOG_MEL_FLOOR))


def test_video_changes_the_prediction_once_the_head_is_trained() -> None:
    torch.manual_seed(0)
    net = Mono2Stereo(n_mels=16, hidden=8, layers=1, video_channels=4, video_size=16, video_columns=4)
    torch.nn.init.normal_(net.head.weight, std=0.5)
    mono = _mono_mel(1)
    left = torch.zeros(1, 5, 3, 16, 16, dtype=torch.uint8)
    right = left.clone()
    left[..., :, :4] = 255
    right[..., :, -4:] = 255
    assert not torch.allclose(net(mono, left), net(mono, right))
    # A missing stream and an all-masked stream both mean "no video".
    torch.testing.assert_close(net(mono, None), net(mono, left, torch.zeros(1, 5, dtype=torch.bool)))
