"""FlowModule(init_from=MODEL_DIR): stage 2 starts from a model folder's generator (foley.stages.init_from)."""
from __future__ import annotations

import pytest
import torch

from foley.model_folder import ModelFolderError
from foley.stages.flow_module import FlowModule
from foley.stages.init_from import InitFromError, check_data_settings
from helpers.stage2_parts import tiny_codec
from helpers.tiny_pipeline import tiny_real_pipeline


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    pipe = tiny_real_pipeline(seed=0)
    folder = pipe.save_pretrained(tmp_path_factory.mktemp("init_from") / "model")
    return pipe, folder


def test_parts_left_out_come_from_the_folder(base) -> None:
    pipe, folder = base
    module = FlowModule(init_from=str(folder), ema_decay=0.99)
    want = pipe.flow.network.state_dict()
    got = module.network.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # The average starts at the folder's weights too.
    ema = module.ema_network.state_dict()
    assert all(torch.equal(want[k], ema[k]) for k in want)
    assert module.encoder_fingerprints() == pipe.flow.encoder_fingerprints()
    assert module.clip_encoder is not None and module.sync_encoder is not None and module.text_encoder is None
    assert module.init_settings["clip_size"] == 32 and module.init_settings["sync_size"] == 32


def test_given_network_receives_the_folder_weights(base) -> None:
    pipe, folder = base
    from foley.models.mmdit import MMDiT

    torch.manual_seed(1)
    network = MMDiT(latent_dim=4, hidden_dim=32, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=16,
                    sync_dim=32, text_dim=32, clip_rate=8.0, sync_rate=25.0, max_text_tokens=16)
    module = FlowModule(network=network, init_from=str(folder), ema_decay=0.0)
    assert module.network is network
    want = pipe.flow.network.state_dict()
    assert all(torch.equal(want[k], v) for k, v in network.state_dict().items())


def test_other_architecture_is_refused_naming_the_file(base) -> None:
    _, folder = base
    from foley.models.mmdit import MMDiT

    network = MMDiT(latent_dim=4, hidden_dim=64, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=16,
                    sync_dim=32, text_dim=32, clip_rate=8.0, sync_rate=25.0, max_text_tokens=16)
    with pytest.raises(ModelFolderError, match="generator.safetensors"):
        FlowModule(network=network, init_from=str(folder))


def test_other_codec_is_refused_with_both_fingerprints(base) -> None:
    pipe, folder = base
    torch.manual_seed(123)
    other = tiny_codec()
    from foley.encoders.fingerprint import weights_fingerprint

    theirs, ours = weights_fingerprint(pipe.flow.codec), weights_fingerprint(other)
    assert theirs != ours
    with pytest.raises(InitFromError) as error:
        FlowModule(init_from=str(folder), codec=other)
    assert theirs in str(error.value) and ours in str(error.value) and "codec" in str(error.value)
    # The same codec passes (the config may restate the one the model was trained with).
    FlowModule(init_from=str(folder), codec=pipe.flow.codec, ema_decay=0.0)


def test_other_encoder_is_refused_with_both_fingerprints(base) -> None:
    pipe, folder = base
    from foley.encoders import SynchformerEncoder
    from foley.encoders.fingerprint import weights_fingerprint
    from helpers.tiny_pipeline import SYNC_ARGS

    torch.manual_seed(7)
    other = SynchformerEncoder(**SYNC_ARGS)
    theirs, ours = weights_fingerprint(pipe.flow.sync_encoder), weights_fingerprint(other)
    with pytest.raises(InitFromError) as error:
        FlowModule(init_from=str(folder), sync_encoder=other)
    assert theirs in str(error.value) and ours in str(error.value) and "sync_encoder" in str(error.value)


def test_checkpoints_leave_out_folder_parts_and_reload(base) -> None:
    _, folder = base
    module = FlowModule(init_from=str(folder), ema_decay=0.99)
    with torch.no_grad():
        for parameter in module.network.parameters():
            parameter.add_(0.01)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith(("codec.", "clip_encoder.", "sync_encoder.")) for k in checkpoint["state_dict"])
    again = FlowModule(init_from=str(folder), ema_decay=0.99)
    again.on_load_checkpoint(checkpoint)
    again.load_state_dict(checkpoint["state_dict"], strict=True)
    want = module.state_dict()
    assert all(torch.equal(want[k], v) for k, v in again.state_dict().items())


def test_data_settings_must_match_the_folder() -> None:
    folder_settings = {"clip_size": 32, "sync_size": 32, "clip_fps": 8.0, "sample_rate": 44100}
    check_data_settings("M", folder_settings, {"clip_size": 32, "sync_size": 32, "batch_size": 4})
    with pytest.raises(InitFromError, match=r"--data.init_args.clip_size=32"):
        check_data_settings("M", folder_settings, {"clip_size": 224, "sync_size": 32})


def test_needs_a_network_and_codec_without_init_from() -> None:
    with pytest.raises(ValueError, match="init_from"):
        FlowModule(codec=tiny_codec())
    with pytest.raises(ValueError, match="codec_checkpoint"):
        FlowModule(network=torch.nn.Linear(2, 2))


def test_adapter_checkpoint_reloads_onto_the_folder_base(base) -> None:
    _, folder = base
    module = FlowModule(init_from=str(folder), adapter={"rank": 2, "targets": r"joint_blocks\.0\.audio\.qkv"}, ema_decay=0.9)
    assert module.ema_network.joint_blocks[0].audio.qkv.base_layer.weight is module.network.joint_blocks[0].audio.qkv.base_layer.weight
    with torch.no_grad():
        for name, parameter in module.network.named_parameters():
            if ".lora_B." in name:
                parameter.normal_()
    module.update_ema(step=100)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert sorted(k.split(".lora_")[1] for k in checkpoint["state_dict"] if ".lora_" in k) == [
        "A.default.weight", "A.default.weight", "B.default.weight", "B.default.weight"]
    assert not any(k.endswith("base_layer.weight") for k in checkpoint["state_dict"])
    again = FlowModule(init_from=str(folder), adapter={"rank": 2, "targets": r"joint_blocks\.0\.audio\.qkv"}, ema_decay=0.9)
    again.on_load_checkpoint(checkpoint)
    again.load_state_dict(checkpoint["state_dict"], strict=True)
    want = module.state_dict()
    assert all(torch.equal(want[k], v) for k, v in again.state_dict().items())
    # An adapter checkpoint of another base is refused with both fingerprints.
    checkpoint["foley_adapter"]["base"]["generator"] = "0123456789abcdef"
    with pytest.raises(ValueError, match="0123456789abcdef"):
        again.on_load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="init_from"):
        FlowModule(codec=tiny_codec(), network=torch.nn.Linear(2, 2), adapter={"rank": 2})
