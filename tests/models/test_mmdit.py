"""MM-DiT behaviour: padding invariance, placeholders, caching/CFG batching, sync resampling, bf16."""
from __future__ import annotations

import pytest
import torch

from foley.flow import FlowMatching
from foley.models.mmdit import MMDiT, resample_to_times

LATENT, CLIP, SYNC, TEXT = 8, 16, 12, 10

# Checks of identities that are exact in real arithmetic (padding is never read, a dropped
# modality equals its placeholder, cached = plain, batched guidance = the formula) run in
# float64. Differently shaped batches change GEMM blocking and softmax reduction order, so
# in float32 the two sides differ by ~eps32 * sqrt(n) * gain * |out|: measured up to 1.2e-5 at
# outputs up to 12.5, i.e. at a 1e-5 bound on some CPUs and thread counts. In float64 the same
# estimate, taken pessimistically with n (not sqrt(n)) = 256 (the MLP's reduction), |out| <= 13
# and a gain of 10 (measured: ~8 in float32 units), is 2.2e-16 * 256 * 13 * 10 = 7.4e-12;
# EXACT allows 1e-10, and anything that reads the 1e4 padding or the wrong placeholder moves
# the output by > 1e-2.
EXACT = dict(rtol=0.0, atol=1e-10)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(latent_dim=LATENT, hidden_dim=64, num_heads=2, joint_depth=1, audio_depth=1,
                  clip_dim=CLIP, sync_dim=SYNC, text_dim=TEXT)
    # The adaLN-Zero initialisation makes the network the zero map; randomise every
    # weight so that each path (modulations, placeholders, sync) affects the output.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.15)
    return model.to(dtype).eval()


def make_inputs(batch: int, audio_len: int, clip_len: int, sync_len: int, text_len: int, seed: int = 1,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        x=torch.randn(batch, audio_len, LATENT, generator=g),
        t=torch.rand(batch, generator=g),
        seconds_start=torch.rand(batch, generator=g) * 3,
        seconds_total=torch.full((batch,), audio_len * 1024 / 44100),
        clip=torch.randn(batch, clip_len, CLIP, generator=g),
        sync=torch.randn(batch, sync_len, SYNC, generator=g),
        text=torch.randn(batch, text_len, TEXT, generator=g),
    )
    return {k: v.to(dtype) for k, v in inputs.items()}


def pad(tensor: torch.Tensor, length: int, value: float = 0.0) -> torch.Tensor:
    extra = length - tensor.shape[1]
    filler = torch.full((tensor.shape[0], extra, *tensor.shape[2:]), value, dtype=tensor.dtype)
    return torch.cat([tensor, filler], dim=1)


def call(model: MMDiT, inputs: dict, **overrides) -> torch.Tensor:
    args = {**inputs, **overrides}
    return model(args.pop("x"), args.pop("t"), **args)


@torch.no_grad()
def test_padding_tokens_do_not_change_real_outputs():
    model = tiny_model(dtype=torch.float64)
    short = make_inputs(1, audio_len=20, clip_len=3, sync_len=11, text_len=4, seed=1, dtype=torch.float64)
    long = make_inputs(1, audio_len=31, clip_len=5, sync_len=17, text_len=7, seed=2, dtype=torch.float64)
    alone = call(model, short)
    lengths = {"x": 31, "clip": 5, "sync": 17, "text": 7}
    batch = {k: torch.cat([short[k], long[k]]) for k in ("t", "seconds_start", "seconds_total")}
    masks = {}
    for key, length in lengths.items():
        # Garbage in the padding: it must never be read.
        batch[key] = torch.cat([pad(short[key], length, value=1e4), long[key]])
        real = torch.zeros(2, length, dtype=torch.bool)
        real[0, :short[key].shape[1]] = True
        real[1] = True
        masks["audio_mask" if key == "x" else f"{key}_mask"] = real
    batched = call(model, batch, **masks)
    assert alone.abs().mean() > 0.1  # a non-trivial map
    torch.testing.assert_close(batched[0, :20], alone[0], **EXACT)
    torch.testing.assert_close(batched[1], call(model, long)[0], **EXACT)


@torch.no_grad()
@pytest.mark.parametrize("modality", ["clip", "sync", "text"])
def test_absent_modality_uses_the_placeholder_and_equals_dropping_it(modality):
    model = tiny_model(dtype=torch.float64)
    inputs = make_inputs(2, audio_len=15, clip_len=3, sync_len=9, text_len=5, dtype=torch.float64)
    full = call(model, inputs)
    absent = call(model, inputs, **{modality: None})
    dropped = call(model, inputs, **{f"drop_{modality}": torch.tensor([True, False])})
    assert (absent - full).abs().max() > 1e-2  # the condition matters
    torch.testing.assert_close(dropped[0], absent[0], **EXACT)
    torch.testing.assert_close(dropped[1], full[1], **EXACT)
    placeholder = getattr(model, f"{modality}_placeholder")
    placeholder.add_(1.0)
    assert (call(model, inputs, **{modality: None}) - absent).abs().max() > 1e-2
    torch.testing.assert_close(call(model, inputs), full, **EXACT)  # present modality ignores it


