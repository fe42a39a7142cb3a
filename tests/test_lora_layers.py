"""Weight-space LoRA layers (foley.adapters.lora) on linears and convolutions, against float64 references."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foley.adapters.lora import (
    GENERATOR_TARGETS,
    LoraConv1d,
    LoraLinear,
    LoraSettings,
    add_lora,
    lora_state_dict,
    merge_lora,
    set_active_adapter,
    trainable_fraction,
)
from foley.models.layers import linear

EPS32 = 2.0 ** -24


class TokenConv(nn.Conv1d):
    """A convolution along tokens called as ``layer(x, mask)`` on ``(B, T, C)`` (as foley's token convolutions)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if mask is not None:
            x = x * mask[..., None]
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    """A linear read through foley.models.layers.linear, a token convolution and a plain replicate-padded one."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(6, 8)
        self.mlp = nn.ModuleDict({"w1": TokenConv(8, 3, 2)})
        self.out = nn.Conv1d(8, 5, 3, padding=1, padding_mode="replicate")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.mlp["w1"](linear(self.qkv, x), mask)
        return self.out(h.transpose(1, 2)).transpose(1, 2)


def reference(block: Block, x: torch.Tensor, mask: torch.Tensor, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same block in float64 with weights W + delta (delta computed independently)."""
    def weight(name: str, layer: nn.Module) -> torch.Tensor:
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
        return base.weight.double() + deltas.get(name, 0.0)

    qkv, w1, out = block.qkv, block.mlp["w1"], block.out
    base_w1 = w1.get_base_layer() if hasattr(w1, "get_base_layer") else w1
    h = F.linear(x.double(), weight("qkv", qkv), (qkv.get_base_layer() if hasattr(qkv, "get_base_layer") else qkv).bias.double())
    h = h * mask[..., None]
    h = F.conv1d(h.transpose(1, 2), weight("mlp.w1", w1), base_w1.bias.double(), padding=base_w1.padding,
                 dilation=base_w1.dilation)
    base_out = out.get_base_layer() if hasattr(out, "get_base_layer") else out
    h = F.conv1d(F.pad(h, (1, 1), mode="replicate"), weight("out", out), base_out.bias.double())
    return h.transpose(1, 2)


def deltas_of(block: Block, scaling: float) -> dict[str, torch.Tensor]:
    """``scaling · B A`` per layer in float64 (per tap for convolutions)."""
    out = {}
    for name, layer in (("qkv", block.qkv), ("mlp.w1", block.mlp["w1"]), ("out", block.out)):
        a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
        b = b.reshape(b.shape[0], b.shape[1])
        out[name] = scaling * (b @ a if a.dim() == 2 else torch.einsum("or,rik->oik", b, a))
    return out


@pytest.fixture()
def block() -> Block:
    torch.manual_seed(0)
    return Block()


def test_linear_and_convolutions_are_adapted_in_weight_space(block: Block) -> None:
    x, mask = torch.randn(2, 7, 6), torch.ones(2, 7)
    mask[1, 5:] = 0
    base_out = block(x, mask)
    add_lora(block, LoraSettings(rank=2, alpha=4.0, targets=r"qkv|mlp\.w1|out"))
    assert isinstance(block.qkv, LoraLinear) and isinstance(block.mlp["w1"], LoraConv1d) and isinstance(block.out, LoraConv1d)
    # B starts at zero: the adapted block is the base block, bit for bit.
    torch.testing.assert_close(block(x, mask), base_out, rtol=0, atol=0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.3)
    got = block(x, mask).double()
    want = reference(block, x, mask, deltas_of(block, scaling=2.0))
    # float32 forward of three layers (K <= 24 products each) against float64: |err| <= c K eps |terms|;
    # the terms are O(1) here, so 24 * 3 * eps32 * max|want| * 8 covers it with margin.
    bound = 8 * 3 * 24 * EPS32 * want.abs().max()
    assert (got - want).abs().max() <= bound, float((got - want).abs().max())


def test_merge_equals_unmerged_and_peft_delta(block: Block) -> None:
    add_lora(block, LoraSettings(rank=3, alpha=3.0, targets=r"qkv|mlp\.w1|out"))
    with torch.no_grad():
        for name, p in block.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.3)
    x, mask = torch.randn(2, 9, 6), torch.ones(2, 9)
    unmerged = block(x, mask)
    effective = {n: block.get_submodule(n).weight.detach().clone() for n in ("qkv", "mlp.w1", "out")}
    # peft's own delta (conv_fn for convolutions) equals the weight-space one up to float32 rounding.
    for name in ("mlp.w1", "out"):
        layer = block.get_submodule(name)
        peft_delta = layer.get_delta_weight("default")
        ours = effective[name] - layer.get_base_layer().weight
        tol = 4 * 3 * EPS32 * (peft_delta.abs().max() + layer.get_base_layer().weight.abs().max())
        assert (peft_delta - ours).abs().max() <= tol
    merged = merge_lora(block)
    assert type(merged.qkv) is nn.Linear and type(merged.mlp["w1"]) is TokenConv and type(merged.out) is nn.Conv1d
    torch.testing.assert_close(merged.qkv.weight, effective["qkv"], rtol=0, atol=0)  # the same float32 sum
    for name in ("mlp.w1", "out"):
        w = merged.get_submodule(name).weight
        assert (w - effective[name]).abs().max() <= 4 * 3 * EPS32 * effective[name].abs().max()
    assert (merged(x, mask) - unmerged).abs().max() <= 1e-5 * unmerged.abs().max()
    assert not hasattr(merged, "peft_config")


