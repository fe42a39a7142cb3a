"""Configurable: constructor arguments recorded as class_path/init_args, rebuilt by jsonargparse."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from foley.configurable import ConfigError, Configurable, build
from foley.models.codec import Codec
from foley.models.griffin_lim import GriffinLimVocoder
from foley.models.mel import LogMelSpectrogram
from foley.models.mel_vae import MelVAE


def _codec() -> Codec:
    return Codec(MelVAE(n_mels=16, latent_channels=4, hidden_channels=8, encoder_layers=2, decoder_layers=2,
                        dilation_cycle=(1, 3)),
                 GriffinLimVocoder(num_mels=16, n_iter=2), LogMelSpectrogram(n_mels=16))


def test_records_bound_arguments_with_defaults_and_nested_parts() -> None:
    config = _codec().init_config()
    assert config["class_path"] == "foley.models.codec.Codec"
    vae = config["init_args"]["vae"]
    assert vae["class_path"] == "foley.models.mel_vae.MelVAE"
    # Given values, defaults filled in, tuples as JSON lists.
    assert vae["init_args"]["hidden_channels"] == 8 and vae["init_args"]["kernel_size"] == 3
    assert vae["init_args"]["dilation_cycle"] == [1, 3] and vae["init_args"]["logvar_clamp"] == [-30.0, 20.0]
    assert config["init_args"]["vocoder"]["init_args"]["n_iter"] == 2
    assert json.loads(json.dumps(config)) == config


def test_build_is_the_inverse_and_copies_keep_the_record() -> None:
    codec = _codec()
    rebuilt = build(codec.init_config(), nn.Module)
    assert isinstance(rebuilt, Codec) and rebuilt.init_config() == codec.init_config()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in codec.state_dict().items()}
    assert copy.deepcopy(codec).init_config() == codec.init_config()


def test_build_refuses_bad_arguments_and_foreign_classes() -> None:
    config = _codec().init_config()
    config["init_args"]["vae"]["init_args"]["hidden_chanels"] = 3
    with pytest.raises(ConfigError, match="hidden_chanels"):
        build(config, nn.Module, where="codec.json")
    with pytest.raises(ConfigError, match="codec.json: class_path 'torch.nn.Linear' is outside foley"):
        build({"class_path": "torch.nn.Linear", "init_args": {"in_features": 1, "out_features": 1}}, nn.Module,
              where="codec.json")


def test_arguments_without_a_json_form_are_reported() -> None:
    class Holder(Configurable, nn.Module):
        def __init__(self, inner: nn.Module, scale: float = 1.0) -> None:
            super().__init__()
            self.inner = inner

    holder = Holder(nn.Linear(2, 2), scale=torch.tensor(2.0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="inner.*torch.nn.modules.linear.Linear"):
        holder.init_config()
