"""LoRA fine-tuning end to end on a tiny trained-format model: fit -> adapter -> generate -> merge.

The base is a tiny real pipeline saved as a model folder; ``foley fit`` with
``configs/finetune/lora.yaml`` trains an adapter on raw shards and on ``foley extract`` feature
shards; ``foley export`` writes the adapter folder and the merged model folder; the merged model
must be the base plus the adapter, and generate the same audio as the unmerged adapter.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foley.adapters.folder import AdapterError, load_adapter, merge_adapters, save_adapter, use_adapter
from foley.adapters.lora import adapter_names
from foley.cli import main
from foley.pipeline import FoleyPipeline
from helpers.tiny_pipeline import tiny_real_pipeline

EPS32 = 2.0 ** -24  # unit roundoff of float32
CONFIGS = ["--config", "configs/finetune/lora.yaml", "--config", "configs/finetune/demo.yaml"]
TINY = ["--data.init_args.clip_seconds=1.0", "--data.init_args.batch_size=2", "--data.init_args.shuffle_buffer=4",
        "--trainer.max_steps=3", "--model.init_args.adapter.rank=4", "--model.init_args.adapter.alpha=8",
        "--model.init_args.warmup_steps=1", "--model.init_args.optimizer.init_args.lr=0.03"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from foley.synth.world import synth

    root = tmp_path_factory.mktemp("lora")
    base = tiny_real_pipeline(seed=0).save_pretrained(root / "model")
    shards = synth(root / "bells", clips=4, seconds=1.0, size=32, shard_size=4, categories=["bell"])
    return {"root": root, "model": base, "shards": shards}


def _fit(world, name: str, *extra: str) -> tuple[str, dict]:
    run = world["root"] / name
    main(["fit", *CONFIGS, f"--model.init_args.init_from={world['model']}", *TINY,
          f"--trainer.default_root_dir={run}", *extra])
    checkpoint = str(sorted(run.rglob("last.ckpt"))[-1])
    return checkpoint, torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def fitted(world):
    return _fit(world, "run_raw", f"--data.init_args.train_shards={world['shards']}", "--data.init_args.load_video=true")


def test_checkpoint_holds_the_adapter_only(world, fitted) -> None:
    _, checkpoint = fitted
    state = checkpoint["state_dict"]
    assert checkpoint["global_step"] == 3
    # network + EMA adapter weights, the MM-DiT's buffers; no base weights, codec or encoders.
    assert state and all(".lora_" in k or not k.startswith(("network.", "ema_network.")) or "standardizer" in k
                         for k in state)
    assert not any(k.startswith(("codec.", "clip_encoder.", "sync_encoder.")) for k in state)
    trained = {k: v for k, v in state.items() if k.startswith("network.") and ".lora_B." in k}
    assert trained and any(v.abs().max() > 0 for v in trained.values())  # B starts at zero: it trained
    ema = {k: v for k, v in state.items() if k.startswith("ema_network.") and ".lora_B." in k}
    assert ema.keys() == {"ema_" + k for k in trained}
    assert not all(torch.equal(state["ema_" + k], v) for k, v in trained.items())  # an average, not a copy
    moments = [s for group in checkpoint["optimizer_states"] for s in group["state"].values()]
    assert sum(s["exp_avg"].numel() for s in moments) == sum(v.numel() for k, v in state.items()
                                                              if k.startswith("network.") and ".lora_" in k)
    assert checkpoint["foley_adapter"]["init_from"] == str(world["model"])


def test_fit_on_extracted_features(world, fitted) -> None:
    features = world["root"] / "features"
    main_args = ["--fit_config", "configs/finetune/lora.yaml", "--shards", str(world["shards"]), "--out", str(features),
                 "--overrides", json.dumps(["--config", "configs/finetune/demo.yaml",
                                            f"--model.init_args.init_from={world['model']}",
                                            "--data.init_args.clip_seconds=1.0"]),
                 "--num_workers", "0", "--accelerator", "cpu", "--devices", "1", "--batch_size", "2"]
    main(["extract", *main_args])
    _, checkpoint = _fit(world, "run_features", f"--data.init_args.train_shards={features}")
    assert checkpoint["global_step"] == 3 and any(".lora_B." in k for k in checkpoint["state_dict"])


def _frames() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 255, size=(25, 32, 32, 3), dtype=np.uint8))


def _generate(pipe: FoleyPipeline) -> torch.Tensor:
    return pipe(_frames(), fps=25.0, steps=2, cfg=2.0, seed=1)


def _latents(pipe: FoleyPipeline) -> torch.Tensor:
    """The generator's sampled latents for the same input (the tiny vocoder's audio hardly moves)."""
    from foley.io.decoded_frames import DecodedFrames

    batch = pipe._window_batch(DecodedFrames(_frames(), 25.0), [0.0], 44100, None, "clip")
    return pipe.flow.generate_latents(batch, steps=2, cfg=2.0, seed=1)


def test_adapter_generate_merge_round_trip(world, fitted, tmp_path) -> None:
    checkpoint, _ = fitted
    adapter = tmp_path / "adapter"
    main(["export", "--flow_ckpt", checkpoint, "--out", str(adapter)])
    index = json.loads((adapter / "foley_adapter.json").read_text())
    assert set(index["components"]) == {"generator"}
    weights = adapter / "generator" / "adapter_model.safetensors"
    assert weights.stat().st_size < (world["model"] / "generator.safetensors").stat().st_size / 5

    base = FoleyPipeline.from_pretrained(world["model"])
    reference = _latents(base)
    adapted = FoleyPipeline.from_pretrained(world["model"])
    load_adapter(adapted, adapter, name="bells")
    unmerged, unmerged_latents = _generate(adapted), _latents(adapted)
    assert (unmerged_latents - reference).abs().max() > 1e-2  # the adapter changes what is generated

    merged_dir = tmp_path / "merged"
    main(["export", "--model", str(world["model"]), "--adapter", str(adapter), "--merge", "--out", str(merged_dir)])
    merged = FoleyPipeline.from_pretrained(merged_dir)
    # merged == base + adapter: every adapted weight W + (alpha / r) B A, checked in float64 from the files.
    from safetensors.torch import load_file

    base_weights = load_file(str(world["model"] / "generator.safetensors"))
    merged_weights = load_file(str(merged_dir / "generator.safetensors"))
    lora = load_file(str(weights))
    config = json.loads((adapter / "generator" / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    adapted_keys = set()
    for key in lora:
        if not key.endswith("lora_A.weight"):
            continue
        layer = key[: -len(".lora_A.weight")]
        a, b = lora[key].double(), lora[f"{layer}.lora_B.weight"].double()
        w = base_weights[f"{layer}.weight"].double()
        # Linears: A (r, in), B (out, r). Convolutions (the sync path's temporal conv MLP): A is a
        # conv (r, in, k), B a 1x1 conv (out, r, 1), so B A is the (out, in, k) kernel.
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        delta = (b @ a).reshape(w.shape)
        expected = w + scaling * delta
        # Error of float32 B @ A (r products, each rounded, summed) times the scaling, plus the
        # rounding of the sum: |err| <= eps (|W| + |D|) + r eps s (|B| |A|), doubled for safety.
        bound = 2 * EPS32 * (w.abs() + (scaling * delta).abs()
                             + config["r"] * scaling * (b.abs() @ a.abs()).reshape(w.shape)) + 1e-30
        assert torch.all((merged_weights[f"{layer}.weight"].double() - expected).abs() <= bound), layer
        adapted_keys.add(f"{layer}.weight")
    assert adapted_keys and any(key.startswith("sync_conv.") for key in adapted_keys)  # a convolution merged too
    for key, value in base_weights.items():  # everything else is the base's
        if key not in adapted_keys:
            assert torch.equal(merged_weights[key], value), key
    # The unmerged adapter computes with the same float32 weight W + s B A, so the audio is identical.
    torch.testing.assert_close(_latents(merged), unmerged_latents, rtol=0, atol=0)
    torch.testing.assert_close(_generate(merged), unmerged, rtol=0, atol=0)

    # foley export --flow_ckpt --merge writes the same generator.
    direct = tmp_path / "merged_direct"
    main(["export", "--flow_ckpt", checkpoint, "--merge", "--out", str(direct)])
    assert (direct / "generator.safetensors").read_bytes() == (merged_dir / "generator.safetensors").read_bytes()


def test_generate_command_applies_the_adapter(world, fitted, tmp_path) -> None:
    from foley.io.media import read_audio, write_video
    from foley.synth.world import render_clip

    checkpoint, _ = fitted
    adapter = tmp_path / "adapter"
    main(["export", "--flow_ckpt", checkpoint, "--out", str(adapter)])
    clip = render_clip(0, 5, 1.0, 25.0, 32, category="bell")
    write_video(tmp_path / "clip.mp4", clip.frames, fps=25.0)
    main(["generate", str(tmp_path / "clip.mp4"), "--model", str(world["model"]), "--adapter", str(adapter), "--out",
          str(tmp_path / "adapted"), "--steps", "2", "--device", "cpu"])
    adapted, _ = read_audio(tmp_path / "adapted" / "clip.wav")
    pipe = FoleyPipeline.from_pretrained(world["model"])
    load_adapter(pipe, adapter)
    expected = pipe(str(tmp_path / "clip.mp4"), steps=2, seed=0).numpy()
    # The wav stores 16-bit (or float) samples: compare at its resolution. (That the command really
    # loads the adapter shows in test_adapter_for_another_base_is_refused.)
    np.testing.assert_allclose(adapted, expected, atol=2.0 ** -15)


def test_two_adapters_switch_in_one_process(world, fitted, tmp_path) -> None:
    checkpoint, _ = fitted
    first = tmp_path / "first"
    main(["export", "--flow_ckpt", checkpoint, "--out", str(first)])
    # A second adapter: the first one's weights with B scaled by -1 (a different, known update).
    pipe = FoleyPipeline.from_pretrained(world["model"])
    load_adapter(pipe, first, name="first")
    network = pipe.flow.network
    from foley.adapters.folder import model_fingerprints
    from foley.adapters.lora import add_lora, load_lora_state, lora_state_dict

    state = {k: (-v if ".lora_B." in k else v) for k, v in lora_state_dict(network, "first").items()}
    other = FoleyPipeline.from_pretrained(world["model"])
    add_lora(other.flow.network, {"rank": 4, "alpha": 8.0}, "default")
    load_lora_state(other.flow.network, state, "default")
    second = save_adapter(tmp_path / "second", {"generator": other.flow.network}, model_fingerprints(other))

    alone = FoleyPipeline.from_pretrained(world["model"])
    load_adapter(alone, second, name="second")
    second_alone = _latents(alone)
    first_alone = _latents(pipe)
    base = _latents(FoleyPipeline.from_pretrained(world["model"]))
    assert (second_alone - first_alone).abs().max() > 1e-2 and (first_alone - base).abs().max() > 1e-2

    load_adapter(pipe, second, name="second")  # now active
    assert adapter_names(network) == ["first", "second"]
    torch.testing.assert_close(_latents(pipe), second_alone, rtol=0, atol=0)
    use_adapter(pipe, "first")
    torch.testing.assert_close(_latents(pipe), first_alone, rtol=0, atol=0)
    use_adapter(pipe, None)
    torch.testing.assert_close(_latents(pipe), base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no adapter named"):
        use_adapter(pipe, "third")
    use_adapter(pipe, "second")
    merge_adapters(pipe)
    assert not adapter_names(pipe.flow.network)
    torch.testing.assert_close(_latents(pipe), second_alone, rtol=0, atol=0)


def test_adapter_for_another_base_is_refused(world, fitted, tmp_path) -> None:
    from foley.adapters.folder import model_fingerprints

    checkpoint, _ = fitted
    adapter = tmp_path / "adapter"
    main(["export", "--flow_ckpt", checkpoint, "--out", str(adapter)])
    other = tiny_real_pipeline(seed=1)
    theirs = json.loads((adapter / "foley_adapter.json").read_text())["base"]["generator"]
    ours = model_fingerprints(other)["generator"]
    assert theirs != ours
    with pytest.raises(AdapterError) as error:
        load_adapter(other, adapter)
    assert theirs in str(error.value) and ours in str(error.value)
    other_folder = other.save_pretrained(tmp_path / "other")
    frames = np.random.default_rng(0).integers(0, 255, size=(25, 32, 32, 3), dtype=np.uint8)
    from foley.io.media import write_video

    write_video(tmp_path / "clip.mp4", frames, fps=25.0)
    with pytest.raises(SystemExit) as stop:  # the command line says so and exits 2
        main(["generate", str(tmp_path / "clip.mp4"), "--model", str(other_folder), "--adapter", str(adapter),
              "--out", str(tmp_path / "g"), "--steps", "1"])
    assert stop.value.code == 2 and not (tmp_path / "g" / "clip.wav").exists()


def test_bf16_mixed_fit_trains_the_adapter_in_float32(world) -> None:
    _, checkpoint = _fit(world, "run_bf16", f"--data.init_args.train_shards={world['shards']}",
                         "--data.init_args.load_video=true", "--trainer.precision=bf16-mixed", "--trainer.max_steps=2")
    lora = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("network.") and ".lora_B." in k}
    assert checkpoint["global_step"] == 2 and lora
    assert all(v.dtype == torch.float32 for v in lora.values()) and any(v.abs().max() > 0 for v in lora.values())
