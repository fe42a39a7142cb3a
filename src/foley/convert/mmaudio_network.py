"""MMAudio's generator networks as a configuration of foley's :class:`~foley.models.mmdit.MMDiT`.

MMAudio (Cheng et al., CVPR 2025) and foley's MM-DiT share their design; the differences are
choices that :class:`MMDiT` exposes as options (SwiGLU and convolutional MLPs, convolutional
input projections, learned empty features, sync tokens summed into the audio stream's
condition, RoPE aligned by sequence length, no duration embeddings). This module holds those
choices per released variant and maps a released state dict onto foley's key layout:

- QKV rows: MMAudio splits ``qkv`` as ``(heads, head_dim, 3)``, foley as ``(3, heads, head_dim)``.
- RoPE pairs: MMAudio rotates channel pairs ``(2i, 2i+1)``, foley ``(i, i + head_dim/2)``, with
  the same frequencies. Permuting the query/key channels of every head (and the Q/K norm gains)
  maps one onto the other; attention scores are invariant to a common permutation of q and k.
- ``latent_mean``/``latent_std`` move to the codec (foley normalises latents there).

The released checkpoints are CC-BY-NC 4.0: foley never bundles them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MMAudioVariant", "VARIANTS", "network_config", "convert_network_state_dict",
           "expected_reference_shapes", "MMAUDIO_LICENSE"]

MMAUDIO_LICENSE = ("MMAudio's checkpoints are released under CC-BY-NC 4.0 "
                   "(https://creativecommons.org/licenses/by-nc/4.0/): non-commercial use, with attribution "
                   "(Cheng et al., 'MMAudio: Taming Multimodal Joint Training for High-Quality Video-to-Audio "
                   "Synthesis', CVPR 2025).")


@dataclass(frozen=True)
class MMAudioVariant:
    """Sizes and files of one released 44.1 kHz MMAudio network.

    Attributes:
        name: MMAudio's name of the variant.
        hidden_dim: transformer width (64 per head).
        num_heads: attention heads.
        depth: all blocks (joint + fused).
        fused_depth: audio-only blocks.
        v2: large_44k_v2's SiLU input projections and time embedding.
        filename: file name on the Hugging Face repo ``hkchengrex/MMAudio`` (folder ``weights/``).
        md5: MD5 sum from MMAudio's download list.
    """

    name: str
    hidden_dim: int
    num_heads: int
    depth: int
    fused_depth: int
    v2: bool
    filename: str
    md5: str


VARIANTS: dict[str, MMAudioVariant] = {v.name: v for v in (
    MMAudioVariant("small_44k", 448, 7, 12, 8, False, "mmaudio_small_44k.pth", "babd74c884783d13701ea2820a5f5b6d"),
    MMAudioVariant("medium_44k", 896, 14, 12, 8, False, "mmaudio_medium_44k.pth", "5a56b6665e45a1e65ada534defa903d0"),
    MMAudioVariant("large_44k", 896, 14, 21, 14, False, "mmaudio_large_44k.pth", "fed96c325a6785b85ce75ae1aafd2673"),
    MMAudioVariant("large_44k_v2", 896, 14, 21, 14, True, "mmaudio_large_44k_v2.pth",
                   "01ad4464f049b2d7efdaa4c1a59b8dfe"),
)}

# Feature widths and rates shared by the 44.1 kHz networks (8 s: 345 latents, 64 CLIP frames,
# 192 Synchformer tokens, 77 text tokens).
FEATURES = {"latent_dim": 40, "clip_dim": 1024, "sync_dim": 768, "text_dim": 1024,
            "latent_rate": 44100 / 1024, "clip_rate": 8.0, "sync_rate": 24.0, "max_text_tokens": 77}


def network_config(hidden_dim: int, num_heads: int, depth: int, fused_depth: int, v2: bool,
                   **features: Any) -> dict[str, Any]:
    """:class:`MMDiT` keyword arguments that compute MMAudio's network of these sizes.

    Args:
        hidden_dim, num_heads, depth, fused_depth, v2: as MMAudio's constructor.
        **features: overrides of :data:`FEATURES` (tiny test networks).
    """
    activation = "silu" if v2 else "selu"
    second = "silu" if v2 else None  # v1 has no activation after the CLIP and text projections
    return {
        **FEATURES, **features,
        "hidden_dim": hidden_dim, "num_heads": num_heads,
        "joint_depth": depth - fused_depth, "audio_depth": fused_depth, "mlp_ratio": 4.0,
        "rope_base": 10000.0, "sync_kernel_size": 1, "standardize_sync": False,
        "mlp": "swiglu", "swiglu_multiple_of": 256, "audio_kernel_size": 3, "clip_kernel_size": 3,
        "input_projections": {
            "audio": {"kernel_size": 7, "activation": activation, "mlp_kernel_size": 7},
            "clip": {"kernel_size": 1, "activation": second, "mlp_kernel_size": 3},
            "sync": {"kernel_size": 7, "activation": activation, "mlp_kernel_size": 3},
            "text": {"kernel_size": 1, "activation": second, "mlp_kernel_size": 1},
        },
        "sync_conditioning": "summed", "sync_resampling": "length_nearest", "sync_segment_length": 8,
        "clip_rope_alignment": "length",
        # t in [0, 1] without scaling; v2 uses hidden_dim frequencies from 1e4 down.
        "time_embedding": ({"frequency_dim": hidden_dim, "scale": 10000.0, "max_period": 10000.0} if v2
                           else {"frequency_dim": 256, "scale": 1.0, "max_period": 10000.0}),
        "global_mlp": True, "duration_embeddings": False,
        "final_kernel_size": 7, "final_sync": False,  # MMAudio's final layer sees the global condition only
        "empty_features": "learned", "norm_eps": 1e-5, "qk_norm_eps": None,
    }


def _rope_permutation(head_dim: int) -> Tensor:
    """foley channel j of a head <- MMAudio channel perm[j] (pairs (2i, 2i+1) -> (i, i + D/2))."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _convert_qkv(weight: Tensor, num_heads: int) -> Tensor:
    """Reorders qkv rows (or bias entries) from MMAudio's (h, d, 3) to foley's (3, h, d) with RoPE pairing."""
    dim = weight.shape[0] // 3
    head_dim = dim // num_heads
    rest = weight.shape[1:]
    split = weight.reshape(num_heads, head_dim, 3, *rest).movedim(2, 0)  # (3, h, d, ...)
    perm = _rope_permutation(head_dim)
    q, k, v = split[0][:, perm], split[1][:, perm], split[2]
    return torch.stack([q, k, v]).reshape(3 * dim, *rest)


