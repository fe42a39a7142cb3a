"""LoRA adapters on foley's networks, through ``peft`` (the maintained library).

peft builds and names the adapter weights (``lora_A`` / ``lora_B`` per targeted layer, its
initialisation, scaling ``alpha / rank``), keeps several named adapters per layer and
switches between them (:func:`peft.functional.set_adapter`), writes and reads their state
dicts, and folds them into the base weights (``merge``).

foley's networks read some layers' weights directly instead of calling the layer
(:func:`foley.models.layers.linear` casts the input to the weight's dtype and calls
``F.linear(x, layer.weight, layer.bias)``), and call others with extra arguments or another
layout (token convolutions take ``(B, T, C)`` and a mask). peft's own layers add the adapter
in their ``forward`` only, which such call sites would bypass. So the layers registered here
with peft's custom-module API (:meth:`peft.LoraConfig._register_custom_module`) apply the
adapter in *weight space*: their ``weight`` is ``W + Σ scaling · B A`` over the active
adapters, and calling them runs the base layer's own ``forward`` with that weight
(:func:`torch.func.functional_call`). Every call site then sees the adapted layer, for
linears and for convolutions of any kernel, padding, dilation and layout, and unmerged
output equals merged output up to float rounding.

``dropout`` is applied in that weight space too: during training each adapter drops whole
rank components with probability ``dropout`` (and rescales the rest by ``1 / (1 - p)``),
which is the "rank dropout" of kohya-ss's LoRA trainer for diffusion models. Input dropout
(peft's ``lora_dropout`` on the layer input) cannot be written as a weight.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Conv1d as PeftConv1d
from peft.tuners.lora.layer import Linear as PeftLinear
from peft.tuners.lora.layer import LoraLayer
from torch import Tensor, nn

__all__ = [
    "GENERATOR_TARGETS",
    "GENERATOR_BLOCK_TARGETS",
    "SYNC_PATH_TARGETS",
    "CODEC_DECODER_TARGETS",
    "STEREO_TARGETS",
    "LoraSettings",
    "LoraLinear",
    "LoraConv1d",
    "add_lora",
    "lora_state_dict",
    "load_lora_state",
    "set_active_adapter",
    "adapter_names",
    "merge_lora",
    "base_fingerprint",
    "trainable_fraction",
    "share_frozen",
]

logger = logging.getLogger(__name__)

# MM-DiT: every stream's attention projections (qkv, out) and MLP layers (fc1/fc2, SwiGLU
# w1/w2/w3; linears or token convolutions) in the joint and audio-only blocks, and the sync
# path that carries the frame-aligned timing cue into the audio stream: its input projection
# (a linear, or MMAudio's convolutional projection + SwiGLU), temporal convolutional MLP, MLP and
# per-block modulations. Without the sync path an adapter cannot learn a new visual cue: on the
# demo's model a bell struck by a hammer stayed at onset F1 0.29 with the blocks alone and reached
# 0.86 with them (docs/benchmarks.md, "LoRA").
GENERATOR_BLOCK_TARGETS = r"(joint_blocks|audio_blocks)\.\d+\.(audio|clip|text)\.(qkv|out|mlp\.[^.]+)"
SYNC_PATH_TARGETS = r"sync_in(\.proj|\.mlp\.[^.]+)?|sync_conv\.conv\d|sync_mlp\.[^.]+|sync_modulation\.\d+|final_sync_modulation"
GENERATOR_TARGETS = f"{GENERATOR_BLOCK_TARGETS}|{SYNC_PATH_TARGETS}"
# Mel-VAE decoder (inside the codec) and Mono2Stereo: all their convolutions and linears.
CODEC_DECODER_TARGETS = r"vae\.decoder\..*"
STEREO_TARGETS = r"(mel_in|trunk\..*|video\.project|head)"

_ADAPTABLE = (nn.Linear, nn.Conv1d)


@dataclass
class LoraSettings:
    """What to adapt and how (peft's ``LoraConfig`` fields under foley's names).

    Args:
        rank: LoRA rank ``r``.
        alpha: scaling numerator; the update is ``alpha / rank · B A`` (``alpha / sqrt(rank)``
            with ``rslora``).
        dropout: rank dropout probability during training (see the module docstring).
        targets: regular expression over the network's module names (full match); the matched
            ``nn.Linear`` and ``nn.Conv1d`` layers (subclasses included) are adapted.
        rslora: rank-stabilised scaling.
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = GENERATOR_TARGETS
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.targets)
        except re.error as error:
            raise ValueError(f"LoRA targets {self.targets!r} is not a regular expression: {error}") from error

    @classmethod
    def coerce(cls, value: LoraSettings | Mapping[str, Any]) -> LoraSettings:
        """Settings from themselves or from a plain mapping (checkpoint hyper-parameters)."""
        if isinstance(value, LoraSettings):
            return value
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown LoRA settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**dict(value))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def target_names(self, module: nn.Module) -> list[str]:
        """Names of the adaptable layers of ``module`` the ``targets`` expression matches."""
        pattern = re.compile(self.targets)
        names = [name for name, child in module.named_modules()
                 if name and pattern.fullmatch(name) and isinstance(_base(child), _ADAPTABLE)]
        if not names:
            raise ValueError(
                f"LoRA targets {self.targets!r} match no nn.Linear or nn.Conv1d in {type(module).__name__}; "
                f"its layers are named like {[n for n, c in module.named_modules() if isinstance(c, _ADAPTABLE)][:6]}"
            )
        return names

    def peft_config(self, module: nn.Module) -> LoraConfig:
        """peft's config for ``module``: the matched layers by name, with foley's weight-space layers."""
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=self.target_names(module), use_rslora=self.rslora, bias="none")
        config._register_custom_module({nn.Linear: LoraLinear, nn.Conv1d: LoraConv1d})
        return config


