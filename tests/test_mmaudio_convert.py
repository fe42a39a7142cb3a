"""`foley convert mmaudio` end to end on tiny files in MMAudio's layouts.

The released files cannot be downloaded here, so the test writes tiny ones with the same
structure: the network in MMAudio's key layout (shapes from the converter's own map, which
tests/models/test_mmaudio_network.py checks against MMAudio's code and the manifests), the
VAE fixture of tests/models/test_mmaudio_vae.py as ``v1-44.pth`` and a tiny BigVGAN as
``bigvgan_generator.pt``; tiny random CLIP/Synchformer encoders stand in for DFN5B and
Synchformer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from foley import FoleyPipeline
from foley.cli import main
from foley.convert.mmaudio import convert_mmaudio, required_files
from foley.convert.mmaudio_network import MMAudioVariant, expected_reference_shapes, network_config
from helpers.pipeline_fakes import event_video
from helpers.reference_weights import uniform_weights
from helpers.tiny_pipeline import CLIP_CONFIG, SYNC_ARGS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mmaudio"
SR = 44100
TINY_VOCODER = dict(upsample_rates=[8, 4, 4, 4], upsample_kernel_sizes=[16, 8, 8, 8], upsample_initial_channel=32,
                    resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])
# A tiny v1 network whose feature widths are the tiny encoders' (CLIP 16, Synchformer 32).
TINY = MMAudioVariant("tiny_44k", hidden_dim=64, num_heads=2, depth=3, fused_depth=1, v2=False,
                      filename="mmaudio_tiny_44k.pth", md5="")
FEATURES = dict(latent_dim=8, clip_dim=16, sync_dim=32, text_dim=20, max_text_tokens=5)


def vae_overrides() -> dict:
    with safe_open(str(FIXTURES / "vae_weights.safetensors"), "pt") as handle:
        config = json.loads(handle.metadata()["foley_config"])
    return {k: v for k, v in config.items() if k != "n_mels"}


def write_weights(folder: Path, variant: MMAudioVariant = TINY, features: dict = FEATURES, seed: int = 3) -> None:
    from foley.models.bigvgan import BigVGAN

    folder.mkdir(parents=True, exist_ok=True)
    config = network_config(variant.hidden_dim, variant.num_heads, variant.depth, variant.fused_depth, variant.v2,
                            **features)
    torch.save(uniform_weights(expected_reference_shapes(config), seed), folder / variant.filename)
    torch.save(load_file(str(FIXTURES / "vae_weights.safetensors")), folder / "v1-44.pth")
    torch.manual_seed(0)
    torch.save({"generator": BigVGAN(**TINY_VOCODER).state_dict()}, folder / "bigvgan_generator.pt")


def tiny_encoders() -> dict:
    from foley.encoders import ClipEncoder, SynchformerEncoder

    torch.manual_seed(0)
    return {"clip_encoder": ClipEncoder(model_config=CLIP_CONFIG), "sync_encoder": SynchformerEncoder(**SYNC_ARGS)}


def convert_tiny(weights: Path, out: Path, **kwargs) -> Path:
    return convert_mmaudio(TINY, weights, out, verify=False, encoders=tiny_encoders(), feature_overrides=FEATURES,
                           vae_overrides=vae_overrides(), vocoder_config=TINY_VOCODER,
                           stream_settings={"clip_size": 32, "sync_size": 32}, **kwargs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mmaudio")
    write_weights(root / "files")
    folder = convert_tiny(root / "files", root / "model")
    video = root / "clip.mp4"
    event_video(video, 1.6, events=[0.4, 1.1], fps=30.0)
    return {"root": root, "folder": folder, "video": video}


def test_converted_folder_generates_dual_mono_at_mmaudio_defaults(converted: dict) -> None:
    pipeline = FoleyPipeline.from_pretrained(converted["folder"])
    generation = pipeline.generation
    assert (generation.steps, generation.cfg, generation.sampler) == (25, 4.5, "euler")
    assert pipeline.settings.window_seconds == 8.0 and pipeline.settings.frame_rule == "mmaudio"
    assert pipeline.stereo is None
    audio = pipeline(converted["video"], seed=2, steps=4)
    assert audio.shape == (2, round(1.6 * SR))
    assert torch.equal(audio[0], audio[1]) and audio.abs().max() > 0


def test_network_and_latent_statistics_are_the_files(converted: dict) -> None:
    pipeline = FoleyPipeline.from_pretrained(converted["folder"])
    config = network_config(TINY.hidden_dim, TINY.num_heads, TINY.depth, TINY.fused_depth, TINY.v2, **FEATURES)
    reference = uniform_weights(expected_reference_shapes(config), 3)
    codec = pipeline.flow.codec
    torch.testing.assert_close(codec.latent_mean, reference["latent_mean"].reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(codec.latent_std, reference["latent_std"].reshape(-1), rtol=0, atol=0)
    network = pipeline.flow.inference_network
    torch.testing.assert_close(network.empty_text, reference["empty_string_feat"], rtol=0, atol=0)


def test_flow_module_generation_is_mmaudio_generation(tmp_path: Path) -> None:
    """The converted FlowModule's own sampling (its unconditional branch, CFG, Euler grid and
    latent denormalisation) reproduces MMAudio's 25-step generation from the same features and noise.

    Tolerance: as tests/models/test_mmaudio_network.py (1.6e-4 of the largest latent).
    """
    from foley.convert.mmaudio_network import convert_network_state_dict
    from foley.convert.mmaudio_vae import build_codec
    from foley.flow import FlowMatching
    from foley.models.mmdit import MMDiT
    from foley.stages.flow_module import FlowModule

    tensors = load_file(str(FIXTURES / "network_v1.safetensors"))
    with safe_open(str(FIXTURES / "network_v1.safetensors"), "pt") as handle:
        meta = handle.metadata()
    tiny = json.loads(meta["config"])
    config = network_config(tiny["hidden_dim"], tiny["num_heads"], tiny["depth"], tiny["fused_depth"], tiny["v2"],
                            latent_dim=tiny["latent_dim"], clip_dim=tiny["clip_dim"], sync_dim=tiny["sync_dim"],
                            text_dim=tiny["text_dim"], max_text_tokens=tiny["text_seq_len"])
    state, mean, std = convert_network_state_dict(uniform_weights(json.loads(meta["weight_shapes"]),
                                                                  int(meta["weight_seed"])), config)
    network = MMDiT(**config)
    network.load_state_dict(state)
    write_weights(tmp_path)
    codec = build_codec(tmp_path / "v1-44.pth", tmp_path / "bigvgan_generator.pt", vae_md5=None,
                        vae_overrides=vae_overrides(), vocoder_config=TINY_VOCODER)
    codec.latent_mean.copy_(mean)
    codec.latent_std.copy_(std)
    flow = FlowModule(network=network, flow=FlowMatching(), codec=codec, ema_decay=0.0, cfg_strength=4.5,
                      sample_steps=25).eval()
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    batch_size, length = inputs["noise"].shape[:2]
    samples = length * flow.samples_per_latent
    batch = {"clip_features": inputs["clip_f"], "sync_features": inputs["sync_f"], "text_features": inputs["text_f"],
             "audio_mask": torch.ones(batch_size, samples, dtype=torch.bool),
             "seconds_start": torch.zeros(batch_size), "seconds_total": torch.full((batch_size,), samples / SR)}
    latent = flow.generate_latents(batch, noise=inputs["noise"])
    generated = codec.denormalize_latent(latent.transpose(1, 2)).transpose(1, 2)
    reference = tensors["output.generated"]
    assert float((generated - reference).abs().max() / reference.abs().max()) < 1.6e-4


def test_missing_files_are_all_named_with_their_sources(tmp_path: Path, caplog) -> None:
    with caplog.at_level("ERROR"), pytest.raises(SystemExit) as stop:
        main(["convert", "mmaudio", "--variant", "large_44k_v2", "--weights_dir", str(tmp_path), "--out",
              str(tmp_path / "model")])
    assert stop.value.code == 2
    message = caplog.text
    for name, url, _ in required_files("large_44k_v2"):
        assert name in message and url in message
    assert not (tmp_path / "model").exists()


def test_md5_and_variant_mismatch_are_named(tmp_path: Path) -> None:
    files = tmp_path / "files"
    write_weights(files)
    (files / "mmaudio_small_44k.pth").write_bytes((files / TINY.filename).read_bytes())
    for name in ("v1-44.pth", "bigvgan_generator.pt"):
        assert (files / name).exists()
    (files / "synchformer_state_dict.pth").write_bytes(b"not the file")
    with pytest.raises(ValueError, match="mmaudio_small_44k.pth: md5 .* differs from babd74c884783d13701ea2820a5f5b6d"):
        convert_mmaudio("small_44k", files, tmp_path / "a")
    with pytest.raises(ValueError, match=r"mmaudio_small_44k.pth is not an MMAudio network .*\n  missing key"):
        convert_mmaudio("small_44k", files, tmp_path / "b", verify=False, encoders=tiny_encoders())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_licence_is_logged(tmp_path: Path, caplog) -> None:
    write_weights(tmp_path / "files")
    with caplog.at_level("WARNING"):
        convert_tiny(tmp_path / "files", tmp_path / "model")
    assert "CC-BY-NC 4.0" in caplog.text


def test_download_by_name_offline_names_every_file(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    from foley.hub import HubUnavailableError

    monkeypatch.setenv("FOLEY_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError) as error:
        FoleyPipeline.from_pretrained("mmaudio:large_44k_v2")
    message = str(error.value)
    for name, url, _ in required_files("large_44k_v2"):
        assert f"{name}  <- {url}" in message
    assert str(tmp_path / "mmaudio" / "files") in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(ValueError, match="unknown MMAudio variant 'huge_44k'"):
        FoleyPipeline.from_pretrained("mmaudio:huge_44k")


def test_download_by_name_uses_the_converted_cache(converted: dict, tmp_path: Path, monkeypatch) -> None:
    import shutil

    monkeypatch.setenv("FOLEY_CACHE", str(tmp_path))
    shutil.copytree(converted["folder"], tmp_path / "mmaudio" / "small_44k")
    pipeline = FoleyPipeline.from_pretrained("mmaudio:small_44k")
    assert pipeline.generation.cfg == 4.5 and pipeline.stereo is None


REPO = Path(__file__).resolve().parents[1]


def _fit(converted: dict, synth_shards: dict, root: Path, *extra: str) -> "subprocess.CompletedProcess[str]":
    import os
    import subprocess
    import sys

    args = ["fit", "--config", str(REPO / "configs/tiny/stage2.yaml"),
            "--config", str(REPO / "configs/pretrained/mmaudio_small_44k.yaml"),
            f"--model.init_args.init_from={converted['folder']}",
            f"--data.init_args.train_shards={synth_shards['train']}", f"--data.init_args.val_shards={synth_shards['val']}",
            "--data.init_args.clip_seconds=1.0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={root}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "foley.cli", *args], cwd=root.parent, env=env, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_stage2_trains_from_the_converted_model(converted: dict, synth_shards: dict, tmp_path: Path) -> None:
    """`foley fit` with configs/pretrained/mmaudio_*.yaml starts from the converted weights and trains them."""
    root = tmp_path / "run"
    result = _fit(converted, synth_shards, root, "--data.init_args.clip_size=32", "--data.init_args.sync_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = sorted(root.rglob("*.ckpt"))[-1]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    trained = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
    start = load_file(str(converted["folder"] / "generator.safetensors"))
    assert set(trained) == set(start)
    change = max(float((trained[k] - start[k]).abs().max()) for k in start)
    # configs/tiny/stage2.yaml trains with AdamW at lr <= 1e-3: each step moves a weight by at most
    # ~1.5 lr (|m_hat / sqrt(v_hat)| <= 1 at step 1, <= 1.4 at step 2 with betas 0.9/0.95), so two steps
    # stay below 5e-3, while the file's weights are ~0.1: the run started from the converted file and trained.
    assert 0 < change < 5e-3


def test_stage2_refuses_other_frame_streams(converted: dict, synth_shards: dict, tmp_path: Path) -> None:
    result = _fit(converted, synth_shards, tmp_path / "run")  # MMAudio's 384 px CLIP frames, the folder's are 32 px
    assert result.returncode != 0
    assert "--data.init_args.clip_size=32" in result.stderr and "--data.init_args.sync_size=32" in result.stderr