def _sequential_indices(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Positions of (first map, SwiGLU) in MMAudio's nn.Sequential input projections.

    The SwiGLU follows the activation when there is one (v1 has none after CLIP and text).
    """
    return {stream: (0, 1 if spec["activation"] is None else 2) for stream, spec in config["input_projections"].items()}


def _stream_keys(prefix: str, ours: str, pre_only: bool) -> dict[str, str]:
    """Key map of one MMAudio MMDitSingleBlock onto a foley stream."""
    keys = {f"{prefix}.adaLN_modulation.1.weight": f"{ours}.modulation.weight",
            f"{prefix}.adaLN_modulation.1.bias": f"{ours}.modulation.bias",
            f"{prefix}.attn.qkv.weight": f"{ours}.qkv.weight", f"{prefix}.attn.qkv.bias": f"{ours}.qkv.bias",
            f"{prefix}.attn.q_norm.weight": f"{ours}.q_norm.weight",
            f"{prefix}.attn.k_norm.weight": f"{ours}.k_norm.weight"}
    if not pre_only:
        keys.update({f"{prefix}.linear1.weight": f"{ours}.out.weight", f"{prefix}.linear1.bias": f"{ours}.out.bias"})
        keys.update({f"{prefix}.ffn.w{i}.weight": f"{ours}.mlp.w{i}.weight" for i in (1, 2, 3)})
    return keys


def key_map(config: Mapping[str, Any]) -> dict[str, str]:
    """MMAudio state-dict key -> foley :class:`MMDiT` key (``latent_mean``/``latent_std`` excluded)."""
    joint_depth, fused_depth = config["joint_depth"], config["audio_depth"]
    keys: dict[str, str] = {}
    for stream, (first, mlp) in _sequential_indices(config).items():
        source = f"{stream}_input_proj"
        ours = f"{stream}_in"
        keys[f"{source}.{first}.weight"] = f"{ours}.proj.weight"
        keys[f"{source}.{first}.bias"] = f"{ours}.proj.bias"
        keys.update({f"{source}.{mlp}.w{i}.weight": f"{ours}.mlp.w{i}.weight" for i in (1, 2, 3)})
    for name, ours in (("clip_cond_proj", "clip_pool"), ("text_cond_proj", "text_pool")):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = f"{ours}.weight", f"{ours}.bias"
    keys.update({f"global_cond_mlp.w{i}.weight": f"global_mlp.w{i}.weight" for i in (1, 2, 3)})
    keys["sync_pos_emb"] = "sync_segment_embedding"
    keys.update({"final_layer.adaLN_modulation.1.weight": "final_modulation.weight",
                 "final_layer.adaLN_modulation.1.bias": "final_modulation.bias",
                 "final_layer.conv.weight": "final_out.weight", "final_layer.conv.bias": "final_out.bias"})
    for index, layer in ((0, "fc1"), (2, "fc2")):
        keys[f"t_embed.mlp.{index}.weight"] = f"time_embed.{layer}.weight"
        keys[f"t_embed.mlp.{index}.bias"] = f"time_embed.{layer}.bias"
    for i in range(joint_depth):
        last = i == joint_depth - 1
        keys.update(_stream_keys(f"joint_blocks.{i}.latent_block", f"joint_blocks.{i}.audio", False))
        keys.update(_stream_keys(f"joint_blocks.{i}.clip_block", f"joint_blocks.{i}.clip", last))
        keys.update(_stream_keys(f"joint_blocks.{i}.text_block", f"joint_blocks.{i}.text", last))
    for i in range(fused_depth):
        keys.update(_stream_keys(f"fused_blocks.{i}", f"audio_blocks.{i}.audio", False))
    keys.update({"empty_string_feat": "empty_text", "empty_clip_feat": "empty_clip",
                 "empty_sync_feat": "empty_sync"})
    return keys


NOT_IN_NETWORK = ("latent_mean", "latent_std")
RECOMPUTED = ("t_embed.freqs", "latent_rot", "clip_rot")  # non-persistent; MMAudio's loader drops them too


def expected_reference_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """MMAudio key -> shape for the network that ``config`` (from :func:`network_config`) computes.

    Built from foley's own module on the meta device through :func:`key_map`, so a match with
    MMAudio's published manifest checks both the configuration and the key map.
    """
    from foley.models.mmdit import MMDiT

    with torch.device("meta"):
        network = MMDiT(**config)
    ours = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    mapping = key_map(config)
    shapes = {}
    for reference, foley_key in mapping.items():
        shape = ours[foley_key]
        if reference == "sync_pos_emb":
            shape = (1, 1, *shape)
        elif reference in ("empty_clip_feat", "empty_sync_feat"):
            shape = (1, *shape)
        shapes[reference] = shape
    latent = (1, 1, config["latent_dim"])
    shapes.update({"latent_mean": latent, "latent_std": latent})
    return shapes


def convert_network_state_dict(reference: Mapping[str, Tensor], config: Mapping[str, Any], source: str = "checkpoint"
                               ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Maps an MMAudio network state dict onto :class:`MMDiT` built with ``config``.

    Args:
        reference: the released state dict (flat, as in ``mmaudio_*_44k.pth``).
        config: :func:`network_config` for the variant.
        source: the file's name, for error messages.

    Returns:
        ``(state_dict, latent_mean, latent_std)``: the MMDiT state dict and the latent statistics
        (C,) that the codec uses to normalise latents.

    Raises:
        ValueError: naming every missing or unexpected key and every key whose shape differs.
    """
    reference = {k: v for k, v in reference.items() if k not in RECOMPUTED}
    expected = expected_reference_shapes(config)
    missing = sorted(set(expected) - set(reference))
    unexpected = sorted(set(reference) - set(expected))
    wrong = [f"{k}: file {tuple(reference[k].shape)}, expected {expected[k]}"
             for k in expected if k in reference and tuple(reference[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        lines = [f"{source} is not an MMAudio network of the expected variant "
                 f"(hidden {config['hidden_dim']}, {config['joint_depth']}+{config['audio_depth']} blocks):"]
        for label, items in (("missing key", missing), ("unexpected key", unexpected), ("shape mismatch", wrong)):
            lines += [f"  {label} {item}" for item in items[:20]]
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more ({label})")
        lines.append("Check --variant against the file (the key lists of every variant are in foley's tests/manifests/mmaudio_net_*.json).")
        raise ValueError("\n".join(lines))
    num_heads = config["num_heads"]
    state: dict[str, Tensor] = {}
    for ref_key, ours in key_map(config).items():
        value = reference[ref_key].float()
        if ref_key.endswith("attn.qkv.weight") or ref_key.endswith("attn.qkv.bias"):
            value = _convert_qkv(value, num_heads)
        elif ref_key.endswith(("q_norm.weight", "k_norm.weight")):
            value = value[_rope_permutation(value.shape[0])]
        elif ref_key == "sync_pos_emb":
            value = value.reshape(value.shape[-2:])
        elif ref_key in ("empty_clip_feat", "empty_sync_feat"):
            value = value.reshape(-1)
        state[ours] = value.contiguous()
    return state, reference["latent_mean"].float().reshape(-1), reference["latent_std"].float().reshape(-1)