def _base(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


class _WeightSpace:
    """Mixin for peft LoRA layers: the adapter is part of ``weight`` (see the module docstring)."""

    def _rank_mask(self, name: str, rank: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        dropout = self.lora_dropout[name]  # type: ignore[attr-defined]
        p = float(getattr(dropout, "p", 0.0))
        if not (self.training and p > 0.0):  # type: ignore[attr-defined]
            return None
        return (torch.rand(rank, device=device) >= p).to(dtype) / (1.0 - p)

    def _delta(self, name: str) -> Tensor:
        """``scaling · B A`` in the base weight's layout (rank components dropped in training)."""
        a = self.lora_A[name].weight  # type: ignore[attr-defined]
        b = self.lora_B[name].weight  # type: ignore[attr-defined]
        b = b.reshape(b.shape[0], b.shape[1])  # (out, r): linear, or 1-tap convolution
        mask = self._rank_mask(name, b.shape[1], b.device, b.dtype)
        if mask is not None:
            b = b * mask
        delta = b @ a if a.dim() == 2 else torch.einsum("or,rik->oik", b, a)
        return delta * self.scaling[name]  # type: ignore[attr-defined]

    def _active(self) -> list[str]:
        if self.disable_adapters or self.merged:  # type: ignore[attr-defined]
            return []
        return [n for n in self.active_adapters if n in self.lora_A]  # type: ignore[attr-defined]

    @property
    def weight(self) -> Tensor:
        """The base weight plus every active, unmerged adapter's update."""
        weight = self.get_base_layer().weight  # type: ignore[attr-defined]
        for name in self._active():
            weight = weight + self._delta(name).to(weight.dtype)
        return weight

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        base = self.get_base_layer()  # type: ignore[attr-defined]
        if type(base) is nn.Linear:
            # foley calls per-token layers that are not plain nn.Linear as layer(x, mask)
            # (foley.models.layers.apply_token_layer); a per-token linear has no use for the mask.
            args, kwargs = (), {}
        if not self._active():
            return base(x, *args, **kwargs)
        return torch.func.functional_call(base, {"weight": self.weight}, (x, *args), kwargs)


class LoraLinear(_WeightSpace, PeftLinear):
    """peft's LoRA ``Linear`` with the adapter applied in weight space."""


class LoraConv1d(_WeightSpace, PeftConv1d):
    """peft's LoRA ``Conv1d`` with the adapter applied in weight space.

    Works for subclasses of ``nn.Conv1d`` with other constructors and call conventions
    (foley's token convolutions): the adapter factors are plain convolutions holding
    ``A`` (``r × in × k``) and ``B`` (``out × r × 1``) as peft lays them out, and never run.
    """

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig, **kwargs: Any) -> None:
        base = self.get_base_layer()
        if base.groups != 1:
            raise ValueError(f"LoRA on grouped convolutions is not supported ({base})")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = nn.Conv1d(self.in_features, r, base.kernel_size, bias=False)
        self.lora_B[adapter_name] = nn.Conv1d(r, self.out_features, 1, bias=False)
        self.lora_bias[adapter_name] = False
        self.scaling[adapter_name] = lora_alpha / (r ** 0.5 if config.use_rslora else r)
        self.use_rslora[adapter_name] = config.use_rslora
        self.use_dora[adapter_name] = False
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)


