"""PaSST embedder: layout against the package manifest, av-benchmark preprocessing, loading."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from foley.metrics.embedders import MissingWeightsError, fit_length, mono_zero_mean, resample
from foley.metrics.passt import (
    PASST_FILE,
    PASST_URL,
    PaSSTEmbedder,
    build_passt,
    load_passt_state,
)

MANIFEST = Path(__file__).parents[1] / "manifests" / "passt_s_swa_p16_128_ap476.json"


@pytest.fixture(scope="module")
def official_layout_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A random-weight checkpoint in the release file's layout (flat network state dict)."""
    torch.manual_seed(0)
    wrapper = build_passt()
    path = tmp_path_factory.mktemp("passt") / PASST_FILE
    torch.save(wrapper.net.state_dict(), path)
    return path, wrapper


def _tiny_passt() -> torch.nn.Module:
    from hear21passt.models.passt import PaSST

    return PaSST(img_size=(128, 100), patch_size=16, stride=10, embed_dim=32, depth=1, num_heads=2, distilled=True)


def test_network_state_dict_matches_the_package_manifest() -> None:
    manifest = json.loads(MANIFEST.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = build_passt().net.state_dict()
    ours = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()}
    assert list(ours) == list(manifest["tensors"])  # same keys in the same order
    assert ours == manifest["tensors"]
    assert manifest["summary"]["keys"] == 159 and manifest["checkpoint"]["file"] == PASST_FILE
    assert state["time_new_pos_embed"].shape == (1, 768, 1, 99) and state["head.1.weight"].shape == (527, 768)


def test_preprocessing_is_32k_10s_and_the_mel_front_end_fills_the_positional_grid(
    official_layout_file: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = official_layout_file
    embedder = PaSSTEmbedder(str(path))
    # av-benchmark: mono, mean removed, 32 kHz, cut/zero-padded to exactly 320000 samples.
    stereo_8s = torch.randn(2, 2, 8 * 44100) + 0.3
    audio = embedder.preprocess(stereo_8s, 44100)
    assert audio.shape == (2, 320000)
    assert torch.all(audio[:, 8 * 32000 :] == 0)
    assert torch.allclose(audio[:, : 8 * 32000].mean(-1), torch.zeros(2), atol=1e-3)
    assert embedder.preprocess(torch.randn(1, 12 * 32000), 32000).shape == (1, 320000)
    # 10 s -> 1000 mel frames (pre-emphasis drops one sample, centred STFT hop 320) ->
    # (1000 - 16) // 10 + 1 = 99 time patches: exactly the positional embedding's width.
    mel = embedder.model.mel(audio[:1])
    assert mel.shape == (1, 128, 1000)
    assert (mel.shape[-1] - 16) // 10 + 1 == embedder.model.net.time_new_pos_embed.shape[-1]
    # A 1 kHz tone peaks in the kaldi mel band (linear in 1127 ln(1 + f/700), 0..15 kHz,
    # 128 bands) whose centre is nearest to 1 kHz.
    t = torch.arange(32000) / 32000
    tone_mel = embedder.model.mel(torch.sin(2 * math.pi * 1000 * t)[None])[0]

    def mel_scale(f: float) -> float:
        return 1127 * math.log1p(f / 700)

    step = (mel_scale(15000) - mel_scale(0)) / 129
    expected = min(range(128), key=lambda i: abs((i + 1) * step - mel_scale(1000)))
    assert int(tone_mel.mean(-1).argmax()) == expected


def test_forward_with_random_weights_matches_the_package_wrapper(official_layout_file: tuple[Path, torch.nn.Module]) -> None:
    path, reference = official_layout_file
    embedder = PaSSTEmbedder(str(path), seconds=2.0)
    embedder.train()  # must stay in eval mode: the front end would jitter and mask
    assert not embedder.model.training and not embedder.model.mel.training
    wave = torch.randn(2, 2, 3 * 44100)
    embedding, logits = embedder.embed(wave, 44100)
    assert embedding.shape == (2, 768) and logits.shape == (2, 527)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference.eval()(fit_length(resample(mono_zero_mean(wave), 44100, 32000), 64000))
    # mode="all" of the package: logits first, then the 768-d embedding.
    assert torch.allclose(logits, expected[:, :527], atol=1e-4)
    assert torch.allclose(embedding, expected[:, 527:], atol=1e-4)
    again, _ = embedder.embed(wave, 44100)
    assert torch.equal(again, embedding)


def test_checkpoint_layout_variants_load_and_a_wrong_file_is_named(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = _tiny_passt()
    state = source.state_dict()
    variants = {
        "flat.pt": state,
        "model.pt": {"model": state},
        "wrapper.pt": {**{f"net.{k}": v for k, v in state.items()}, "device_proxy": torch.zeros(1)},
        # An old-style linear patch projection is reshaped to the convolution.
        "linear.pt": {**state, "patch_embed.proj.weight": state["patch_embed.proj.weight"].flatten(1)},
    }
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        target = _tiny_passt()
        load_passt_state(target, tmp_path / name)
        for key, value in target.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)
    broken = dict(state)
    broken.pop("head_dist.weight")
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match=r"(?s)broken\.pt.*head_dist\.weight.*passt-s-f128-p16-s10-ap\.476-swa\.pt"):
        load_passt_state(_tiny_passt(), tmp_path / "broken.pt")


def test_missing_weights_error_names_the_official_file_and_url(tmp_path: Path) -> None:
    assert PASST_URL.endswith(PASST_FILE) and PASST_URL.startswith("https://github.com/kkoutini/PaSST/releases/")
    with pytest.raises(MissingWeightsError, match=r"no path was configured.*passt-s-f128-p16-s10-ap\.476-swa\.pt.*github\.com/kkoutini"):
        PaSSTEmbedder(None)
    with pytest.raises(MissingWeightsError, match=r"nope\.pt does not exist"):
        PaSSTEmbedder(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="at most 10"):
        PaSSTEmbedder(None, seconds=12.0)


@pytest.mark.slow
def test_full_10_second_forward(official_layout_file: tuple[Path, torch.nn.Module]) -> None:
    path, reference = official_layout_file
    embedding, logits = PaSSTEmbedder(str(path)).embed(torch.randn(1, 10 * 32000), 32000)
    assert embedding.shape == (1, 768) and logits.shape == (1, 527)
    assert torch.isfinite(embedding).all() and torch.isfinite(logits).all()
