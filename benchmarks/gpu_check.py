"""GPU check: MM-DiT training throughput (MFU) and 8 s generation time, bf16 vs fp32.

Run through ``benchmarks/gpu_check.sh`` on a CUDA machine. Needs only torch (+ einops)
and ``src/`` on PYTHONPATH. Prints one line per measurement and writes a JSON summary.

FLOPs are counted with ``torch.utils.flop_counter`` on the real forward pass (matmuls
and attention), a training step is counted as 3x the forward, and MFU is reported
against the bf16 matmul rate measured on the same GPU in the same run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from foley.flow import FlowMatching
from foley.models.mmdit import MMDiT

SIZES = {  # facts §2 (MMAudio reference dimensions)
    "small": dict(hidden_dim=448, num_heads=7, joint_depth=4, audio_depth=8),
    "large": dict(hidden_dim=896, num_heads=14, joint_depth=7, audio_depth=14),
}
SECONDS = 8.0
LATENT_RATE = 44100 / 1024
T_AUDIO, T_CLIP, T_SYNC, T_TEXT = 345, 64, 192, 77
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def matmul_rate(dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def conditions(batch: int, dtype: torch.dtype) -> dict:
    dev = DEVICE
    return dict(
        seconds_start=torch.zeros(batch, device=dev),
        seconds_total=torch.full((batch,), SECONDS, device=dev),
        clip=torch.randn(batch, T_CLIP, 1024, device=dev, dtype=dtype),
        sync=torch.randn(batch, T_SYNC, 768, device=dev, dtype=dtype),
        text=torch.randn(batch, T_TEXT, 768, device=dev, dtype=dtype),
    )


def forward_flops(net: MMDiT, batch: int) -> float:
    x = torch.randn(batch, T_AUDIO, 40, device=DEVICE)
    t = torch.rand(batch, device=DEVICE)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, t, **conditions(batch, torch.float32))
    return float(counter.get_total_flops())


def train_throughput(net: MMDiT, batch: int, steps: int = 10) -> dict:
    flow = FlowMatching()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=DEVICE == "cuda")
    cond = conditions(batch, torch.float32)
    x1 = torch.randn(batch, T_AUDIO, 40, device=DEVICE)

    def step() -> None:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = flow.loss(lambda x, t: net(x, t, **cond), x1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    return {"batch": batch, "step_s": seconds, "samples_per_s": batch / seconds,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else 0.0}


@torch.no_grad()
def generate_seconds(net: MMDiT, dtype: torch.dtype, steps: int = 25, cfg: float = 4.5, reps: int = 2
                     ) -> tuple[float, torch.Tensor]:
    flow = FlowMatching()
    net = net.to(dtype)
    cond = conditions(1, dtype)
    gen = torch.Generator(DEVICE).manual_seed(0)
    noise = torch.randn(1, T_AUDIO, 40, device=DEVICE, generator=gen)

    def run() -> torch.Tensor:
        c = net.prepare_conditions(T_AUDIO, **cond)
        drop = torch.ones(1, dtype=torch.bool, device=DEVICE)
        u = net.prepare_conditions(T_AUDIO, **cond, drop_clip=drop, drop_sync=drop, drop_text=drop)
        return flow.sample(net.guided_velocity_fn(c, u, cfg), noise.to(dtype), steps=steps)

    out = run()
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        out = run()
    sync()
    return (time.perf_counter() - start) / reps, out.float()


@torch.no_grad()
def velocity_rel_err(net: MMDiT) -> float:
    """Relative error of one bf16 velocity evaluation against fp32 (same inputs)."""
    gen = torch.Generator(DEVICE).manual_seed(1)
    x = torch.randn(2, T_AUDIO, 40, device=DEVICE, generator=gen)
    t = torch.tensor([0.3, 0.8], device=DEVICE)
    cond = conditions(2, torch.float32)
    ref = net.float()(x, t, **cond)
    low = net.to(torch.bfloat16)(x.bfloat16(), t, **{k: (v.bfloat16() if v.is_floating_point() and v.dim() > 1 else v)
                                                     for k, v in cond.items()}).float()
    net.float()
    return ((low - ref).norm() / ref.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, to check the script itself")
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        SIZES.clear()
        SIZES["smoke"] = dict(hidden_dim=64, num_heads=2, joint_depth=1, audio_depth=1)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 reference must be real fp32
    torch.backends.cudnn.allow_tf32 = False
    result: dict = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__}
    n = 8192 if DEVICE == "cuda" else 512
    result["bf16_matmul_tflops"] = matmul_rate(torch.bfloat16, n) / 1e12
    result["fp32_matmul_tflops"] = matmul_rate(torch.float32, n) / 1e12
    print(f"device {result['device']}  bf16 matmul {result['bf16_matmul_tflops']:.0f} TFLOP/s  "
          f"fp32 matmul {result['fp32_matmul_tflops']:.1f} TFLOP/s")
    for name, dims in SIZES.items():
        torch.manual_seed(0)
        net = MMDiT(**dims).to(DEVICE)
        params = sum(p.numel() for p in net.parameters())
        # Give the zero-initialised output layers values so bf16-vs-fp32 errors are visible.
        with torch.no_grad():
            for p in net.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.02)
        batch = {"small": 32, "large": 16}.get(name, 2)
        fwd = forward_flops(net, batch) / batch
        train = train_throughput(net, batch)
        achieved = 3 * fwd * train["samples_per_s"]
        mfu = achieved / (result["bf16_matmul_tflops"] * 1e12)
        gen_fp32, out_fp32 = generate_seconds(net, torch.float32)
        gen_bf16, out_bf16 = generate_seconds(net, torch.bfloat16)
        rel = ((out_bf16 - out_fp32).norm() / out_fp32.norm()).item()
        step_rel = velocity_rel_err(net)
        row = {"params_m": params / 1e6, "fwd_gflop_per_sample": fwd / 1e9, **train,
               "train_tflops": achieved / 1e12, "mfu_vs_measured_bf16": mfu,
               "gen8s_fp32_s": gen_fp32, "gen8s_bf16_s": gen_bf16, "bf16_vs_fp32_rel_err": rel,
               "bf16_vs_fp32_velocity_rel_err": step_rel}
        result[name] = row
        print(f"{name}: {params/1e6:.0f}M params, {fwd/1e9:.1f} GFLOP/sample fwd; bf16 train batch {batch}: "
              f"{train['samples_per_s']:.1f} samples/s, {achieved/1e12:.0f} TFLOP/s, MFU {mfu:.1%}, "
              f"peak mem {train['peak_mem_gb']:.1f} GB; generate 8 s (25 Euler steps, CFG): "
              f"fp32 {gen_fp32:.2f} s, bf16 {gen_bf16:.2f} s, bf16-vs-fp32 rel err: one velocity {step_rel:.3%}, after 25 guided steps {rel:.3%}")
        del net
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