@torch.no_grad()
@pytest.mark.parametrize("modality", ["clip", "sync", "text"])
def test_a_sample_with_an_empty_mask_counts_as_missing(modality):
    model = tiny_model(dtype=torch.float64)
    inputs = make_inputs(2, audio_len=15, clip_len=3, sync_len=9, text_len=5, dtype=torch.float64)
    empty = torch.ones(2, inputs[modality].shape[1], dtype=torch.bool)
    empty[1] = False
    out = call(model, inputs, **{f"{modality}_mask": empty})
    dropped = call(model, inputs, **{f"drop_{modality}": torch.tensor([False, True])})
    torch.testing.assert_close(out, dropped, **EXACT)


def test_every_parameter_gets_a_gradient_when_all_modalities_are_present():
    model = tiny_model().train()
    inputs = make_inputs(2, audio_len=10, clip_len=2, sync_len=6, text_len=3)
    call(model, inputs).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []  # DDP needs no find_unused_parameters
    model.zero_grad(set_to_none=True)
    call(model, inputs, drop_clip=torch.tensor([True, False])).square().mean().backward()
    assert model.clip_placeholder.grad.abs().sum() > 0


@torch.no_grad()
def test_cached_conditions_and_batched_guidance_match_plain_calls():
    model = tiny_model(dtype=torch.float64)
    inputs = make_inputs(2, audio_len=12, clip_len=3, sync_len=7, text_len=4, dtype=torch.float64)
    conds = {k: inputs[k] for k in ("seconds_start", "seconds_total", "clip", "sync", "text")}
    cache = model.prepare_conditions(12, **conds)
    torch.testing.assert_close(model.forward_cached(inputs["x"], inputs["t"], cache), call(model, inputs), **EXACT)
    everything_dropped = {f"drop_{m}": torch.ones(2, dtype=torch.bool) for m in ("clip", "sync", "text")}
    uncond = model.prepare_conditions(12, **conds, **everything_dropped)
    guided = model.guided_velocity_fn(cache, uncond, cfg_strength=4.5)(inputs["x"], inputs["t"])
    v_cond = call(model, inputs)
    v_uncond = call(model, inputs, **everything_dropped)
    torch.testing.assert_close(guided, 4.5 * v_cond - 3.5 * v_uncond, **EXACT)
    # Sampling with the batched guided field equals the two-function sampler.
    noise = torch.randn(2, 12, LATENT, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    fm = FlowMatching()
    fused = fm.sample(model.guided_velocity_fn(cache, uncond, 2.0), noise, steps=3)
    separate = fm.sample(model.velocity_fn(cache), noise, steps=3, cfg_strength=2.0,
                         uncond_velocity_fn=model.velocity_fn(uncond))
    torch.testing.assert_close(fused, separate, **EXACT)


@torch.no_grad()
def test_batched_guidance_pads_streams_of_different_lengths():
    model = tiny_model(dtype=torch.float64)
    inputs = make_inputs(2, audio_len=12, clip_len=3, sync_len=7, text_len=4, dtype=torch.float64)
    conds = {k: inputs[k] for k in ("seconds_start", "seconds_total", "clip", "sync", "text")}
    longer = torch.randn(2, 9, TEXT, dtype=torch.float64)
    negative = {**conds, "clip": None, "sync": None, "text": longer}  # a longer negative prompt
    guided = model.guided_velocity_fn(model.prepare_conditions(12, **conds),
                                      model.prepare_conditions(12, **negative), cfg_strength=3.0)
    expected = 3.0 * call(model, inputs) - 2.0 * call(model, {**inputs, **negative})
    torch.testing.assert_close(guided(inputs["x"], inputs["t"]), expected, **EXACT)


def test_sync_resampling_interpolates_in_time_and_never_reads_padding():
    rate = 24.0
    times = torch.arange(40, dtype=torch.float64) / (44100 / 1024)
    token_times = torch.arange(30) / rate
    features = torch.stack([2 * token_times + 1, -token_times], dim=-1)[None].repeat(2, 1, 1)
    features[1, 12:] = 1e6  # padding of the second sample
    out = resample_to_times(features, torch.tensor([30, 12]), rate, times)
    expected = torch.stack([2 * times + 1, -times], dim=-1).float()
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-5)
    inside = times <= 11 / rate
    torch.testing.assert_close(out[1, inside], expected[inside], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1, ~inside], features[1, 11].expand(int((~inside).sum()), 2))


