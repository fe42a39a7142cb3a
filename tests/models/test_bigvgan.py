"""BigVGAN generator: compatibility with the official checkpoint layout, loader, filters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from foley.models.bigvgan import Activation1d, BigVGAN, UpSample1d, kaiser_sinc_filter1d, load_bigvgan_checkpoint, to_module_state_dict

MANIFEST = Path(__file__).resolve().parents[1] / "manifests" / "bigvgan_v2_44k_128band_512x.json"


pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.fixture(scope="module")
def manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"reference manifest {MANIFEST} not available")
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def paper_generator_meta(manifest: dict) -> BigVGAN:
    gen = manifest["config"]["generator"]
    with torch.device("meta"):
        return BigVGAN(
            num_mels=gen["num_mels"],
            upsample_rates=gen["upsample_rates"],
            upsample_kernel_sizes=gen["upsample_kernel_sizes"],
            upsample_initial_channel=gen["upsample_initial_channel"],
            resblock_kernel_sizes=gen["resblock_kernel_sizes"],
            resblock_dilation_sizes=gen["resblock_dilation_sizes"],
            snake_logscale=gen["snake_logscale"],
            use_tanh_at_final=gen["use_tanh_at_final"],
            use_bias_at_final=gen["use_bias_at_final"],
        )


def _tiny_generator() -> BigVGAN:
    return BigVGAN(
        num_mels=16,
        upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8],
        upsample_initial_channel=16,
        resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1, 2]],
    )


def _legacy_state_dict(model: BigVGAN) -> dict[str, torch.Tensor]:
    """The model's weights in the naming of the official (legacy weight_norm) checkpoints."""
    renamed = {}
    for key, value in model.state_dict().items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        renamed[key] = value.clone()
    return renamed


def _removed_weight_norm_state_dict(model: BigVGAN) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            state[f"{name}.weight"] = module.weight.detach().clone()
    for key, value in model.state_dict().items():
        if ".parametrizations.weight." not in key:
            state[key] = value.clone()
    return state


@pytest.mark.parametrize("variant", ["tensors", "tensors_after_remove_weight_norm"])
def test_paper_generator_matches_official_keys_and_shapes(manifest: dict, paper_generator_meta: BigVGAN, variant: str) -> None:
    reference = {k: tuple(v["shape"]) for k, v in manifest[variant].items()}
    own = {k: tuple(v.shape) for k, v in paper_generator_meta.state_dict().items()}
    fake = {k: torch.empty(shape, device="meta") for k, shape in reference.items()}
    converted = to_module_state_dict(fake, paper_generator_meta)
    assert {k: tuple(v.shape) for k, v in converted.items()} == own
    paper_generator_meta.load_state_dict(converted, strict=True, assign=True)


@pytest.mark.parametrize("variant", ["tensors", "tensors_after_remove_weight_norm"])
def test_loader_accepts_manifest_shaped_official_file(
    manifest: dict, paper_generator_meta: BigVGAN, variant: str, tmp_path: Path
) -> None:
    # Meta tensors keep the 122 M-parameter file tiny; the loader still runs torch.load and strict loading.
    fake = {k: torch.empty(v["shape"], device="meta") for k, v in manifest[variant].items()}
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": fake}, path)
    load_bigvgan_checkpoint(paper_generator_meta, path, strict=True, map_location="meta")
    dropped = dict(fake)
    dropped.pop("conv_post.weight_v" if variant == "tensors" else "conv_post.weight")
    torch.save({"generator": dropped}, path)
    with pytest.raises(RuntimeError, match="conv_post"):
        load_bigvgan_checkpoint(paper_generator_meta, path, strict=True, map_location="meta")


def test_legacy_names_match_manifest_one_to_one(manifest: dict, paper_generator_meta: BigVGAN) -> None:
    legacy = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v"): tuple(
            v.shape
        )
        for k, v in paper_generator_meta.state_dict().items()
    }
    assert legacy == {k: tuple(v["shape"]) for k, v in manifest["tensors"].items()}
    params = sum(p.numel() for p in paper_generator_meta.parameters())
    assert params == manifest["summary"]["num_parameters"]