def lora_layers(module: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """``(name, layer)`` of every LoRA layer in ``module``."""
    for name, child in module.named_modules():
        if isinstance(child, LoraLayer):
            yield name, child


def adapter_names(module: nn.Module) -> list[str]:
    """Names of the adapters added to ``module`` (in the order they were added)."""
    names: dict[str, None] = {}
    for _, layer in lora_layers(module):
        names.update(dict.fromkeys(layer.lora_A.keys()))
    return list(names)


def base_fingerprint(module: nn.Module) -> str:
    """Weight fingerprint of ``module`` without adapters (recorded when the first adapter is added)."""
    recorded = getattr(module, "_foley_base_fingerprint", None)
    if recorded is not None:
        return recorded
    if any(True for _ in lora_layers(module)):
        raise ValueError(f"{type(module).__name__} holds adapters added outside foley.adapters; its base is unknown")
    from foley.encoders.fingerprint import weights_fingerprint

    return weights_fingerprint(module)


def add_lora(module: nn.Module, settings: LoraSettings | Mapping[str, Any], name: str = "default") -> nn.Module:
    """Add a LoRA adapter ``name`` to ``module`` in place and make it the active one.

    The first adapter freezes the base weights (only adapters train); later ones are added
    frozen next to the others (switch with :func:`set_active_adapter`).

    Returns:
        ``module``.
    """
    from peft.functional import inject_adapter_in_model

    settings = LoraSettings.coerce(settings)
    if name in adapter_names(module):
        raise ValueError(f"{type(module).__name__} already has an adapter named {name!r}")
    first = not adapter_names(module)
    if first:
        object.__setattr__(module, "_foley_base_fingerprint", base_fingerprint(module))
    with warnings.catch_warnings():
        # peft warns that a second adapter goes next to the first: that is what this does.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(settings.peft_config(module), module, adapter_name=name)
    set_active_adapter(module, name, trainable=first)
    return module


def set_active_adapter(module: nn.Module, name: str | None, trainable: bool = False) -> None:
    """Use adapter ``name`` in ``module`` (``None``: the base weights alone).

    Args:
        module: A module with adapters.
        name: The adapter to use, or ``None`` to switch adapters off.
        trainable: Make the adapter's weights trainable (otherwise frozen).
    """
    from peft.functional import set_adapter

    names = adapter_names(module)
    if name is not None and name not in names:
        raise ValueError(f"no adapter named {name!r} in {type(module).__name__}; it has {names}")
    for _, layer in lora_layers(module):
        layer.enable_adapters(name is not None)
    if name is not None:
        set_adapter(module, name, inference_mode=not trainable)


def lora_state_dict(module: nn.Module, name: str = "default") -> dict[str, Tensor]:
    """Adapter ``name``'s weights in peft's layout (keys without the adapter name), detached copies."""
    from peft.functional import get_peft_model_state_dict

    if name not in adapter_names(module):
        raise ValueError(f"no adapter named {name!r} in {type(module).__name__}")
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(module, adapter_name=name).items()}


def load_lora_state(module: nn.Module, state: Mapping[str, Tensor], name: str = "default") -> None:
    """Load adapter weights (peft layout, e.g. from :func:`lora_state_dict`) into adapter ``name``.

    Raises:
        ValueError: keys are missing or unexpected, or shapes differ.
    """
    from peft.functional import set_peft_model_state_dict

    own = lora_state_dict(module, name)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"adapter weights do not fit adapter {name!r}: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}, other shapes {wrong[:4]}")
    set_peft_model_state_dict(module, dict(state), adapter_name=name)


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold the active adapters into the base weights and remove every LoRA layer (in place).

    Returns:
        ``module``, with its original layers and state-dict keys.
    """
    for name, layer in list(lora_layers(module)):
        active = layer._active() if isinstance(layer, _WeightSpace) else list(layer.active_adapters)
        if active:
            layer.merge(safe_merge=True, adapter_names=active)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    for attribute in ("_foley_base_fingerprint", "peft_config"):
        if hasattr(module, attribute):
            object.__delattr__(module, attribute)
    return module


def trainable_fraction(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module``."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters())


def share_frozen(copy: nn.Module, module: nn.Module) -> None:
    """Point ``copy``'s frozen parameters at ``module``'s (same structure): an EMA of an adapter
    needs no second copy of the frozen base."""
    mine = dict(module.named_parameters())
    for name, _ in list(copy.named_parameters()):
        source = mine[name]
        if not source.requires_grad:
            owner, _, leaf = name.rpartition(".")
            (copy.get_submodule(owner) if owner else copy)._parameters[leaf] = source
