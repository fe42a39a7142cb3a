"""CPU/GPU speed of the stage-2 MM-DiT: 8 s generation with CFG and a training step.

Prints the machine's measured matmul rate next to every timing so that numbers taken
on a shared, noisy machine can be read as a fraction of what the hardware gave at the
time. Run:

    .venv/bin/python benchmarks/bench_mmdit.py            # small size, fp32 and bf16, CPU
    .venv/bin/python benchmarks/bench_mmdit.py --threads 1 --dtypes bfloat16 --train-batch 0
    .venv/bin/python benchmarks/bench_mmdit.py --threads 2 --fewstep 4 --train-batch 0  # + a 4-step student
    .venv/bin/python benchmarks/bench_mmdit.py --threads 2 --dtypes bfloat16 --train-batch 0 --matmul-attention
    python benchmarks/bench_mmdit.py --device cuda        # GPU; also checks for host syncs

Training on a GPU runs float32 weights under bf16 autocast; on the CPU it runs plain
float32 (CPU autocast is slow). Generation casts the whole network with ``.to(dtype)``.

FLOPs are counted analytically (2 per multiply-add) for the matrix products and the
attention; elementwise work is not counted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from foley.flow import FlowMatching
from foley.models.mmdit import MMDiT

SMALL = dict(hidden_dim=448, num_heads=7, joint_depth=4, audio_depth=8)


def use_matmul_attention() -> None:
    """Swap the MM-DiT's attention for :func:`bench_attention.matmul_attention` (a measurement, not a feature)."""
    import foley.models.mmdit as mmdit_module
    from bench_attention import matmul_attention

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        out = matmul_attention(q, k, v, key_mask)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)

    mmdit_module.joint_attention = attention


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Measured GFLOP/s of a square GEMM in ``dtype``."""
    if device.type == "cuda":
        size, repeats = 8192, 20
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def linear_rate(dtype: torch.dtype, device: torch.device, rows: int, features: int, outputs: int,
                repeats: int = 20) -> float:
    """Measured GFLOP/s of ``F.linear`` at the network's own shapes: (rows, features) @ (features, outputs)."""
    x = torch.randn(rows, features, dtype=dtype, device=device)
    weight = torch.randn(outputs, features, dtype=dtype, device=device)
    for _ in range(3):
        torch.nn.functional.linear(x, weight)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, weight)
    synchronize(device)
    return 2 * rows * features * outputs * repeats / (time.perf_counter() - start) / 1e9


def flops_per_pass(model: MMDiT, batch: int, audio_len: int, clip_len: int, text_len: int) -> float:
    """Matmul + attention FLOPs of one ``forward_cached`` call (conditions cached)."""
    d = model.hidden_dim
    mlp = model.audio_blocks[0].audio.mlp.fc1.out_features if len(model.audio_blocks) else 4 * d
    full_stream = 2 * (3 * d * d + d * d + 2 * d * mlp)  # qkv, out, mlp per token
    pre_only = 2 * 3 * d * d
    flops = 0.0
    for i, _ in enumerate(model.joint_blocks):
        last = i == len(model.joint_blocks) - 1
        side = pre_only if last else full_stream
        flops += audio_len * full_stream + (clip_len + text_len) * side
        n = audio_len + clip_len + text_len
        flops += 4 * audio_len * n * d if last else 4 * n * n * d  # QK^T and AV
    for _ in model.audio_blocks:
        flops += audio_len * full_stream + 4 * audio_len * audio_len * d
    flops += audio_len * 2 * (model.latent_dim * d * 2)  # input and output projections
    return batch * flops