def test_loader_reads_official_layout_with_zeros_strictly(tmp_path: Path) -> None:
    # The paper-scale key set is checked on the meta device above; here a small generator
    # exercises the {"generator": ...} file layout with legacy names through torch.load.
    model = _tiny_generator()
    zeros = {k: torch.zeros_like(v) for k, v in _legacy_state_dict(model).items()}
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": zeros}, path)
    fresh = _tiny_generator()
    load_bigvgan_checkpoint(fresh, path)
    assert all(float(p.detach().abs().sum()) == 0.0 for p in fresh.parameters())


@pytest.mark.parametrize("layout", ["legacy", "removed_weight_norm", "safetensors"])
def test_loader_round_trips_weights_exactly(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(1)
    source = _tiny_generator()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mel = torch.randn(1, 16, 6)
    expected = source(mel)
    if layout == "legacy":
        path = tmp_path / "g.pt"
        torch.save({"generator": _legacy_state_dict(source)}, path)
    elif layout == "removed_weight_norm":
        path = tmp_path / "g.pt"
        torch.save({"generator": _removed_weight_norm_state_dict(source)}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "g.safetensors"
        save_file({k: v.contiguous() for k, v in _legacy_state_dict(source).items()}, str(path))
    target = load_bigvgan_checkpoint(_tiny_generator(), path)
    torch.testing.assert_close(target(mel), expected, atol=1e-5, rtol=1e-4)


def test_loader_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bigvgan_generator.pt"):
        load_bigvgan_checkpoint(_tiny_generator(), tmp_path / "missing.pt")
    wrong = BigVGAN(num_mels=8, upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], upsample_initial_channel=16,
                    resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])
    path = tmp_path / "wrong.pt"
    torch.save({"generator": _legacy_state_dict(wrong)}, path)
    with pytest.raises(RuntimeError, match="do not match"):
        load_bigvgan_checkpoint(_tiny_generator(), path)


def test_output_length_is_hop_times_frames() -> None:
    model = _tiny_generator()
    for frames in (1, 3, 10):
        out = model(torch.randn(2, 16, frames))
        assert out.shape == (2, 1, 16 * frames)
        assert out.abs().max() <= 1.0


def test_kaiser_filter_is_a_unit_gain_lowpass() -> None:
    taps = kaiser_sinc_filter1d(cutoff=0.25, half_width=0.3, kernel_size=12).flatten().double()
    assert math.isclose(float(taps.sum()), 1.0, abs_tol=1e-6)
    torch.testing.assert_close(taps, taps.flip(0))  # linear phase
    response = torch.fft.rfft(taps, n=512).abs()
    assert float(response[-1]) < 0.05  # strongly attenuated at Nyquist


def test_upsample_interpolates_band_limited_signal() -> None:
    n = torch.arange(256, dtype=torch.float32)
    freq = 0.03  # cycles per input sample, well inside the passband
    signal = torch.sin(2 * math.pi * freq * n).view(1, 1, -1)
    up = UpSample1d(ratio=2, kernel_size=12)(signal)
    assert up.shape[-1] == 512
    # The even-length filter puts output sample k at input time (k - 0.5) / 2; the matching
    # downsampler undoes that half-sample delay (checked below).
    ideal = torch.sin(2 * math.pi * freq * (torch.arange(512, dtype=torch.float32) - 0.5) / 2)
    # Interior only: edges use replicate padding.
    error = (up.flatten()[40:-40] - ideal[40:-40]).abs().max()
    assert float(error) < 0.005


def test_identity_activation_round_trip_is_transparent() -> None:
    n = torch.arange(256, dtype=torch.float32)
    signal = (torch.sin(2 * math.pi * 0.02 * n) + 0.5 * torch.cos(2 * math.pi * 0.07 * n)).view(1, 1, -1)
    round_trip = Activation1d(torch.nn.Identity())(signal)
    assert round_trip.shape == signal.shape
    assert float((round_trip - signal)[..., 20:-20].abs().max()) < 0.02
