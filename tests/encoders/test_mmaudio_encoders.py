"""foley.convert.mmaudio_encoders: the encoder descriptions a converted MMAudio model folder holds, and their errors."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from foley.configurable import build
from foley.convert.mmaudio_encoders import (
    CLIP_MODEL,
    MMAUDIO_STREAM_SETTINGS,
    SYNCHFORMER_MD5,
    check_synchformer_file,
    mmaudio_encoder_configs,
    mmaudio_encoders,
)
from foley.encoders.clip import CLIP_MEAN, CLIP_STD, ClipEncoder
from foley.encoders.synchformer import SynchformerEncoder
from foley.encoders.text import ClipTextEncoder
from foley.pipeline_settings import PipelineSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mmaudio"


def _sync_weights() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURES / "sync_features.safetensors"), framework="pt") as handle:
        weights = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith("vfeat_extractor.")}
        return weights, json.loads(handle.metadata()["tiny"])


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_configs_describe_mmaudios_front_ends(tmp_path):
    weights, tiny = _sync_weights()
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save({**weights, "aproj.weight": torch.zeros(1)}, path)
    configs = mmaudio_encoder_configs(path)
    assert set(configs) == {"clip_encoder", "sync_encoder", "text_encoder"}
    clip_args, text_args = configs["clip_encoder"]["init_args"], configs["text_encoder"]["init_args"]
    assert clip_args["model_name"] == text_args["model_name"] == CLIP_MODEL == "hf-hub:apple/DFN5B-CLIP-ViT-H-14-384"
    assert (clip_args["resize"], clip_args["preprocess"]) == ("stretch", "torchvision")
    assert tuple(clip_args["mean"]) == CLIP_MEAN and tuple(clip_args["std"]) == CLIP_STD
    assert text_args["tokenizer_name"] == "ViT-H-14-378-quickgelu" and text_args["empty_caption"] == "encode"
    assert configs["sync_encoder"]["init_args"] == {"checkpoint_path": str(path), "preprocess": "torchvision"}
    # Every entry builds through the model folder's builder (tiny sizes swapped in: the real CLIP
    # needs the Hub and the real Synchformer file 490 MB).
    tiny_clip = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1}}
    configs["clip_encoder"]["init_args"]["model_config"] = tiny_clip
    configs["text_encoder"]["init_args"]["model_config"] = tiny_clip
    configs["sync_encoder"]["init_args"].update(dim=tiny["EMBED_DIM"], num_heads=tiny["NUM_HEADS"], depth=tiny["DEPTH"])
    built = {name: build(config, torch.nn.Module, where=name) for name, config in configs.items()}
    assert isinstance(built["clip_encoder"], ClipEncoder) and built["clip_encoder"].resize == "stretch"
    assert isinstance(built["text_encoder"], ClipTextEncoder) and built["text_encoder"].context_length == 77
    assert isinstance(built["sync_encoder"], SynchformerEncoder) and built["sync_encoder"].weights_from_file
    state = built["sync_encoder"].state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    for name, encoder in built.items():  # what a model folder writes for it (defaults filled in)
        recorded = encoder.init_config()
        assert recorded["class_path"] == configs[name]["class_path"], name
        given = configs[name]["init_args"]
        assert {k: recorded["init_args"][k] for k in given} == given, name


def test_stream_settings_are_pipeline_settings():
    settings = PipelineSettings(**MMAUDIO_STREAM_SETTINGS)
    assert (settings.clip_fps, settings.clip_size, settings.clip_crop) == (8.0, 384, "resize")
    assert (settings.sync_fps, settings.sync_size, settings.frame_rule) == (25.0, 224, "mmaudio")


def test_synchformer_file_is_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="synchformer_state_dict.pth from https://github.com/hkchengrex/MMAudio"):
        mmaudio_encoders(tmp_path / "synchformer_state_dict.pth")
    path = tmp_path / "synchformer_state_dict.pth"
    path.write_bytes(b"not the released file")
    with pytest.raises(ValueError, match=f"md5 .* differs from {SYNCHFORMER_MD5}"):
        mmaudio_encoders(path)
    assert check_synchformer_file(path, hashlib.md5(b"not the released file").hexdigest()) == path


def test_synchformer_of_another_size_names_the_tensors(tmp_path):
    weights, tiny = _sync_weights()
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save(weights, path)
    with pytest.raises(ValueError, match=r"another shape \(vfeat_extractor\..*: file \(.*16.*\), encoder"):
        SynchformerEncoder(checkpoint_path=str(path), dim=32, num_heads=tiny["NUM_HEADS"], depth=tiny["DEPTH"])


def test_offline_clip_names_the_files_to_download(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    for cls in (ClipEncoder, ClipTextEncoder):
        with pytest.raises(RuntimeError) as error:
            cls(model_name=CLIP_MODEL, pretrained=None)
        message = str(error.value)
        assert "huggingface-cli download apple/DFN5B-CLIP-ViT-H-14-384" in message
        assert "open_clip_config.json" in message and "open_clip_pytorch_model.bin" in message
        assert "local-dir:DIR" in message
    with pytest.raises(ValueError, match="local-dir"):
        ClipEncoder(model_name=CLIP_MODEL, pretrained=None, checkpoint_path=str(tmp_path / "x.bin"))


def test_tiny_encoders_round_trip_through_model_folder_components(tmp_path):
    # JSON (jsonargparse rebuilds the Literal options) + safetensors, as a model folder stores them.
    from foley.model_folder import load_component, save_component

    tiny_clip = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    text = ClipTextEncoder(model_config=tiny_clip, empty_caption="absent", mask_padding=True)
    image = ClipEncoder(model_config=tiny_clip, resize="stretch", preprocess="torchvision", mean=CLIP_MEAN, std=CLIP_STD)
    frames = torch.randint(0, 256, (1, 2, 3, 20, 44), dtype=torch.uint8)
    for name, encoder, inputs in (("text_encoder", text, (["a door slams", ""],)), ("clip_encoder", image, (frames,))):
        save_component(encoder, tmp_path / name, name)
        loaded = load_component(tmp_path / name, name, torch.nn.Module)
        assert loaded.init_config() == encoder.init_config()
        for got, expected in zip(loaded(*inputs), encoder(*inputs)):
            assert torch.equal(got, expected), name
