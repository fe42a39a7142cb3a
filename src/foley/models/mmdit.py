"""MM-DiT velocity network of the stage-2 generator.

Structure (Kling-Foley / MMAudio design, our own implementation):

* Three token streams: audio latents, CLIP frames and text tokens, each with its own
  weights. ``joint_depth`` joint blocks run one SDPA attention over the concatenated
  tokens of all streams (RMSNorm on Q and K, aligned RoPE on the timed streams); then
  ``audio_depth`` audio-only blocks; then a final adaptive-norm layer predicts the
  velocity.
* Global condition: embedding of the flow time + projections of the masked means of
  the CLIP and text streams + embeddings of ``seconds_start`` and ``seconds_total``;
  it drives adaptive LayerNorm (shift, scale, gate) in every block.
* Sync features are interpolated from their own token rate to the audio latent times
  and added per audio token to the modulation of every audio-stream block and of the
  final layer. Their contribution is a separate linear map of the (time-independent)
  sync embedding, so it is computed once per generation (:class:`ConditionCache`)
  instead of once per sampling step.
* Missing modalities: a modality given as ``None`` or dropped per sample
  (``drop_*`` flags, for condition dropout and the unconditional CFG branch) is
  replaced by a learnable placeholder. For CLIP and text the stream then holds exactly
  one real token (the placeholder) and the rest is masked out, so "absent" and
  "dropped" give identical outputs. Placeholders are mixed in with ``torch.where``,
  so they receive (possibly zero) gradients on every step: with all modalities
  present, DDP needs no ``find_unused_parameters``. Passing a modality as ``None``
  during training leaves its input projection unused; use
  ``DDPStrategy(find_unused_parameters=True)`` in that case (or pass drop flags).
* Variable lengths: masks are True on real tokens and padding sits at the end of
  each sequence; padded tokens never influence real ones (key padding masks, masked
  pooling, mask-aware sync interpolation, convolutions that read padding as zeros).
  There is no positional table, so any duration works.
* Options reach MMAudio's released networks exactly (foley.convert.mmaudio_network,
  docs/mmaudio.md): SwiGLU and convolutional MLPs (``mlp``, ``*_kernel_size``),
  convolutional input projections (``input_projections``), learned empty features in each
  encoder's space instead of placeholders (``empty_features="learned"``), sync tokens added
  to the audio stream's condition before its SiLU (``sync_conditioning="summed"``, with
  per-segment position embeddings and nearest resampling by length), CLIP RoPE aligned by
  sequence length, a configurable time embedding, a SwiGLU on the pooled condition and no
  duration embeddings.

Precision: the residual streams live in the weights' dtype. Training keeps float32
weights (optionally under ``torch.autocast``, where the matmuls run in bf16 and the
residual stays float32). For inference, ``model.to(torch.bfloat16)`` runs everything in
bf16 without autocast (on CPU, autocast's casts made a comparable network 3x slower):
LayerNorm and the Q/K RMS statistics accumulate in float32 inside their kernels, the
timestep/duration features and the RoPE angles are computed in float32/float64, and
the output is returned in the dtype of ``x``. Measured deviation from float32 at the
tiny test size with deliberately large random weights: 1e-2 relative (bound 3e-2 in
tests/models/test_mmdit.py). The forward pass
has no host synchronisation on accelerators (checked with CUDA's sync debug mode in
benchmarks/bench_mmdit.py).
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from foley.configurable import Configurable
from foley.flow import FlowMatching
from foley.models.layers import (
    MLP,
    FeatureStandardizer,
    InputProjection,
    RMSNorm,
    SinusoidalEmbedding,
    SwiGLU,
    TemporalConvMLP,
    apply_token_layer,
    joint_attention,
    layer_norm,
    linear,
    modulate,
    rms_normalize,
    swiglu_hidden_dim,
    token_layer,
)
from foley.models.rope import AlignedRoPE, apply_rope

logger = logging.getLogger(__name__)
# Compiled forward_cached per network, with the weight versions it was compiled for (kept out of
# the module so copies and state dicts never carry a compiled function).
_COMPILED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Callable[..., Tensor]]] = weakref.WeakKeyDictionary()

__all__ = ["MMDiT", "ConditionCache", "resample_to_times"]


def resample_to_times(features: Tensor, valid_length: Tensor, rate: float, times: Tensor) -> Tensor:
    """Linearly interpolates a token sequence at given instants.

    Token ``i`` of ``features`` sits at ``i / rate`` seconds. Instants outside the
    valid part are clamped to its first/last token, so padding is never read.

    Args:
        features: (B, T, D).
        valid_length: (B,) int number of real tokens (>= 1) per sample.
        rate: token rate of ``features`` in Hz.
        times: (T_out,) instants in seconds.

    Returns:
        (B, T_out, D) in the dtype of ``features``.
    """
    last = (valid_length.clamp_min(1) - 1).to(torch.float32)[:, None]
    position = (times.float()[None] * rate).clamp_min(0.0)
    position = torch.minimum(position, last)
    left = position.floor()
    weight = (position - left)[..., None]
    left_index = left.long()
    right_index = torch.minimum(left + 1, last).long()
    d = features.shape[-1]

    def gather(index: Tensor) -> Tensor:
        return torch.gather(features, 1, index[..., None].expand(-1, -1, d))

    left_value, right_value = gather(left_index), gather(right_index)
    return torch.lerp(left_value.float(), right_value.float(), weight).to(features.dtype)


@dataclass
class ConditionCache:
    """Everything in the network's input that does not depend on ``x_t`` or ``t``.

    Built by :meth:`MMDiT.prepare_conditions` once per generation and reused at every
    sampling step. Masks are ``None`` when every token is real (CPU only; on
    accelerators they are kept to avoid a host synchronisation).
    """

    audio_length: int
    clip_tokens: Tensor  # (B, Tc, hidden) in the weights' dtype, placeholders substituted
    text_tokens: Tensor  # (B, Tt, hidden)
    audio_mask: Tensor | None  # (B, Ta) bool
    joint_mask: Tensor | None  # (B, Ta + Tc + Tt) bool
    audio_cos: Tensor  # (Ta, head_dim) float32
    audio_sin: Tensor
    clip_cos: Tensor  # (Tc, head_dim) float32
    clip_sin: Tensor
    global_cond: Tensor  # (B, hidden) float32, everything but the time embedding
    sync_modulation: list[Tensor]  # per audio-stream block + final layer: (B, Ta, k*hidden), weights' dtype
    sync_tokens: Tensor | None = None  # sync_conditioning="summed": (B, Ta, hidden) float32, added to the condition

    @property
    def batch_size(self) -> int:
        return self.clip_tokens.shape[0]

    @staticmethod
    def cat(caches: list[ConditionCache]) -> ConditionCache:
        """Concatenates caches along the batch (e.g. cond + uncond for batched CFG).

        CLIP and text streams of different lengths (a negative prompt, an absent
        modality) are padded with masked tokens, which leaves every output unchanged.
        """
        first = caches[0]
        for other in caches[1:]:
            if other.audio_length != first.audio_length:
                raise ValueError("cannot batch condition caches with different audio lengths "
                                 f"({first.audio_length} vs {other.audio_length})")
        clip_length = max(c.clip_tokens.shape[1] for c in caches)
        text_length = max(c.text_tokens.shape[1] for c in caches)
        audio_masks, joint_masks, clips, texts = [], [], [], []
        for c in caches:
            split = (c.audio_length, c.clip_tokens.shape[1], c.text_tokens.shape[1])
            real = torch.ones(c.batch_size, sum(split), dtype=torch.bool, device=c.clip_tokens.device)
            audio_mask = c.audio_mask if c.audio_mask is not None else real[:, :c.audio_length]
            joint = c.joint_mask if c.joint_mask is not None else real
            mask_audio, mask_clip, mask_text = joint.split(split, dim=1)
            clip_pad, text_pad = clip_length - split[1], text_length - split[2]
            clips.append(F.pad(c.clip_tokens, (0, 0, 0, clip_pad)))
            texts.append(F.pad(c.text_tokens, (0, 0, 0, text_pad)))
            joint_masks.append(torch.cat([mask_audio, F.pad(mask_clip, (0, clip_pad)),
                                          F.pad(mask_text, (0, text_pad))], dim=1))
            audio_masks.append(audio_mask)
        longest_clip = max(caches, key=lambda c: c.clip_tokens.shape[1])
        return ConditionCache(
            audio_length=first.audio_length,
            clip_tokens=torch.cat(clips), text_tokens=torch.cat(texts),
            audio_mask=_mask_or_none(torch.cat(audio_masks)), joint_mask=_mask_or_none(torch.cat(joint_masks)),
            audio_cos=first.audio_cos, audio_sin=first.audio_sin,
            clip_cos=longest_clip.clip_cos, clip_sin=longest_clip.clip_sin,
            global_cond=torch.cat([c.global_cond for c in caches]),
            sync_modulation=[torch.cat(parts) for parts in zip(*(c.sync_modulation for c in caches))],
            sync_tokens=(torch.cat([c.sync_tokens for c in caches]) if first.sync_tokens is not None else None))


def _mask_or_none(mask: Tensor) -> Tensor | None:
    """Drops an all-True mask so SDPA can use its unmasked kernel (CPU only, no sync cost)."""
    if mask.device.type == "cpu" and bool(mask.all()):
        return None
    return mask


class _StreamLayers(nn.Module):
    """One stream's weights inside a block: adaLN modulation, QKV, Q/K norms, output, MLP.

    With ``pre_only`` (the last joint block's CLIP and text streams, whose outputs are
    discarded) only the parts that produce keys and values exist. With ``kernel_size > 1``
    the attention-output projection and the MLP are convolutions along the tokens.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, pre_only: bool = False,
                 kernel_size: int = 1, mlp: str = "gelu", multiple_of: int = 256,
                 norm_eps: float = 1e-6, qk_norm_eps: float | None = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pre_only = pre_only
        self.norm_eps = norm_eps
        self.qk_norm_eps = qk_norm_eps
        self.num_modulations = 2 if pre_only else 6
        self.modulation = nn.Linear(dim, self.num_modulations * dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // num_heads)
        self.k_norm = RMSNorm(dim // num_heads)
        if not pre_only:
            self.out = token_layer(dim, dim, kernel_size)
            if mlp == "gelu":
                if kernel_size != 1:
                    raise ValueError("a convolutional MLP needs mlp='swiglu'")
                self.mlp = MLP(dim, int(dim * mlp_ratio))
            else:
                self.mlp = SwiGLU(dim, swiglu_hidden_dim(int(dim * mlp_ratio), multiple_of), kernel_size)

    def modulations(self, cond: Tensor, per_token: Tensor | None = None) -> list[Tensor]:
        """Shift, 1 + scale and gate tensors (B, 1 or T, dim) from the condition.

        ``cond`` is (B, dim) (one condition per sample) or (B, T, dim) (per token). The one
        of ``1 + scale`` is added to the small per-sample tensor before the per-token sync
        part is added, so no per-token tensor is rebuilt for it.
        """
        mod = linear(self.modulation, cond)
        if mod.dim() == 2:
            mod = mod[:, None]
        dim = mod.shape[-1] // self.num_modulations
        ones = torch.zeros(self.num_modulations, dim, dtype=mod.dtype, device=mod.device)
        ones[1::3] = 1  # scale slots: (shift, scale, gate) per sub-layer
        mod = mod + ones.flatten()
        if per_token is not None:
            mod = mod + per_token
        return list(mod.chunk(self.num_modulations, dim=-1))

    def _qk_eps(self, x: Tensor) -> float:
        # None: the dtype's machine epsilon, as torch.nn.RMSNorm(eps=None) (MMAudio's Q/K norms).
        return torch.finfo(x.dtype).eps if self.qk_norm_eps is None else self.qk_norm_eps

    def pre_attention(self, x: Tensor, mod: list[Tensor], rope: tuple[Tensor, Tensor] | None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns q, k, v (B, heads, T, head_dim) in the weights' (or autocast) dtype."""
        b, t, d = x.shape
        h = modulate(layer_norm(x, self.norm_eps), mod[0], mod[1])
        qkv = linear(self.qkv, h).view(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = rms_normalize(q, self._qk_eps(q)), rms_normalize(k, self._qk_eps(k))
        if rope is None:
            return q * self.q_norm.weight.to(q.dtype), k * self.k_norm.weight.to(k.dtype), v
        cos, sin = rope
        return (apply_rope(q, cos, sin, self.q_norm.weight), apply_rope(k, cos, sin, self.k_norm.weight), v)

    def post_attention(self, x: Tensor, attended: Tensor, mod: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """Gated residual updates with the attention output and the MLP (``mask``: (B, T) real tokens)."""
        x = torch.addcmul(x, mod[2], apply_token_layer(self.out, attended, mask).to(x.dtype))
        h = modulate(layer_norm(x, self.norm_eps), mod[3], mod[4])
        update = self.mlp(h, mask) if isinstance(self.mlp, SwiGLU) else self.mlp(h)
        return torch.addcmul(x, mod[5], update.to(x.dtype))


def _stream_masks(cache: ConditionCache, audio_length: int, clip_length: int) -> tuple[Tensor | None, Tensor | None]:
    """(audio, clip) token masks for the convolutional layers (None: all real)."""
    if cache.joint_mask is None:
        return cache.audio_mask, None
    audio, clip, _ = cache.joint_mask.split([audio_length, clip_length, cache.joint_mask.shape[1]
                                             - audio_length - clip_length], dim=1)
    return audio, clip


class _JointBlock(nn.Module):
    """Audio, CLIP and text streams with their own weights and one joint attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, last: bool, audio_kernel_size: int = 1,
                 clip_kernel_size: int = 1, **stream: object) -> None:
        super().__init__()
        self.audio = _StreamLayers(dim, num_heads, mlp_ratio, kernel_size=audio_kernel_size, **stream)
        self.clip = _StreamLayers(dim, num_heads, mlp_ratio, pre_only=last, kernel_size=clip_kernel_size, **stream)
        self.text = _StreamLayers(dim, num_heads, mlp_ratio, pre_only=last, **stream)

    def forward(self, audio: Tensor, clip: Tensor, text: Tensor, audio_cond: Tensor, cond: Tensor,
                sync_mod: Tensor | None, cache: ConditionCache) -> tuple[Tensor, Tensor, Tensor]:
        audio_mod = self.audio.modulations(audio_cond, sync_mod)
        clip_mod = self.clip.modulations(cond)
        text_mod = self.text.modulations(cond)
        qa, ka, va = self.audio.pre_attention(audio, audio_mod, (cache.audio_cos, cache.audio_sin))
        qc, kc, vc = self.clip.pre_attention(clip, clip_mod, (cache.clip_cos, cache.clip_sin))
        qt, kt, vt = self.text.pre_attention(text, text_mod, None)
        attended = joint_attention(torch.cat([qa, qc, qt], dim=2), torch.cat([ka, kc, kt], dim=2),
                                   torch.cat([va, vc, vt], dim=2), cache.joint_mask)
        ta, tc = audio.shape[1], clip.shape[1]
        audio_mask, clip_mask = _stream_masks(cache, ta, tc)
        audio = self.audio.post_attention(audio, attended[:, :ta], audio_mod, audio_mask)
        if not self.clip.pre_only:
            clip = self.clip.post_attention(clip, attended[:, ta:ta + tc], clip_mod, clip_mask)
            text = self.text.post_attention(text, attended[:, ta + tc:], text_mod)
        return audio, clip, text


class _AudioBlock(nn.Module):
    """Audio-only transformer block (self-attention + MLP with adaLN)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, audio_kernel_size: int = 1,
                 **stream: object) -> None:
        super().__init__()
        self.audio = _StreamLayers(dim, num_heads, mlp_ratio, kernel_size=audio_kernel_size, **stream)

    def forward(self, audio: Tensor, audio_cond: Tensor, sync_mod: Tensor | None, cache: ConditionCache) -> Tensor:
        mod = self.audio.modulations(audio_cond, sync_mod)
        q, k, v = self.audio.pre_attention(audio, mod, (cache.audio_cos, cache.audio_sin))
        return self.audio.post_attention(audio, joint_attention(q, k, v, cache.audio_mask), mod, cache.audio_mask)


class MMDiT(Configurable, nn.Module):
    """Multimodal diffusion transformer predicting the flow velocity of audio latents.

    Args:
        latent_dim: channels of the codec latent.
        hidden_dim: transformer width.
        num_heads: attention heads; the reference sizes use heads of 64 channels.
        joint_depth: joint audio/CLIP/text blocks.
        audio_depth: audio-only blocks after the joint ones.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_dim``.
        clip_dim: width of the CLIP frame embeddings.
        sync_dim: width of the sync (Synchformer) tokens.
        text_dim: width of the text encoder tokens.
        latent_rate: audio latent frames per second (44100 / 1024).
        clip_rate: CLIP frames per second.
        sync_rate: sync tokens per second (token ``i`` sits at ``i / sync_rate``).
        max_text_tokens: longest accepted text sequence (a guard against passing
            untruncated encoder outputs; there is no positional table).
        rope_base: base of the rotary frequencies.
        sync_kernel_size: temporal kernel of the residual convolutional MLP applied to the
            sync tokens at their own rate (MMAudio uses 3). One token rarely says "an
            event happens here"; the change between neighbouring tokens does. 1 disables it.
        standardize_sync: standardise each sync channel with statistics gathered over the first
            training steps (:class:`~foley.models.layers.FeatureStandardizer`). For encoders whose
            tokens are dominated by a constant part, such as the randomly initialised tiny
            Synchformer of the CI and demo configs.
        gradient_checkpointing: recompute each block in the backward pass instead of
            storing its activations (training only; ~30 % slower, much less memory for
            the large sizes or long clips).
        distilled_steps: step counts a few-step student was distilled for
            (:class:`foley.flow.TrajectoryDistillation`); adds an embedding of the step size
            ``d`` to the time embedding, so one network predicts the mean velocity over a step
            of any of these sizes. ``None``: a plain velocity network.
    """

    def __init__(self, latent_dim: int = 40, hidden_dim: int = 448, num_heads: int = 7,
                 joint_depth: int = 4, audio_depth: int = 8, mlp_ratio: float = 4.0,
                 clip_dim: int = 1024, sync_dim: int = 768, text_dim: int = 768,
                 latent_rate: float = 44100 / 1024, clip_rate: float = 8.0, sync_rate: float = 24.0,
                 max_text_tokens: int = 77, rope_base: float = 10000.0,
                 sync_kernel_size: int = 3, standardize_sync: bool = False,
                 gradient_checkpointing: bool = False,
                 mlp: Literal["gelu", "swiglu"] = "gelu", swiglu_multiple_of: int = 256,
                 audio_kernel_size: int = 1, clip_kernel_size: int = 1,
                 input_projections: dict[str, dict[str, Any]] | None = None,
                 sync_conditioning: Literal["per_block", "summed"] = "per_block",
                 sync_resampling: Literal["time_linear", "length_nearest"] = "time_linear",
                 sync_segment_length: int = 0,
                 clip_rope_alignment: Literal["time", "length"] = "time",
                 time_embedding: dict[str, Any] | None = None,
                 global_mlp: bool = False, duration_embeddings: bool = True,
                 final_kernel_size: int = 1, final_sync: bool = True,
                 empty_features: Literal["placeholder", "learned"] = "placeholder",
                 norm_eps: float = 1e-6, qk_norm_eps: float | None = 1e-6,
                 distilled_steps: list[int] | None = None) -> None:
        super().__init__()
        if distilled_steps is not None and (not distilled_steps or any(int(n) < 1 for n in distilled_steps)):
            raise ValueError(f"distilled_steps must list positive step counts, got {distilled_steps}")
        if hidden_dim % num_heads or (hidden_dim // num_heads) % 2:
            raise ValueError(f"hidden_dim must split into num_heads heads of even size (64 in the "
                             f"reference sizes), got hidden_dim={hidden_dim}, num_heads={num_heads}")
        if sync_kernel_size < 1 or sync_kernel_size % 2 == 0:
            raise ValueError(f"sync_kernel_size must be odd and positive, got {sync_kernel_size}")
        if joint_depth < 1 or audio_depth < 0:
            raise ValueError(f"need joint_depth >= 1 and audio_depth >= 0, got {joint_depth}, {audio_depth}")
        for name, rate in (("latent_rate", latent_rate), ("clip_rate", clip_rate), ("sync_rate", sync_rate)):
            if rate <= 0:
                raise ValueError(f"{name} must be positive, got {rate}")
        choices = {"mlp": (mlp, ("gelu", "swiglu")), "sync_conditioning": (sync_conditioning, ("per_block", "summed")),
                   "sync_resampling": (sync_resampling, ("time_linear", "length_nearest")),
                   "clip_rope_alignment": (clip_rope_alignment, ("time", "length")),
                   "empty_features": (empty_features, ("placeholder", "learned"))}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        unknown = set(input_projections or {}) - {"audio", "clip", "sync", "text"}
        if unknown:
            raise ValueError(f"input_projections has unknown streams {sorted(unknown)}; use audio, clip, sync, text")
        self.latent_dim, self.hidden_dim, self.num_heads = latent_dim, hidden_dim, num_heads
        self.clip_dim, self.sync_dim, self.text_dim = clip_dim, sync_dim, text_dim
        self.latent_rate, self.clip_rate, self.sync_rate = float(latent_rate), float(clip_rate), float(sync_rate)
        self.max_text_tokens = max_text_tokens
        self.gradient_checkpointing = gradient_checkpointing
        self.sync_conditioning, self.sync_resampling = sync_conditioning, sync_resampling
        self.sync_segment_length = sync_segment_length
        self.clip_rope_alignment = clip_rope_alignment
        self.empty_features = empty_features
        self.duration_embeddings, self.final_sync = duration_embeddings, final_sync
        self.norm_eps = norm_eps
        self.rope = AlignedRoPE(hidden_dim // num_heads, latent_rate, rope_base)
        d = hidden_dim

        def projection(stream: str, in_dim: int) -> nn.Module:
            spec = (input_projections or {}).get(stream)
            if spec is None:
                return nn.Linear(in_dim, d)
            return InputProjection(in_dim, d, multiple_of=swiglu_multiple_of, **spec)

        self.audio_in = projection("audio", latent_dim)
        self.clip_in = projection("clip", clip_dim)
        self.text_in = projection("text", text_dim)
        self.sync_standardizer = FeatureStandardizer(sync_dim) if standardize_sync else None
        self.sync_segment_embedding = (nn.Parameter(torch.zeros(sync_segment_length, sync_dim))
                                       if sync_segment_length > 0 else None)
        self.sync_in = projection("sync", sync_dim)
        self.sync_conv = TemporalConvMLP(d, 2 * d, sync_kernel_size) if sync_kernel_size > 1 else None
        if empty_features == "placeholder":
            # Learned tokens at the transformer width that replace an absent/dropped stream.
            self.clip_placeholder = nn.Parameter(torch.zeros(d))
            self.sync_placeholder = nn.Parameter(torch.zeros(d))
            self.text_placeholder = nn.Parameter(torch.zeros(d))
        else:
            # Learned *features* in each encoder's own space (MMAudio's empty_*_feat): a dropped
            # stream goes through the same input projection as a real one.
            self.empty_clip = nn.Parameter(torch.zeros(clip_dim))
            self.empty_sync = nn.Parameter(torch.zeros(sync_dim))
            self.empty_text = nn.Parameter(torch.zeros(max_text_tokens, text_dim))

        time_spec = {"frequency_dim": 256, "scale": 1000.0, "max_period": 10000.0, **(time_embedding or {})}
        self.time_embed = SinusoidalEmbedding(d, int(time_spec["frequency_dim"]), float(time_spec["scale"]),
                                              float(time_spec["max_period"]))
        self.distilled_steps = sorted({int(n) for n in distilled_steps}) if distilled_steps else None
        # Step size d of a few-step student, added to the time embedding (zero at initialisation,
        # so a student starts as the velocity network it is distilled from).
        self.step_embed = (SinusoidalEmbedding(d, int(time_spec["frequency_dim"]), float(time_spec["scale"]),
                                               float(time_spec["max_period"])) if distilled_steps else None)
        if duration_embeddings:
            self.start_embed = SinusoidalEmbedding(d, scale=10.0)
            self.total_embed = SinusoidalEmbedding(d, scale=10.0)
        self.clip_pool = nn.Linear(d, d)
        self.text_pool = nn.Linear(d, d)
        self.global_mlp = SwiGLU(d, swiglu_hidden_dim(4 * d, swiglu_multiple_of)) if global_mlp else None

        stream = {"mlp": mlp, "multiple_of": swiglu_multiple_of, "norm_eps": norm_eps, "qk_norm_eps": qk_norm_eps}
        self.joint_blocks = nn.ModuleList(
            _JointBlock(d, num_heads, mlp_ratio, last=i == joint_depth - 1, audio_kernel_size=audio_kernel_size,
                        clip_kernel_size=clip_kernel_size, **stream) for i in range(joint_depth))
        self.audio_blocks = nn.ModuleList(_AudioBlock(d, num_heads, mlp_ratio, audio_kernel_size, **stream)
                                          for _ in range(audio_depth))
        if sync_conditioning == "per_block":
            self.sync_mlp = MLP(d, d)
            # Per-token sync contribution to each audio-stream modulation (6 per block, 2 final).
            self.sync_modulation = nn.ModuleList(
                nn.Linear(d, 6 * d) for _ in range(joint_depth + audio_depth))
            if final_sync:
                self.final_sync_modulation = nn.Linear(d, 2 * d)
        self.final_modulation = nn.Linear(d, 2 * d)
        self.final_out = token_layer(d, latent_dim, final_kernel_size)
        self.compiled_inference = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier linears, small random placeholders, zero modulations, output and sync-conv residual.

        Zero modulations make every block the identity at initialisation (adaLN-Zero)
        and the zero output layer starts training from v = 0. Learned empty features
        start at zero (MMAudio's initialisation).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.empty_features == "placeholder":
            for placeholder in (self.clip_placeholder, self.sync_placeholder, self.text_placeholder):
                nn.init.normal_(placeholder, std=0.02)
        else:
            for empty in (self.empty_clip, self.empty_sync, self.empty_text):
                nn.init.zeros_(empty)
        if self.sync_segment_embedding is not None:
            nn.init.zeros_(self.sync_segment_embedding)
        zero = [b.audio.modulation for b in self.audio_blocks]
        for block in self.joint_blocks:
            zero += [block.audio.modulation, block.clip.modulation, block.text.modulation]
        if self.sync_conditioning == "per_block":
            zero += list(self.sync_modulation)
            if self.final_sync:
                zero.append(self.final_sync_modulation)
        zero += [self.final_modulation, self.final_out]
        if self.step_embed is not None:
            zero.append(self.step_embed.fc2)
        if self.sync_conv is not None:  # its residual branch starts as the identity
            zero.append(self.sync_conv.conv2)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ conditions
    def _check(self, name: str, value: Tensor | None, dim: int, mask: Tensor | None, batch: int) -> None:
        if value is None:
            if mask is not None:
                raise ValueError(f"{name}_mask given without {name}")
            return
        if value.dim() != 3 or value.shape[0] != batch or value.shape[-1] != dim:
            raise ValueError(f"{name} must have shape (B={batch}, T, {dim}), got {tuple(value.shape)}; "
                             f"check the encoder output width against MMDiT({name}_dim=...)")
        if value.shape[1] < 1:
            raise ValueError(f"{name} has no tokens; pass None for a missing modality")
        if mask is not None and mask.shape != value.shape[:2]:
            raise ValueError(f"{name}_mask must have shape {tuple(value.shape[:2])}, got {tuple(mask.shape)}")

    @property
    def _stream_dtype(self) -> torch.dtype:
        return self.final_modulation.weight.dtype

    def _drop_flags(self, drop: Tensor | None, mask: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """(B,) True where a stream is dropped or has no real token (then it is missing)."""
        drop = torch.zeros(batch, dtype=torch.bool, device=device) if drop is None else drop.to(device).bool()
        return drop if mask is None else drop | ~mask.any(dim=1)

    def _token_stream(self, tokens: Tensor | None, mask: Tensor | None, drop: Tensor | None,
                      projection: nn.Module, empty: Tensor, batch: int, device: torch.device,
                      empty_length: int = 1) -> tuple[Tensor, Tensor]:
        """Projects a CLIP/text stream, substituting the empty condition where absent or dropped.

        ``placeholder`` mode: one learned token at the transformer width. ``learned`` mode:
        learned features in the encoder's space, ``empty`` (D,) repeated or (T, D) per
        token, projected like real features; an absent stream gets ``empty_length`` tokens.
        """
        learned = self.empty_features == "learned"
        if tokens is None:
            if not learned:
                hidden = empty.expand(batch, 1, -1)
                return hidden, torch.ones(batch, 1, dtype=torch.bool, device=device)
            tokens = (empty.expand(batch, empty_length, -1) if empty.dim() == 1 else empty.expand(batch, -1, -1))
            return apply_token_layer(projection, tokens).to(self._stream_dtype), torch.ones(
                batch, tokens.shape[1], dtype=torch.bool, device=device)
        drop = self._drop_flags(drop, mask, batch, device)
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
        if learned:
            if empty.dim() == 2 and empty.shape[0] != tokens.shape[1]:
                raise ValueError(f"the learned empty text has {empty.shape[0]} tokens but the text has "
                                 f"{tokens.shape[1]}; pad or truncate the text features to {empty.shape[0]} tokens")
            tokens = torch.where(drop[:, None, None], empty.to(tokens.dtype), tokens)
            # Dropped samples attend to all of their empty tokens (as MMAudio's empty conditions).
            mask = torch.where(drop[:, None], True, mask.bool())
            return apply_token_layer(projection, tokens, mask).to(self._stream_dtype), mask
        hidden = apply_token_layer(projection, tokens, mask).to(empty.dtype)
        first_only = torch.zeros_like(mask)
        first_only[:, 0] = True
        hidden = torch.where(drop[:, None, None], empty, hidden)
        mask = torch.where(drop[:, None], first_only, mask.bool())
        return hidden, mask

    def _sync_stream(self, sync: Tensor | None, sync_mask: Tensor | None, drop_sync: Tensor | None,
                     audio_length: int, batch: int, device: torch.device) -> Tensor:
        """Sync tokens projected and resampled to the audio latent frames: (B, Ta, hidden)."""
        learned = self.empty_features == "learned"
        if sync is None and learned:  # MMAudio's empty sync: the learned feature at every token
            length = max(1, round(audio_length / self.latent_rate * self.sync_rate))
            if self.sync_segment_length:
                length = -(-length // self.sync_segment_length) * self.sync_segment_length
            sync = self.empty_sync.expand(batch, length, -1)
            drop_sync = sync_mask = None
        if sync is None:
            sync_h = self.sync_placeholder.expand(batch, 1, -1)
            sync_len = torch.ones(batch, dtype=torch.long, device=device)
        else:
            if self.sync_standardizer is not None:
                sync = self.sync_standardizer(sync, sync_mask)
            # Still routed through where() when nothing is dropped, to keep the empty
            # condition in the graph (DDP without find_unused_parameters).
            drop_sync = self._drop_flags(drop_sync, sync_mask, batch, device)
            if learned:
                sync = torch.where(drop_sync[:, None, None], self.empty_sync.to(sync.dtype), sync)
            if self.sync_segment_embedding is not None:
                b, t, c = sync.shape
                segment = self.sync_segment_length
                if t % segment:
                    raise ValueError(f"sync has {t} tokens, not a whole number of {segment}-token Synchformer "
                                     "segments; pass the encoder's output unchanged")
                sync = (sync.view(b, t // segment, segment, c) + self.sync_segment_embedding.to(sync.dtype)).view(b, t, c)
            sync_len = (sync_mask.sum(1) if sync_mask is not None
                        else torch.full((batch,), sync.shape[1], dtype=torch.long, device=device))
            sync_h = apply_token_layer(self.sync_in, sync, sync_mask)
            if learned:
                sync_h = sync_h.to(self._stream_dtype)
            else:
                sync_h = torch.where(drop_sync[:, None, None], self.sync_placeholder,
                                     sync_h.to(self.sync_placeholder.dtype))
        if self.sync_conv is not None:
            sync_h = self.sync_conv(sync_h, sync_len)
        if self.sync_resampling == "length_nearest":
            # Whole sequence onto the latent frames by length ratio (MMAudio's nearest-exact).
            return F.interpolate(sync_h.transpose(1, 2), size=audio_length, mode="nearest-exact").transpose(1, 2)
        audio_times = torch.arange(audio_length, device=device, dtype=torch.float32) / self.latent_rate
        return resample_to_times(sync_h, sync_len, self.sync_rate, audio_times)

    def prepare_conditions(self, audio_length: int, *, seconds_start: Tensor, seconds_total: Tensor,
                           clip: Tensor | None = None, clip_mask: Tensor | None = None,
                           sync: Tensor | None = None, sync_mask: Tensor | None = None,
                           text: Tensor | None = None, text_mask: Tensor | None = None,
                           audio_mask: Tensor | None = None, drop_clip: Tensor | None = None,
                           drop_sync: Tensor | None = None, drop_text: Tensor | None = None
                           ) -> ConditionCache:
        """Computes everything that does not depend on ``x_t`` or ``t``.

        Args: as :meth:`forward`, with ``audio_length`` the number of latent frames.
        """
        batch = seconds_total.shape[0]
        device = seconds_total.device
        if seconds_start.shape != (batch,) or seconds_total.shape != (batch,):
            raise ValueError(f"seconds_start and seconds_total must have shape (B,), got "
                             f"{tuple(seconds_start.shape)} and {tuple(seconds_total.shape)}")
        self._check("clip", clip, self.clip_dim, clip_mask, batch)
        self._check("sync", sync, self.sync_dim, sync_mask, batch)
        self._check("text", text, self.text_dim, text_mask, batch)
        if text is not None and text.shape[1] > self.max_text_tokens:
            raise ValueError(f"text has {text.shape[1]} tokens, more than max_text_tokens="
                             f"{self.max_text_tokens}; truncate in the text encoder")
        if audio_mask is not None and audio_mask.shape != (batch, audio_length):
            raise ValueError(f"audio_mask must have shape {(batch, audio_length)}, got {tuple(audio_mask.shape)}")

        learned = self.empty_features == "learned"
        clip_length = max(1, int(audio_length / self.latent_rate * self.clip_rate))
        clip_h, clip_m = self._token_stream(clip, clip_mask, drop_clip, self.clip_in,
                                            self.empty_clip if learned else self.clip_placeholder,
                                            batch, device, clip_length)
        text_h, text_m = self._token_stream(text, text_mask, drop_text, self.text_in,
                                            self.empty_text if learned else self.text_placeholder, batch, device)

        def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
            # Without padding, the plain mean: the same rounding as an unmasked reference (MMAudio).
            # Checked on the CPU only, where reading the mask costs no device synchronisation.
            if mask.device.type == "cpu" and bool(mask.all()):
                return hidden.float().mean(1)
            weights = mask.float()[..., None]
            return (hidden.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)

        global_cond = (linear(self.clip_pool, masked_mean(clip_h, clip_m)).float()
                       + linear(self.text_pool, masked_mean(text_h, text_m)).float())
        if self.global_mlp is not None:
            global_cond = self.global_mlp(global_cond).float()
        if self.duration_embeddings:
            global_cond = global_cond + self.start_embed(seconds_start).float() + self.total_embed(seconds_total).float()

        sync_h = self._sync_stream(sync, sync_mask, drop_sync, audio_length, batch, device)
        sync_modulation: list[Tensor] = []
        sync_tokens = None
        if self.sync_conditioning == "per_block":
            # One linear map of the (time-independent) sync embedding per audio-stream block.
            sync_embedding = F.silu(self.sync_mlp(sync_h))
            dtype = self._stream_dtype
            sync_modulation = [linear(layer, sync_embedding).to(dtype) for layer in self.sync_modulation]
            if self.final_sync:
                sync_modulation.append(linear(self.final_sync_modulation, sync_embedding).to(dtype))
        else:
            sync_tokens = sync_h.float()

        if audio_mask is None:
            audio_mask = torch.ones(batch, audio_length, dtype=torch.bool, device=device)
        joint_mask = torch.cat([audio_mask.bool(), clip_m, text_m], dim=1)
        audio_cos, audio_sin = self.rope.tables(audio_length, self.latent_rate, device)
        # "length": CLIP token i sits at latent position i * Ta / Tc (MMAudio's alignment by
        # sequence lengths); "time": at the latent index showing the same instant.
        clip_rate = (self.latent_rate * clip_h.shape[1] / audio_length if self.clip_rope_alignment == "length"
                     else self.clip_rate)
        clip_cos, clip_sin = self.rope.tables(clip_h.shape[1], clip_rate, device)
        return ConditionCache(
            audio_length=audio_length, clip_tokens=clip_h, text_tokens=text_h,
            audio_mask=_mask_or_none(audio_mask.bool()), joint_mask=_mask_or_none(joint_mask),
            audio_cos=audio_cos, audio_sin=audio_sin, clip_cos=clip_cos, clip_sin=clip_sin,
            global_cond=global_cond, sync_modulation=sync_modulation, sync_tokens=sync_tokens)

    # --------------------------------------------------------------------- forward
    def forward_cached(self, x: Tensor, t: Tensor, cache: ConditionCache, step_size: Tensor | None = None) -> Tensor:
        """Velocity for noisy latents ``x`` (B, T_a, latent_dim) at times ``t`` (B,).

        ``step_size`` (B,) or scalar: for a few-step student (``distilled_steps``), the size of
        the step the velocity is for (``None``: 0, the instantaneous velocity); a plain network
        refuses it.
        """
        if x.dim() != 3 or x.shape[-1] != self.latent_dim:
            raise ValueError(f"x must have shape (B, T, {self.latent_dim}), got {tuple(x.shape)}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if x.shape[1] != cache.audio_length or x.shape[0] != cache.batch_size:
            raise ValueError(f"x has shape {tuple(x.shape)} but the conditions were prepared for "
                             f"batch {cache.batch_size} and {cache.audio_length} latent frames")
        condition = self.time_embed(t).float() + cache.global_cond
        if step_size is not None or self.step_embed is not None:
            condition = condition + self._step_condition(step_size, t)
        cond = F.silu(condition)
        # "summed": the audio stream is modulated by silu(condition + sync token), per token.
        audio_cond = cond if cache.sync_tokens is None else F.silu(condition[:, None] + cache.sync_tokens)
        sync_mods: list[Tensor | None] = list(cache.sync_modulation) or [None] * (
            len(self.joint_blocks) + len(self.audio_blocks))
        # Residual streams live in the weights' dtype: float32 for training (also under
        # autocast), bf16 for a model cast with .to(torch.bfloat16).
        audio = apply_token_layer(self.audio_in, x, cache.audio_mask).to(self._stream_dtype)
        clip, text = cache.clip_tokens, cache.text_tokens
        for i, block in enumerate(self.joint_blocks):
            audio, clip, text = self._run(block, audio, clip, text, audio_cond, cond, sync_mods[i], cache)
        offset = len(self.joint_blocks)
        for i, block in enumerate(self.audio_blocks):
            audio = self._run(block, audio, audio_cond, sync_mods[offset + i], cache)
        modulation = linear(self.final_modulation, cond)[:, None]
        if self.sync_conditioning == "per_block" and self.final_sync:
            modulation = modulation + cache.sync_modulation[-1]
        shift, scale = modulation.chunk(2, dim=-1)
        hidden = modulate(layer_norm(audio, self.norm_eps), shift, 1 + scale)
        return apply_token_layer(self.final_out, hidden, cache.audio_mask).to(x.dtype)

    def _step_condition(self, step_size: Tensor | float | None, t: Tensor) -> Tensor:
        if self.step_embed is None:
            raise ValueError("step_size is for few-step students (MMDiT(distilled_steps=...)); this network "
                             "predicts the instantaneous velocity only")
        if step_size is None:
            step_size = 0.0
        step_size = torch.as_tensor(step_size, device=t.device, dtype=torch.float32)
        return self.step_embed(step_size.expand(t.shape[0])).float()

    def _run(self, block: nn.Module, *args: object):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: Tensor, t: Tensor, *, seconds_start: Tensor, seconds_total: Tensor,
                clip: Tensor | None = None, clip_mask: Tensor | None = None,
                sync: Tensor | None = None, sync_mask: Tensor | None = None,
                text: Tensor | None = None, text_mask: Tensor | None = None,
                audio_mask: Tensor | None = None, drop_clip: Tensor | None = None,
                drop_sync: Tensor | None = None, drop_text: Tensor | None = None,
                step_size: Tensor | None = None) -> Tensor:
        """Predicts the velocity ``dx/dt`` (a few-step student: the mean velocity over a step).

        Args:
            x: noisy latents (B, T_a, latent_dim).
            t: flow times (B,) in [0, 1] (0 = noise, 1 = data).
            seconds_start: (B,) crop start in the source clip, seconds.
            seconds_total: (B,) duration of each (unpadded) sample, seconds.
            clip: (B, T_c, clip_dim) CLIP frame embeddings at ``clip_rate``, or None.
            clip_mask: (B, T_c) True on real frames (padding at the end).
            sync: (B, T_s, sync_dim) sync tokens at ``sync_rate``, or None.
            sync_mask: (B, T_s) True on real tokens.
            text: (B, T_t, text_dim) text encoder tokens, or None.
            text_mask: (B, T_t) True on real tokens.
            audio_mask: (B, T_a) True on real latent frames.
            drop_clip, drop_sync, drop_text: (B,) bool, replace that modality by its
                placeholder for the flagged samples (condition dropout / CFG). A sample
                whose mask has no real token for a modality is treated as dropped.
            step_size: (B,) step sizes for a few-step student (see :meth:`forward_cached`).

        Returns:
            (B, T_a, latent_dim) velocity in the dtype of ``x``.
        """
        cache = self.prepare_conditions(
            x.shape[1], seconds_start=seconds_start, seconds_total=seconds_total, clip=clip,
            clip_mask=clip_mask, sync=sync, sync_mask=sync_mask, text=text, text_mask=text_mask,
            audio_mask=audio_mask, drop_clip=drop_clip, drop_sync=drop_sync, drop_text=drop_text)
        return self.forward_cached(x, t, cache, step_size)

    def compile_inference(self, enabled: bool = True, recompile: bool = True) -> MMDiT:
        """Sample through ``torch.compile`` (inductor) with the weights frozen into the graph.

        Inductor's freezing packs the weights once for the CPU's matrix kernels (bf16 included)
        and fuses the norm, modulation, RoPE and activation work around them; on 2 CPU cores the
        small size's guided sampling ran 1.04x (bf16) to 1.11x (fp32) faster than eager
        (docs/benchmarks.md). The first call per input shape compiles (11-46 s measured on 2
        cores; a C++ compiler is needed on the CPU).
        It applies to :meth:`velocity_fn` and :meth:`guided_velocity_fn` outside training with
        gradients off; a change of any weight (an adapter merged, ``load_state_dict``, a cast) is
        noticed and compiles again. ``recompile=False`` keeps an earlier compilation of
        unchanged weights (switching between compiled and eager sampling).
        """
        self.compiled_inference = enabled
        if recompile:
            _COMPILED.pop(self, None)
        return self

    def _inference_forward(self) -> Callable[..., Tensor]:
        if not getattr(self, "compiled_inference", False) or self.training or torch.is_grad_enabled():
            return self.forward_cached
        # In-place updates bump a tensor's version; new tensors (casts, adapters) change identities.
        weights = tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        entry = _COMPILED.get(self)
        if entry is None or entry[0] != weights:
            if entry is not None:
                logger.info("the generator's weights changed since it was compiled; compiling again")
                torch._dynamo.reset()  # the frozen constants of the old graph are stale
            entry = (weights, torch.compile(self.forward_cached, dynamic=False, options={"freezing": True}))
            _COMPILED[self] = entry
        return entry[1]

    def velocity_fn(self, cache: ConditionCache, step_size: float | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """``(x, t) -> v`` for :meth:`foley.flow.FlowMatching.sample` (``step_size``: a few-step
        student's step, ``1 / steps`` of a uniform grid)."""
        return lambda x, t: self._inference_forward()(x, t, cache, step_size)

    def guided_velocity_fn(self, cond: ConditionCache, uncond: ConditionCache, cfg_strength: float,
                           step_size: float | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """Classifier-free-guided ``(x, t) -> v`` running both branches in one batched pass.

        Pass the result to ``FlowMatching.sample`` without ``uncond_velocity_fn``.
        """
        both = ConditionCache.cat([cond, uncond])

        def guided(x: Tensor, t: Tensor) -> Tensor:
            v_cond, v_uncond = self._inference_forward()(torch.cat([x, x]), torch.cat([t, t]), both, step_size).chunk(2)
            return FlowMatching.guide(v_cond, v_uncond, cfg_strength)

        return guided