def test_only_the_adapter_trains(block: Block) -> None:
    add_lora(block, {"rank": 2, "targets": r"qkv|mlp\.w1|out"})
    trainable = [n for n, p in block.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if ".lora_B." in name:
                p.normal_()
    block(torch.randn(2, 5, 6), torch.ones(2, 5)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for n, p in block.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in block.named_parameters() if not p.requires_grad)
    assert set(lora_state_dict(block)) == {f"{n}.lora_{ab}.weight" for n in ("qkv", "mlp.w1", "out") for ab in "AB"}


def test_rank_dropout_drops_whole_components(block: Block) -> None:
    add_lora(block, LoraSettings(rank=2, alpha=2.0, dropout=0.5, targets="qkv"))
    layer = block.qkv
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    w = layer.get_base_layer().weight
    # Training: the update is (1 / (1 - p)) B diag(m) A for a 0/1 mask m over the rank.
    options = [2.0 * (b * torch.tensor(m, dtype=b.dtype)) @ a for m in itertools.product((0.0, 1.0), repeat=2)]
    block.train()
    seen = set()
    for _ in range(40):
        delta = layer.weight.detach() - w
        match = [i for i, o in enumerate(options) if torch.allclose(delta, o, atol=1e-6)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) >= 3  # the masks vary
    block.eval()
    torch.testing.assert_close(layer.weight - w, b @ a, atol=1e-6, rtol=0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="match no"):
        add_lora(Block(), LoraSettings(targets="nothing_here"))
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match="unknown LoRA settings"):
        LoraSettings.coerce({"rnk": 4})
    block = Block()
    add_lora(block, {"targets": "qkv"}, "a")
    with pytest.raises(ValueError, match="already has"):
        add_lora(block, {"targets": "qkv"}, "a")
    with pytest.raises(ValueError, match="no adapter named"):
        set_active_adapter(block, "b")


def test_default_targets_cover_the_mmdit_and_stay_small() -> None:
    from foley.models.mmdit import MMDiT

    torch.manual_seed(0)
    # The demo's generator (configs/tiny/stage2.yaml dimensions).
    network = MMDiT(latent_dim=40, hidden_dim=64, num_heads=2, joint_depth=1, audio_depth=1, mlp_ratio=2.0,
                    clip_dim=32, sync_dim=32, text_dim=32, clip_rate=8.0, sync_rate=12.5, max_text_tokens=32)
    names = LoraSettings(targets=GENERATOR_TARGETS).target_names(network)
    blocks = [n for n in names if n.startswith(("joint_blocks.", "audio_blocks."))]
    leaves = {n.split(".", 3)[3] for n in blocks}
    assert {"qkv", "out"} <= leaves and any(leaf.startswith("mlp.") for leaf in leaves)
    # The sync path (the only way a new visual timing cue reaches the audio stream) is adapted
    # too; the blocks' condition modulations, embeddings and the output layer are not.
    assert sorted(set(names) - set(blocks)) == ["final_sync_modulation", "sync_conv.conv1", "sync_conv.conv2", "sync_in",
                                                "sync_mlp.fc1", "sync_mlp.fc2", "sync_modulation.0", "sync_modulation.1"]
    base = sum(p.numel() for p in network.parameters())
    add_lora(network, LoraSettings(rank=4, alpha=4.0))
    trainable, total = trainable_fraction(network)
    assert total - trainable == base and trainable / base < 0.05


def test_default_targets_reach_mmaudio_sync_path() -> None:
    from foley.convert.mmaudio_network import network_config
    from foley.models.mmdit import MMDiT

    # MMAudio's layout: sync summed into the audio condition through a convolutional input
    # projection with a SwiGLU MLP (no per-block sync modulations).
    config = network_config(64, 2, 2, 1, False, latent_dim=20, clip_dim=32, sync_dim=32, text_dim=32, max_text_tokens=8)
    names = LoraSettings(targets=GENERATOR_TARGETS).target_names(MMDiT(**config))
    assert [n for n in names if n.startswith("sync")] == ["sync_in.proj", "sync_in.mlp.w1", "sync_in.mlp.w2", "sync_in.mlp.w3"]
    assert not any(n.startswith(("audio_in", "clip_in", "text_in", "final_out", "global_mlp")) for n in names)


def test_adapter_folder_of_many_layers_reloads_onto_the_same_layers(tmp_path) -> None:
    """peft writes a config of 20 or more target names as the shortest suffixes that pick them out
    ("qkv", "mlp.fc1", "1", ...); reading the folder back must adapt exactly the same layers.
    (Before the fix, a generator of realistic depth could not load its own adapter.)"""
    import json

    from foley.adapters.folder import read_adapter, save_adapter
    from foley.adapters.lora import load_lora_state, lora_state_dict
    from foley.models.mmdit import MMDiT

    def network() -> MMDiT:
        torch.manual_seed(0)
        return MMDiT(latent_dim=4, hidden_dim=32, num_heads=2, joint_depth=2, audio_depth=3, clip_dim=8, sync_dim=8,
                     text_dim=8, max_text_tokens=4)

    trained = network()
    settings = LoraSettings(rank=2, alpha=2.0, targets=GENERATOR_TARGETS)
    names = settings.target_names(trained)
    assert len(names) >= 20
    add_lora(trained, settings)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.1)
    folder = save_adapter(tmp_path / "adapter", {"generator": trained}, {"generator": "x"})
    stored = json.loads((folder / "generator" / "adapter_config.json").read_text())["target_modules"]
    assert "qkv" in stored  # peft's suffix form, not the full names given to it
    _, parts = read_adapter(folder)
    reread, state = parts["generator"]
    fresh = network()
    assert sorted(reread.target_names(fresh)) == sorted(names)
    add_lora(fresh, reread)
    load_lora_state(fresh, state)
    expected = lora_state_dict(trained)
    assert all(torch.equal(lora_state_dict(fresh)[k], v) for k, v in expected.items())
