"""foley's MM-DiT configured as MMAudio's released networks computes MMAudio's function.

Reference outputs come from MMAudio's own code (github.com/hkchengrex/MMAudio @974010a) run
outside the repo by scripts/mmaudio_fixtures/network.py at a tiny size with the structure of
the released 44.1 kHz networks: v1 (small/medium/large_44k, SELU input projections) and v2
(large_44k_v2, SiLU projections and a hidden_dim-wide time embedding). The weights are
rebuilt here from the fixture's key/shape list and seed (helpers.reference_weights) and go
through the same converter as a released checkpoint.

Tolerances (relative to the output's largest magnitude). foley and the reference run the
same float32 operations in a different order: a permuted QKV layout, RoPE with float64
angles (the reference's float32 angles at positions < 22 err by < 22 * 2**-24 rad), the
Q/K norm gains folded into the RoPE tables, addcmul for the gated residuals. Each of the
~12 sequential matmul layers (width <= 256) contributes ~sqrt(256) * 2**-24 ≈ 1e-6 of
rounding, adding in quadrature to ~4e-6; measured 8e-7 on one machine. The bound 2e-5 leaves
5x margin for other BLAS kernels and thread counts. A 25-step guided generation integrates
25 such velocities scaled by dt = 0.04 with CFG 4.5 (|cfg| + |1 - cfg| = 8 amplification of
each velocity's error): 8 * 2e-5 = 1.6e-4 bound.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from foley.convert.mmaudio_network import (
    VARIANTS,
    convert_network_state_dict,
    expected_reference_shapes,
    network_config,
)
from foley.flow import FlowMatching
from foley.models.mmdit import MMDiT
from helpers.reference_weights import uniform_weights

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mmaudio"
MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
VELOCITY_RTOL = 2e-5
GENERATION_RTOL = 1.6e-4


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def load_fixture(name: str) -> tuple[MMDiT, torch.Tensor, torch.Tensor, dict, dict, dict]:
    path = FIXTURES / f"{name}.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    tiny = json.loads(meta["config"])
    reference = uniform_weights(json.loads(meta["weight_shapes"]), int(meta["weight_seed"]))
    config = network_config(tiny["hidden_dim"], tiny["num_heads"], tiny["depth"], tiny["fused_depth"], tiny["v2"],
                            latent_dim=tiny["latent_dim"], clip_dim=tiny["clip_dim"], sync_dim=tiny["sync_dim"],
                            text_dim=tiny["text_dim"], max_text_tokens=tiny["text_seq_len"])
    state, mean, std = convert_network_state_dict(reference, config)
    network = MMDiT(**config).eval()
    network.load_state_dict(state)
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in tensors.items() if k.startswith("output.")}
    return network, mean, std, inputs, outputs, {**meta, "tiny": tiny}


def durations(inputs: dict) -> dict:
    batch, length = inputs["latent"].shape[:2]
    return {"seconds_start": torch.zeros(batch), "seconds_total": torch.full((batch,), length * 1024 / 44100)}


@pytest.mark.parametrize("name", ["network_v1", "network_v2"])
def test_velocity_equals_mmaudio(name):
    network, _, _, inputs, outputs, _ = load_fixture(name)
    with torch.no_grad():
        velocity = network(inputs["latent"], inputs["t"], clip=inputs["clip_f"], sync=inputs["sync_f"],
                           text=inputs["text_f"], **durations(inputs))
    assert relative_error(velocity, outputs["velocity"]) < VELOCITY_RTOL


@pytest.mark.parametrize("name", ["network_v1", "network_v2"])
def test_empty_conditions_equal_mmaudio_learned_empty_features(name):
    """Absent modalities and dropped ones both use MMAudio's learned empty features."""
    network, _, _, inputs, outputs, _ = load_fixture(name)
    batch = inputs["latent"].shape[0]
    drop = torch.ones(batch, dtype=torch.bool)
    with torch.no_grad():
        absent = network(inputs["latent"], inputs["t"], **durations(inputs))
        dropped = network(inputs["latent"], inputs["t"], clip=inputs["clip_f"], sync=inputs["sync_f"],
                          text=inputs["text_f"], drop_clip=drop, drop_sync=drop, drop_text=drop, **durations(inputs))
    assert relative_error(absent, outputs["velocity_empty"]) < VELOCITY_RTOL
    assert relative_error(dropped, outputs["velocity_empty"]) < VELOCITY_RTOL
    # The conditional output differs from the empty one, so the comparison above can fail.
    assert relative_error(outputs["velocity"], outputs["velocity_empty"]) > 0.05


@pytest.mark.parametrize("name", ["network_v1", "network_v2"])
@pytest.mark.parametrize("negative", [False, True])
def test_25_step_guided_generation_equals_mmaudio(name, negative):
    network, mean, std, inputs, outputs, meta = load_fixture(name)
    batch = inputs["latent"].shape[0]
    length = inputs["latent"].shape[1]
    common = durations(inputs)
    cond = network.prepare_conditions(length, clip=inputs["clip_f"], sync=inputs["sync_f"], text=inputs["text_f"],
                                      **common)
    text = inputs["negative_text_f"].expand(batch, -1, -1) if negative else None
    uncond = network.prepare_conditions(length, text=text, **common)
    velocity = network.guided_velocity_fn(cond, uncond, float(meta["cfg"]))
    latent = FlowMatching().sample(velocity, inputs["noise"], steps=int(meta["steps"]), method="euler")
    generated = latent * std + mean  # the codec's denormalisation with the network's statistics
    reference = outputs["generated_negative" if negative else "generated"]
    assert relative_error(generated, reference) < GENERATION_RTOL
    assert relative_error(outputs["generated_negative"], outputs["generated"]) > 0.01


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_full_size_layout_matches_the_published_manifest(variant):
    spec = VARIANTS[variant]
    manifest = json.loads((MANIFESTS / f"mmaudio_net_{variant}.json").read_text())
    config = network_config(spec.hidden_dim, spec.num_heads, spec.depth, spec.fused_depth, spec.v2)
    expected = {k: tuple(v["shape"]) for k, v in manifest["tensors"].items()}
    assert expected_reference_shapes(config) == expected
    with torch.device("meta"):
        network = MMDiT(**config)
    parameters = sum(p.numel() for p in network.parameters())
    # The manifest's count includes latent_mean/std (2 x 40), which foley keeps in the codec.
    assert parameters + 80 == manifest["summary"]["num_parameters"]


def test_wrong_variant_names_keys_and_shapes():
    small = VARIANTS["small_44k"]
    large = VARIANTS["large_44k"]
    manifest = json.loads((MANIFESTS / "mmaudio_net_small_44k.json").read_text())
    fake = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["tensors"].items()}
    config = network_config(large.hidden_dim, large.num_heads, large.depth, large.fused_depth, large.v2)
    with pytest.raises(ValueError) as error:
        convert_network_state_dict(fake, config, source="mmaudio_small_44k.pth")
    message = str(error.value)
    assert "mmaudio_small_44k.pth" in message and "--variant" in message
    assert "missing key fused_blocks.1" in message  # large has 14 fused blocks, small 8
    assert "shape mismatch audio_input_proj.0.weight: file (448, 40, 7), expected (896, 40, 7)" in message
    assert "more (shape mismatch)" in message
    config = network_config(small.hidden_dim, small.num_heads, small.depth, small.fused_depth, small.v2)
    del fake["empty_sync_feat"]
    with pytest.raises(ValueError, match="missing key empty_sync_feat"):
        convert_network_state_dict(fake, config)