@torch.no_grad()
def test_bf16_copy_matches_fp32_and_handles_unseen_durations():
    model = tiny_model()
    inputs = make_inputs(2, audio_len=60, clip_len=11, sync_len=33, text_len=6)
    reference = call(model, inputs)
    fast = tiny_model().to(torch.bfloat16)
    out = call(fast, inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    relative = (out - reference).norm() / reference.norm()
    assert relative < 3e-2
    # A long clip (60 s) runs without shape assumptions and stays finite.
    long = make_inputs(1, audio_len=2584, clip_len=480, sync_len=1440, text_len=3)
    assert torch.isfinite(call(fast, long)).all()


def test_autocast_and_gradient_checkpointing_match_the_plain_float32_pass():
    model = tiny_model().train()
    inputs = make_inputs(2, audio_len=16, clip_len=3, sync_len=8, text_len=4)
    reference = call(model, inputs)
    reference.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = True
    out = call(model, inputs)
    out.square().mean().backward()
    torch.testing.assert_close(out, reference)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-4, atol=1e-5, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = call(model, inputs)
    assert mixed.dtype == torch.float32
    assert (mixed - reference).norm() / reference.norm() < 3e-2


@torch.no_grad()
def test_model_places_clip_frames_and_latents_on_one_time_axis():
    model = MMDiT(latent_dim=LATENT, hidden_dim=64, num_heads=1, joint_depth=1, audio_depth=0,
                  clip_dim=CLIP, sync_dim=SYNC, text_dim=TEXT, clip_rate=30.0)
    cache = model.prepare_conditions(736, seconds_start=torch.zeros(1), seconds_total=torch.full((1,), 17.1),
                                     clip=torch.randn(1, 513, CLIP))
    # Frame 512 at 30 fps and latent 735 at 44100/1024 Hz both show t = 17.0667 s.
    torch.testing.assert_close(cache.clip_cos[512], cache.audio_cos[735], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache.clip_sin[512], cache.audio_sin[735], rtol=0, atol=1e-6)
    assert (cache.clip_cos[511] - cache.audio_cos[735]).abs().max() > 1e-2


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    inputs = make_inputs(1, audio_len=5, clip_len=2, sync_len=3, text_len=2)
    with pytest.raises(ValueError, match="clip must have shape"):
        call(model, inputs, clip=torch.randn(1, 2, CLIP + 1))
    with pytest.raises(ValueError, match="max_text_tokens"):
        call(model, inputs, text=torch.randn(1, 78, TEXT))
    with pytest.raises(ValueError, match="prepared for"):
        cache = model.prepare_conditions(5, seconds_start=inputs["seconds_start"],
                                         seconds_total=inputs["seconds_total"])
        model.forward_cached(torch.randn(1, 6, LATENT), inputs["t"], cache)


@pytest.mark.slow
def test_sync_condition_is_learned_and_places_events_in_time():
    """Tiny learning check: the latent must show a bump where the sync stream shows one.

    Events at random times in [0.1, 0.9] s appear in the sync tokens (24 Hz) and in the
    target latent (43 Hz); after a short training the sampled latent peaks at the event
    time for held-out events, and not when the sync streams are shuffled across samples.
    """
    torch.manual_seed(0)
    model = MMDiT(latent_dim=4, hidden_dim=64, num_heads=2, joint_depth=1, audio_depth=1,
                  clip_dim=8, sync_dim=8, text_dim=8)
    fm = FlowMatching()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    latent_rate, audio_len, sync_len = 44100 / 1024, 43, 24

    def events(n: int, g: torch.Generator):
        tau = torch.rand(n, generator=g) * 0.8 + 0.1
        bump = lambda times: torch.exp(-(times[None] - tau[:, None]) ** 2 / (2 * 0.04**2))  # noqa: E731
        sync = torch.zeros(n, sync_len, 8)
        sync[..., 0] = bump(torch.arange(sync_len) / 24.0)
        x1 = torch.zeros(n, audio_len, 4)
        x1[..., 0] = 2 * bump(torch.arange(audio_len) / latent_rate) - 0.5
        return tau, sync, x1

    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        _, sync, x1 = events(16, g)
        conds = dict(seconds_start=torch.zeros(16), seconds_total=torch.ones(16), sync=sync)
        loss = fm.loss(lambda x, t: model(x, t, **conds), x1, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tau, sync, _ = events(32, torch.Generator().manual_seed(99))
    errors = {}
    with torch.no_grad():
        for name, stream in (("true", sync), ("shuffled", sync.roll(7, 0))):
            cache = model.prepare_conditions(audio_len, seconds_start=torch.zeros(32),
                                             seconds_total=torch.ones(32), sync=stream)
            noise = torch.randn(32, audio_len, 4, generator=torch.Generator().manual_seed(5))
            sample = fm.sample(model.velocity_fn(cache), noise, steps=10)
            peak_time = sample[..., 0].argmax(1) / latent_rate
            errors[name] = (peak_time - tau).abs().mean().item()
    assert errors["true"] < 0.04, errors
    assert errors["shuffled"] > 0.15, errors
