"""MMAudio's 44.1 kHz Mel-VAE and mel front end in foley, against MMAudio's own outputs.

``tests/fixtures/mmaudio/vae_weights.safetensors`` holds random raw weights of MMAudio's VAE at a
tiny width (6/12/24, 8 latent channels, the released structure) in the layout of ``v1-44.pth``
(before ``remove_weight_norm``); ``vae_io.safetensors`` a waveform and MMAudio's outputs for it:
front end, normalised mel, posterior mean/log-variance and the decoded mel, in float32, and the
VAE's in float64 (the exact function). ``scripts/mmaudio_fixtures/vae.py`` writes both.

Measured max relative error (max |error| / max |exact|; this CPU, OMP_NUM_THREADS=1):

=============== ============ =============== ==========================================
component       vs MMAudio   vs exact        full size, 1 s, random weights (script
                float32      (float64)       ``--full-size``): vs float32 / vs exact
=============== ============ =============== ==========================================
mel front end   4.1e-8       --              4.1e-8 / 2.3e-7
normalised mel  0            --              --
encoder mean    0            5.3e-7          0 / 2.6e-6
encoder logvar  0            5.0e-7          0 / 3.9e-6
decoded mel     0            1.7e-7          0 / 2.4e-6
=============== ============ =============== ==========================================

foley's VAE runs the same float32 operations in the same order as MMAudio's, so on this CPU it
is bit-identical; the front end differs only by the one-ulp rounding of librosa's filters.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from foley.convert.mmaudio_vae import (
    build_codec,
    build_vae,
    convert_vae_state_dict,
    expected_vae_shapes,
    mel_front_end,
    vae_config,
    verify_md5,
)
from foley.models.bigvgan import BigVGAN
from foley.models.codec import Codec
from foley.models.mel import LogMelSpectrogram
from foley.models.mel_vae_mp import MagnitudePreservingMelVAE

pytestmark = pytest.mark.usefixtures("single_thread")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mmaudio"
U = 2.0**-24  # float32 unit roundoff
TINY_VOCODER = dict(upsample_rates=[8, 4, 4, 4], upsample_kernel_sizes=[16, 8, 8, 8], upsample_initial_channel=32,
                    resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])


@pytest.fixture(scope="module")
def raw() -> dict[str, Tensor]:
    return load_file(FIXTURES / "vae_weights.safetensors")


@pytest.fixture(scope="module")
def io() -> dict[str, Tensor]:
    return load_file(FIXTURES / "vae_io.safetensors")


@pytest.fixture(scope="module")
def config() -> dict:
    with safe_open(str(FIXTURES / "vae_io.safetensors"), framework="pt") as handle:
        return vae_config(**json.loads(handle.metadata()["foley_config"]))


@pytest.fixture(scope="module")
def vae(raw: dict[str, Tensor], config: dict) -> MagnitudePreservingMelVAE:
    model = MagnitudePreservingMelVAE(**config)
    model.load_state_dict(convert_vae_state_dict(raw, config, source="vae_weights.safetensors"), strict=True)
    return model.eval()


def _network_bound(coder: nn.Module) -> float:
    """Float32 error bound of an encoder or decoder, relative to its output's largest magnitude.

    Every layer is magnitude-preserving (unit-norm weight rows, unit-RMS activations), so a
    convolution with fan-in K adds a relative rounding error of about sqrt(K)·u to O(1)
    activations and passes earlier errors on with gain about 1; over L convolutions the errors
    add in quadrature: sqrt(L · K_max)·u. The bound takes 4× that (measured: 5.3e-7 against
    9.5e-6 for the tiny encoder, 2.4e-6 against 8.8e-5 at full size). A 1e-5 change of the
    eps of the weight or activation normalisation moves the outputs by 5e-5 to 2.5e-4.
    """
    convs = [m for m in coder.modules() if isinstance(m, nn.Conv1d)]
    fan_in = max(m.weight[0].numel() for m in convs)
    return 4 * math.sqrt(len(convs) * fan_in) * U


def _assert_within(actual: Tensor, exact: Tensor, relative: float) -> None:
    error = (actual.double() - exact.double()).abs().max().item()
    scale = exact.double().abs().max().item()
    assert error <= relative * scale, f"max error {error:.3g} exceeds {relative:.3g} x max |exact| {scale:.3g}"


# ------------------------------------------------------------------------------------- converter
def test_converter_normalises_every_convolution_as_remove_weight_norm(raw: dict[str, Tensor], config: dict) -> None:
    converted = convert_vae_state_dict(raw, config)
    assert converted.keys() == raw.keys()
    convs = 0
    for key, value in raw.items():
        if key.endswith(".weight"):
            # float64 closed form: each output channel over (1e-4 + ||w_o|| / sqrt(fan_in)), then / sqrt(fan_in).
            w = value.double()
            fan_in = w[0].numel()
            norm = w.flatten(1).norm(dim=1).view(-1, 1, 1)
            expected = w / (1e-4 + norm / math.sqrt(fan_in)) / math.sqrt(fan_in)
            # A float32 norm over fan_in <= 72 terms, two divisions and a multiply: < 8 ulp per element.
            torch.testing.assert_close(converted[key].double(), expected, rtol=8 * U * 2, atol=0)
            convs += 1
        else:  # output gains and mel statistics are copied
            assert torch.equal(converted[key], value)
    assert convs == sum(1 for m in MagnitudePreservingMelVAE(**config).modules() if isinstance(m, nn.Conv1d))


def test_full_size_layout_is_the_manifests() -> None:
    manifest = json.loads((FIXTURES / "mmaudio_vae_44k.json").read_text())
    shapes = {k: tuple(v["shape"]) for k, v in manifest["tensors"].items()}
    assert list(expected_vae_shapes().items()) == list(shapes.items())
    # The converter accepts a file of exactly that layout, and its output fills the module exactly.
    fake_file = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted = convert_vae_state_dict(fake_file)
    with torch.device("meta"):
        model = MagnitudePreservingMelVAE(**vae_config())
    model.load_state_dict(converted, strict=True, assign=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert sum(p.numel() for p in model.parameters()) == manifest["summary"]["num_parameters"]


def test_wrong_shape_and_missing_key_are_clear_errors() -> None:
    shapes = expected_vae_shapes()
    fake_file = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    wrong = dict(fake_file, **{"encoder.conv_in.weight": torch.empty(512, 80, 3, device="meta")})
    with pytest.raises(ValueError, match=r"v1-44\.pth.*\n.*encoder\.conv_in\.weight: file \(512, 80, 3\), expected \(512, 128, 3\)"):
        convert_vae_state_dict(wrong, source="v1-44.pth")
    missing = {k: v for k, v in fake_file.items() if k != "decoder.up.1.upsample.conv.weight"}
    with pytest.raises(ValueError, match=r"my_vae\.pth.*\n.*missing key decoder\.up\.1\.upsample\.conv\.weight"):
        convert_vae_state_dict(missing, source="my_vae.pth")
    extra = dict(fake_file, **{"encoder.quant_conv.weight": torch.empty(80, 80, 1, device="meta")})
    with pytest.raises(ValueError, match=r"unexpected key encoder\.quant_conv\.weight"):
        convert_vae_state_dict(extra)


def test_md5_is_checked_unless_skipped(tmp_path: Path, raw: dict[str, Tensor], config: dict) -> None:
    path = tmp_path / "v1-44.pth"
    torch.save(raw, path)
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    verify_md5(path, actual, "the VAE")
    with pytest.raises(ValueError, match=rf"v1-44\.pth: md5 {actual} differs from fab020275fa44c6589820ce025191600"):
        build_vae(path, config=config)  # the published sum of the real file
    assert isinstance(build_vae(path, md5=None, config=config), MagnitudePreservingMelVAE)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*download v1-44\.pth from https://"):
        build_vae(tmp_path / "nope.pth", md5=None)


# ---------------------------------------------------------------------------- against MMAudio
def _front_end_bound(wave: Tensor, reference_log_mel: Tensor, front_end: LogMelSpectrogram) -> np.ndarray:
    """Per-element bound on |foley − MMAudio| of the float32 log-mel (both against the exact value).

    A bin's magnitude is off by at most delta = sqrt(n_fft)·eps32·||frame·window|| (float32 FFT,
    probabilistic), a band by delta times its filter's sum, plus one ulp of the filter weights
    (librosa's are rounded twice, foley's once) and the band sum's rounding, sqrt(nonzero)·2u of
    the band, all relative to the band's value floored at the 1e-5 clamp; the log adds 2u·|log|.
    """
    n_fft, hop = front_end.n_fft, front_end.hop_length
    clamped = wave.double().clamp(-1, 1).numpy()
    padded = np.pad(clamped, ((0, 0), (front_end.pad, front_end.pad)), mode="reflect")
    window = front_end.window.double().numpy()
    frames = reference_log_mel.shape[-1]
    frame_l2 = np.stack([np.linalg.norm(padded[:, i * hop : i * hop + n_fft] * window, axis=1) for i in range(frames)], 1)
    delta = math.sqrt(n_fft) * 2 * U * frame_l2  # (B, frames)
    basis = front_end.mel_basis.double().numpy()
    filter_sum = basis.sum(1)[None, :, None]
    nonzero = (basis > 0).sum(1)[None, :, None]
    log_mel = reference_log_mel.double().numpy()
    band = np.maximum(np.exp(log_mel), front_end.clamp_min)
    relative = delta[:, None, :] * filter_sum / band + 2 * U + 2 * U * np.sqrt(nonzero)
    return 2 * (relative + 2 * U * np.abs(log_mel))


def test_mel_front_end_matches_mmaudio(io: dict[str, Tensor]) -> None:
    wave, expected = io["input.waveform"], io["output.mel"]
    assert wave.abs().max() > 1.2  # the clamp to [-1, 1] is exercised
    front_end = mel_front_end()
    actual = front_end(wave)
    assert actual.shape == expected.shape == (2, 128, wave.shape[-1] // 512)
    bound = _front_end_bound(wave, expected, front_end)
    error = (actual.double() - expected.double()).abs().numpy()
    assert (error <= bound).all(), f"worst error/bound {np.max(error / bound):.3g}"
    assert bound.max() < 1e-3  # not vacuous: a 0.1 % gain error (1e-3 in the log) fails
    # Whole frames of silence are exactly the floor in both.
    silent = expected[1] == math.log(1e-5)
    assert silent.all(dim=0).sum() >= 4 and torch.equal(actual[1][silent], expected[1][silent])
    # Without the waveform clamp, the frames around the over-range peaks differ far beyond the bound.
    unclamped = LogMelSpectrogram()(wave)
    assert ((unclamped - expected).abs().double().numpy() > 10 * bound).any()


def test_normalised_mel_matches_mmaudio(vae: MagnitudePreservingMelVAE, io: dict[str, Tensor]) -> None:
    mel = io["output.mel"]
    actual = vae.normalize_mel(mel)
    # One subtraction and one division in float32, the same as MMAudio: two roundings each side.
    bound = 4 * U * ((mel.abs() + vae.data_mean.abs()) / vae.data_std + actual.abs())
    assert ((actual - io["output.mel_normalized"]).abs() <= bound).all()
    # The per-bin statistics are the file's, not defaults: 128 different means.
    assert vae.data_mean.unique().numel() == 128


@torch.no_grad()
def test_encoder_matches_mmaudio(vae: MagnitudePreservingMelVAE, io: dict[str, Tensor]) -> None:
    mean, logvar = vae.encode(io["output.mel"])
    assert mean.shape == logvar.shape == (2, 8, 12)
    bound = _network_bound(vae.encoder)
    _assert_within(mean, io["output.mean_f64"], bound)
    _assert_within(logvar, io["output.logvar_f64"], bound)
    _assert_within(io["output.mean"], io["output.mean_f64"], bound)  # MMAudio's float32 is as close


@torch.no_grad()
def test_decoder_matches_mmaudio(vae: MagnitudePreservingMelVAE, io: dict[str, Tensor]) -> None:
    decoded = vae.decode(io["output.mean"])
    assert decoded.shape == (2, 128, 24)
    bound = _network_bound(vae.decoder)
    _assert_within(decoded, io["output.decoded_f64"], bound)
    _assert_within(io["output.decoded"], io["output.decoded_f64"], bound)


@torch.no_grad()
def test_log_variance_is_clamped(vae: MagnitudePreservingMelVAE, raw: dict[str, Tensor], config: dict) -> None:
    loud = MagnitudePreservingMelVAE(**config).eval()
    loud.load_state_dict(convert_vae_state_dict(raw, config))
    loud.encoder.learnable_gain.fill_(1e3)  # output convolution ×1001
    raw_moments = loud.encoder(loud.normalize_mel(torch.zeros(1, 128, 4) - 5))
    _, logvar = loud.encode(torch.zeros(1, 128, 4) - 5)
    assert raw_moments[:, 8:].abs().max() > 30
    torch.testing.assert_close(logvar, raw_moments[:, 8:].clamp(-30, 20), rtol=0, atol=0)


def test_fresh_module_has_unit_norm_weights() -> None:
    vae = MagnitudePreservingMelVAE(latent_channels=4, hidden_channels=4)
    for module in vae.modules():
        if isinstance(module, nn.Conv1d):
            norms = module.weight.flatten(1).norm(dim=1)
            # ||v|| / (||v|| + 1e-4 · sqrt(fan_in)) with ||v|| ≈ sqrt(fan_in): 1 − O(1e-4).
            assert ((norms > 1 - 5e-4) & (norms <= 1 + 1e-6)).all()


# --------------------------------------------------------------------------------------- codec
@torch.no_grad()
def test_codec_from_the_files_computes_the_reference(
    tmp_path: Path, raw: dict[str, Tensor], io: dict[str, Tensor], config: dict, vae: MagnitudePreservingMelVAE
) -> None:
    vae_path, vocoder_path = tmp_path / "v1-44.pth", tmp_path / "bigvgan_generator.pt"
    torch.save(raw, vae_path)
    vocoder = BigVGAN(**TINY_VOCODER)
    torch.save({"generator": vocoder.state_dict()}, vocoder_path)
    overrides = {k: config[k] for k in ("latent_channels", "hidden_channels")}
    codec = build_codec(vae_path, vocoder_path, vae_md5=None, vae_overrides=overrides, vocoder_config=TINY_VOCODER)
    wave = io["input.waveform"]
    # The codec wires the same front end and VAE: MMAudio's encode_audio(wave).mean, then decode.
    latent = codec.encode(wave)
    expected = vae.encode(mel_front_end()(wave))[0]
    assert torch.equal(latent, expected)
    assert torch.equal(codec.decode_mel(latent), vae.decode(expected))
    assert torch.equal(codec.vocode(codec.decode_mel(latent)), vocoder(vae.decode(expected)).squeeze(1))
    # Saved as a codec component and read back: same architecture and outputs.
    codec.save(tmp_path / "codec")
    rebuilt = Codec.from_checkpoint(tmp_path / "codec")
    assert rebuilt.init_config() == codec.init_config()
    assert rebuilt.init_config()["init_args"]["mel"]["init_args"]["clamp_waveform"] is True
    assert isinstance(rebuilt.vae, MagnitudePreservingMelVAE)
    assert torch.equal(rebuilt.encode(wave), latent)
