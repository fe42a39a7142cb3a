"""CPU attention kernels at the MM-DiT's shapes: speed and error (issue 14, part 2).

Attention is the part of the small MM-DiT's step that stays far below the bf16 matmul rate
(docs/benchmarks.md). This script times the candidates at the network's own shapes, both CFG
branches batched, and gives each one's error against a float64 reference on the same bf16
inputs' full-precision originals:

- ``sdpa``: ``F.scaled_dot_product_attention`` (what foley uses; PyTorch's flash kernel on CPU);
- ``flex``: ``torch.compile(flex_attention)``, inductor's C++ template (fp32 scores inside);
- ``matmul``: two batched matmuls and a softmax in the inputs' dtype. In bf16 its scores are
  rounded to bf16 before the softmax, so its error grows with the logits' size.

    .venv/bin/python benchmarks/bench_attention.py --threads 2
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Softmax attention as two matmuls; scores and probabilities in the inputs' dtype.

    ``key_mask`` (B, N) bool is True on the keys to attend to (SDPA's boolean mask semantics).
    """
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def seconds_per_call(fn: AttentionFn, q: Tensor, k: Tensor, v: Tensor, calls: int) -> float:
    for _ in range(3):  # warm-up (and compilation for flex)
        fn(q, k, v)
    start = time.perf_counter()
    for _ in range(calls):
        fn(q, k, v)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[345, 486],
                        help="sequence lengths: 8 s of latents alone, and with the CLIP and text tokens")
    parser.add_argument("--heads", type=int, default=7)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2, help="2: both CFG branches")
    parser.add_argument("--logit_scale", type=float, default=2.0,
                        help="q and k are N(0, scale^2): the logits' spread, which sets the bf16 score error")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.nn.attention.flex_attention import flex_attention

    kernels: dict[str, AttentionFn] = {
        "sdpa": F.scaled_dot_product_attention,
        "matmul": matmul_attention,
        "flex": torch.compile(flex_attention),
    }
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; batch {args.batch} x {args.heads} heads "
          f"x {args.head_dim} channels, logit scale {args.logit_scale}")
    generator = torch.Generator().manual_seed(0)
    cases = []
    for tokens in args.tokens:
        shape = (args.batch, args.heads, tokens, args.head_dim)
        q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
        q, k = q * args.logit_scale, k * args.logit_scale
        reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        for dtype_name in args.dtypes:
            inputs = [t.to(getattr(torch, dtype_name)) for t in (q, k, v)]
            # The error the inputs' own rounding causes, which no kernel can remove.
            floor = F.scaled_dot_product_attention(*(t.double() for t in inputs))
            scale = reference.abs().max()
            cases.append((tokens, dtype_name, inputs, reference, scale))
            print(f"{tokens} tokens, {dtype_name}: input rounding alone {((floor - reference).abs().max() / scale):.2e}")
    # Kernel by kernel, flex last, so that its compilation does not run between the eager kernels'
    # timings (in one interleaved run, the eager bf16 matmuls at 345 tokens measured 40 % slower).
    for name, fn in kernels.items():
        for tokens, dtype_name, inputs, reference, scale in cases:
            flops = 4 * args.batch * args.heads * tokens * tokens * args.head_dim
            with torch.no_grad():
                seconds = seconds_per_call(fn, *inputs, calls=args.calls)
                error = (fn(*inputs).double() - reference).abs().max() / scale
            print(f"{name:7s} {tokens:5d} tokens {dtype_name:9s} {flops / seconds / 1e9:6.0f} GFLOP/s  "
                  f"{seconds * 1e3:6.2f} ms  max error {error:.2e} (relative to the largest output)")


if __name__ == "__main__":
    main()