def generation_seconds(model: MMDiT, steps: int, seconds: float, repeats: int, device: torch.device,
                       cfg: float = 4.5) -> float:
    """Best wall time of one ``seconds``-long generation: conditions, then ``steps`` Euler steps.

    ``cfg`` 1 runs one pass per step (a few-step student, which is also told its step size).
    """
    latent_rate = 44100 / 1024
    audio_len = int(round(seconds * latent_rate))
    clip_len, sync_len, text_len = int(seconds * 8), int(seconds * 24), 77
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    conds = dict(
        seconds_start=torch.zeros(1), seconds_total=torch.full((1,), seconds),
        clip=torch.randn(1, clip_len, model.clip_dim, generator=g).to(dtype),
        sync=torch.randn(1, sync_len, model.sync_dim, generator=g).to(dtype),
        text=torch.randn(1, text_len, model.text_dim, generator=g).to(dtype))
    conds = {k: v.to(device) for k, v in conds.items()}
    drop = {f"drop_{m}": torch.ones(1, dtype=torch.bool, device=device) for m in ("clip", "sync", "text")}
    fm = FlowMatching()
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + (device.type == "cuda")):  # one warm-up on GPUs
            synchronize(device)
            start = time.perf_counter()
            cond = model.prepare_conditions(audio_len, **conds)
            noise = torch.randn(1, audio_len, model.latent_dim, generator=g).to(device)
            step = {"step_size": 1.0 / steps} if model.distilled_steps else {}
            if cfg == 1.0:
                velocity = model.velocity_fn(cond, **step)
            else:
                velocity = model.guided_velocity_fn(cond, model.prepare_conditions(audio_len, **conds, **drop), cfg, **step)
            out = fm.sample(velocity, noise, steps=steps, method="euler")
            synchronize(device)
            best = min(best, time.perf_counter() - start)
            if not torch.isfinite(out).all():
                raise RuntimeError("generation produced non-finite values")
    return best


