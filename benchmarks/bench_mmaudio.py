"""Converted MMAudio network in foley vs MMAudio's own code: speed and error, same weights and inputs.

One run prints every time and ratio: 8 s of audio, 25 Euler steps with CFG 4.5 (MMAudio's demo
defaults), random weights in the released layout (``--variant``, full size), random features of
the released shapes. foley runs both CFG branches in one batched pass; MMAudio's ``ode_wrapper``
makes two calls per step. FLOPs come from torch's counter (``FlopCounterMode``) on one guided
step; the ``linear`` rate is measured in the same run at the DiT's dominant shape
(tokens of both branches x hidden -> SwiGLU width) in fp32 and bf16.

    .venv/bin/python benchmarks/bench_mmaudio.py                       # foley only
    PYTHONPATH=/path/to/MMAudio .venv/bin/python benchmarks/bench_mmaudio.py --mmaudio
    ... --variant large_44k_v2 --threads 2 --repeats 3 --compile

``--mmaudio`` needs MMAudio's code importable (a checkout on PYTHONPATH, with einops and
torchdiffeq installed); it is never part of foley. Errors are relative to the largest value of
MMAudio's float32 output.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.reference_weights import uniform_weights  # noqa: E402

from foley.convert.mmaudio_network import (  # noqa: E402
    VARIANTS,
    convert_network_state_dict,
    expected_reference_shapes,
    network_config,
)
from foley.flow import FlowMatching  # noqa: E402
from foley.models.mmdit import MMDiT  # noqa: E402

LATENT, CLIP, SYNC, TEXT = 345, 64, 192, 77  # 8 s


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clip = F.normalize(torch.randn(1, CLIP, 1024, generator=g), dim=-1)
    text = F.normalize(torch.randn(1, TEXT, 1024, generator=g), dim=-1)
    return {"clip": clip, "sync": torch.randn(1, SYNC, 768, generator=g), "text": text,
            "noise": torch.randn(1, LATENT, 40, generator=g)}


def linear_rate(dtype: torch.dtype, rows: int, dim: int, hidden: int, repeats: int = 20) -> float:
    x, w = torch.randn(rows, dim, dtype=dtype), torch.randn(hidden, dim, dtype=dtype)
    for _ in range(3):
        F.linear(x, w)
    start = time.perf_counter()
    for _ in range(repeats):
        F.linear(x, w)
    return 2 * rows * dim * hidden * repeats / (time.perf_counter() - start) / 1e9


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def foley_generate(network: MMDiT, x: dict, steps: int, cfg: float, compiled: bool):
    common = {"seconds_start": torch.zeros(1), "seconds_total": torch.full((1,), 8.0)}
    dtype = network.final_modulation.weight.dtype

    def run() -> torch.Tensor:
        # MMDiT.compile_inference: torch.compile with inductor freezing (compiled once per dtype).
        network.compile_inference(compiled, recompile=False)
        with torch.inference_mode():
            cond = network.prepare_conditions(LATENT, clip=x["clip"].to(dtype), sync=x["sync"].to(dtype),
                                              text=x["text"].to(dtype), **common)
            uncond = network.prepare_conditions(LATENT, **common)
            velocity = network.guided_velocity_fn(cond, uncond, cfg)
            return FlowMatching().sample(velocity, x["noise"].to(dtype), steps=steps).float()

    return run


def guided_step_flops(network: MMDiT, x: dict) -> float:
    common = {"seconds_start": torch.zeros(1), "seconds_total": torch.full((1,), 8.0)}
    with torch.inference_mode():
        cond = network.prepare_conditions(LATENT, clip=x["clip"], sync=x["sync"], text=x["text"], **common)
        uncond = network.prepare_conditions(LATENT, **common)
        velocity = network.guided_velocity_fn(cond, uncond, 4.5)
        with FlopCounterMode(display=False) as counter:
            velocity(x["noise"], torch.zeros(1))
    return counter.get_total_flops() / 1e9


def mmaudio_generate(reference, x: dict, steps: int, cfg: float, dtype: torch.dtype):
    from mmaudio.model.flow_matching import FlowMatching as ReferenceFlow

    def run() -> torch.Tensor:
        with torch.inference_mode():
            conditions = reference.preprocess_conditions(x["clip"].to(dtype), x["sync"].to(dtype), x["text"].to(dtype))
            empty = reference.get_empty_conditions(1)
            flow = ReferenceFlow(min_sigma=0, inference_mode="euler", num_steps=steps)
            return flow.to_data(lambda t, z: reference.ode_wrapper(t, z, conditions, empty, cfg),
                                x["noise"].to(dtype)).float()

    return run


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="small_44k", choices=sorted(VARIANTS))
    parser.add_argument("--mmaudio", action="store_true", help="also run MMAudio's code (importable as `mmaudio`)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=4.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="foley's network through MMDiT.compile_inference (torch.compile, frozen weights)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32,bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = VARIANTS[args.variant]
    config = network_config(spec.hidden_dim, spec.num_heads, spec.depth, spec.fused_depth, spec.v2)
    reference_state = uniform_weights(expected_reference_shapes(config), seed=0)
    state, _, _ = convert_network_state_dict(reference_state, config)
    network = MMDiT(**config).eval()
    network.load_state_dict(state)
    x = inputs()
    tokens = 2 * (LATENT + CLIP + TEXT)
    hidden = network.joint_blocks[0].audio.mlp.w1.weight.shape[0]
    print(f"# {args.variant}: {sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, 8 s, {args.steps} steps, CFG {args.cfg}")
    rates = {dtype: linear_rate(dtype, tokens, spec.hidden_dim, hidden) for dtype in (torch.float32, torch.bfloat16)}
    for dtype, rate in rates.items():
        print(f"linear rate {str(dtype):15s} {tokens}x{spec.hidden_dim} @ {spec.hidden_dim}x{hidden}: {rate:7.1f} GFLOP/s")
    flops = guided_step_flops(network, x)
    print(f"foley guided step (both branches): {flops:.1f} GFLOP")

    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    results: dict[str, tuple[float, torch.Tensor]] = {}
    for dtype in dtypes:
        model = network.to(dtype)
        seconds, out = timed(foley_generate(model, x, args.steps, args.cfg, args.compile), args.repeats)
        results[f"foley {dtype}"] = (seconds, out)
        gflops = flops * args.steps / seconds
        print(f"foley  {str(dtype):15s} {seconds:7.2f} s  {gflops:6.1f} GFLOP/s  "
              f"({100 * gflops / rates[dtype]:.0f} % of the linear rate)")
    network.float()
    both = "foley torch.bfloat16" in results and "foley torch.float32" in results
    if both:
        print(f"foley bf16 vs foley fp32: max relative error "
              f"{relative(results['foley torch.bfloat16'][1], results['foley torch.float32'][1]):.2e}")

    if args.mmaudio:
        from mmaudio.model.networks import get_my_mmaudio

        reference = get_my_mmaudio(args.variant).eval()
        reference.load_weights(dict(reference_state))
        # MMAudio's FLOPs are not counted here: torch's counter trips over its expanded empty
        # features (the 149.9 GFLOP per guided step was counted on its predict_flow).
        for dtype in dtypes:
            model = reference.to(dtype)
            seconds, out = timed(mmaudio_generate(model, x, args.steps, args.cfg, dtype), args.repeats)
            results[f"MMAudio {dtype}"] = (seconds, out)
            print(f"MMAudio {str(dtype):14s} {seconds:7.2f} s")
        for name in ("foley", "MMAudio"):
            for dtype in dtypes:
                key = f"{name} {dtype}"
                if "MMAudio torch.float32" in results and key != "MMAudio torch.float32":
                    print(f"{key} vs MMAudio fp32: max relative error "
                          f"{relative(results[key][1], results['MMAudio torch.float32'][1]):.2e}")
        for dtype in dtypes:
            ours = results[f"foley {dtype}"][0]
            print(f"speed-up of foley {dtype}: " + ", ".join(
                f"{results[f'MMAudio {other}'][0] / ours:.2f}x vs MMAudio {other}" for other in dtypes)
                + "  (targets for bf16: 2.5x vs MMAudio fp32, 1.4x vs MMAudio bf16)")


if __name__ == "__main__":
    main()
