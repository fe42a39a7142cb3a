"""foley.stages.ema: the weight average in closed form."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from foley.stages.ema import ema_decay, update_ema


def test_ema_decay_warms_up_then_holds() -> None:
    assert ema_decay(0, 0.999, warmup=True) == pytest.approx(0.1)
    assert ema_decay(90, 0.999, warmup=True) == pytest.approx(0.91)
    assert ema_decay(10**6, 0.999, warmup=True) == 0.999
    assert ema_decay(0, 0.999, warmup=False) == 0.999


def test_update_ema_lerps_parameters_and_copies_buffers() -> None:
    network, ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        network.weight.fill_(2.0)
        ema.weight.fill_(1.0)
    network.running_mean.fill_(5.0)
    update_ema(ema, network, decay=0.75)
    torch.testing.assert_close(ema.weight, torch.full((3,), 0.75 * 1.0 + 0.25 * 2.0), rtol=0, atol=0)
    torch.testing.assert_close(ema.running_mean, network.running_mean, rtol=0, atol=0)