def train_samples_per_second(model: MMDiT, batch: int, seconds: float, repeats: int,
                             device: torch.device) -> float:
    """Samples/s of a full training step (loss, backward, clip, AdamW)."""
    latent_rate = 44100 / 1024
    audio_len = int(round(seconds * latent_rate))
    g = torch.Generator().manual_seed(0)
    conds = dict(
        seconds_start=torch.zeros(batch), seconds_total=torch.full((batch,), seconds),
        clip=torch.randn(batch, int(seconds * 8), model.clip_dim, generator=g),
        sync=torch.randn(batch, int(seconds * 24), model.sync_dim, generator=g),
        text=torch.randn(batch, 77, model.text_dim, generator=g),
        drop_clip=torch.rand(batch, generator=g) < 0.1, drop_sync=torch.rand(batch, generator=g) < 0.1,
        drop_text=torch.rand(batch, generator=g) < 0.1)
    conds = {k: v.to(device) for k, v in conds.items()}
    x1 = torch.randn(batch, audio_len, model.latent_dim, generator=g).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-6)
    fm = FlowMatching()
    cuda = device.type == "cuda"
    model.train()
    best = float("inf")
    for step in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        # On the GPU the forward/backward run with host-sync detection on: the network
        # must queue all its work without waiting for the device.
        if cuda and step == 1:
            torch.cuda.set_sync_debug_mode("error")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = fm.loss(lambda x, t: model(x, t, **conds), x1)
        loss.backward()
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step:
            best = min(best, time.perf_counter() - start)
    model.eval()
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=4, help="0 skips the training benchmark")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time generation through MMDiT.compile_inference (torch.compile, frozen weights)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating compiled/eager rounds with --compile")
    parser.add_argument("--fewstep", type=int, default=0,
                        help="also time a few-step student (distilled_steps) for this many steps without CFG")
    parser.add_argument("--matmul-attention", action="store_true",
                        help="what-if: run attention as two matmuls with scores in the weights' dtype instead of "
                             "SDPA (faster in bf16 on CPU, about twice the attention error; bench_attention.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matmul_attention:
        use_matmul_attention()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")

    torch.manual_seed(0)
    model = MMDiT(**SMALL).eval()
    with torch.no_grad():  # random weights with realistic magnitudes (not the zero init)
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters())
    audio_len = int(round(args.seconds * 44100 / 1024))
    step_flops = flops_per_pass(model, 2, audio_len, int(args.seconds * 8), 77)
    print(f"small MMDiT: {params / 1e6:.1f} M parameters; {audio_len} latent frames; "
          f"{step_flops / 1e9:.1f} GFLOP per guided step (cond + uncond batched)")

    mlp_hidden = model.audio_blocks[0].audio.mlp.fc1.out_features
    student = None
    if args.fewstep:
        # The same network as a few-step student (a step-size embedding more); untrained weights
        # time the same as trained ones.
        student = MMDiT(**SMALL, distilled_steps=[1, 2, 4]).eval()
        student.load_state_dict(model.state_dict(), strict=False)
        student = student.to(device)
    for name in args.dtypes:
        dtype = getattr(torch, name)
        model = model.to(dtype)
        rate = matmul_rate(dtype, device)
        # The rate the DiT's own largest matmuls reach (MLP fc1: both CFG branches' audio tokens).
        dit_rate = linear_rate(dtype, device, 2 * audio_len, model.hidden_dim, mlp_hidden)
        elapsed = generation_seconds(model, args.steps, args.seconds, args.repeats, device)
        achieved = step_flops * args.steps / elapsed / 1e9
        print(f"[generate {name}] matmul {rate:.0f} GFLOP/s, linear {2 * audio_len}x{model.hidden_dim} @ "
              f"{model.hidden_dim}x{mlp_hidden} {dit_rate:.0f} GFLOP/s | {args.seconds:g} s clip, {args.steps} Euler "
              f"steps + CFG: {elapsed:.2f} s ({achieved:.0f} GFLOP/s = {achieved / dit_rate:.0%} of the linear rate, "
              f"{achieved / rate:.0%} of the square matmul rate)", flush=True)
        if args.compile:
            model.compile_inference()
            started = time.perf_counter()
            generation_seconds(model, 1, args.seconds, 1, device)  # compiles (one shape)
            compile_seconds = time.perf_counter() - started
            # A shared machine's speed drifts within minutes: alternate compiled, eager and the linear
            # rate, and compare medians.
            rounds: dict[str, list[float]] = {"compiled": [], "eager": [], "linear": []}
            for _ in range(args.rounds):
                model.compile_inference(True, recompile=False)
                rounds["compiled"].append(generation_seconds(model, args.steps, args.seconds, 1, device))
                model.compile_inference(False)
                rounds["eager"].append(generation_seconds(model, args.steps, args.seconds, 1, device))
                rounds["linear"].append(linear_rate(dtype, device, 2 * audio_len, model.hidden_dim, mlp_hidden))
            compiled, eager, dit_rate = (statistics.median(rounds[k]) for k in ("compiled", "eager", "linear"))
            achieved, achieved_eager = (step_flops * args.steps / s / 1e9 for s in (compiled, eager))
            print(f"[compiled {name}] medians of {args.rounds} alternating rounds: linear {dit_rate:.0f} GFLOP/s | "
                  f"{args.steps} Euler steps + CFG: compiled {compiled:.2f} s ({achieved:.0f} GFLOP/s = "
                  f"{achieved / dit_rate:.0%} of the linear rate), eager {eager:.2f} s ({achieved_eager / dit_rate:.0%}): "
                  f"{eager / compiled:.2f}x; compilation {compile_seconds:.0f} s", flush=True)
        if student is not None:
            student = student.to(dtype)
            if args.compile:
                student.compile_inference()
                generation_seconds(student, 1, args.seconds, 1, device, cfg=1.0)  # compiles
            steps = args.fewstep
            pass_flops = flops_per_pass(student, 1, audio_len, int(args.seconds * 8), 77)
            one_rate = linear_rate(dtype, device, audio_len, model.hidden_dim, mlp_hidden)
            elapsed = generation_seconds(student, steps, args.seconds, args.repeats, device, cfg=1.0)
            achieved = pass_flops * steps / elapsed / 1e9
            print(f"[few-step {name}] linear {audio_len}x{model.hidden_dim} @ {model.hidden_dim}x{mlp_hidden} "
                  f"{one_rate:.0f} GFLOP/s | {args.seconds:g} s clip, {steps} student steps, no CFG pass: "
                  f"{elapsed:.3f} s ({achieved:.0f} GFLOP/s = {achieved / one_rate:.0%} of the linear rate)", flush=True)
    model = model.float()
    if args.train_batch:
        rate = matmul_rate(torch.bfloat16 if device.type == "cuda" else torch.float32, device)
        sps = train_samples_per_second(model, args.train_batch, args.seconds, args.repeats, device)
        train_flops = 3 * flops_per_pass(model, 1, audio_len, int(args.seconds * 8), 77)
        mode = "bf16 autocast" if device.type == "cuda" else "fp32"
        print(f"[train {mode}] matmul {rate:.0f} GFLOP/s | batch {args.train_batch} x {args.seconds:g} s: "
              f"{sps:.2f} samples/s ({sps * train_flops / 1e9:.0f} GFLOP/s = "
              f"{sps * train_flops / 1e9 / rate:.0%} of matmul rate)")


if __name__ == "__main__":
    main()
