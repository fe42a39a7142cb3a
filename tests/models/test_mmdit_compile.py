"""MMDiT.compile_inference: torch.compile with frozen weights computes the eager network's velocity.

Needs a C++ compiler (inductor's CPU backend); .ci/run installs g++ when it is missing.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from foley.models.mmdit import MMDiT

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler (apt-get install g++)")

# Inductor fuses and reorders the float32 reductions (matmul blocking, norms, softmax): each
# dot product of K <= 128 terms may round differently, |error| <= K eps |a| |b| per product,
# compounded over the network's ~12 matrix products. 1e-4 relative (~1700 eps) covers that with a
# wide margin; measured on this machine (AVX-512): 2.7e-7.
RTOL = 1e-4


def _network() -> MMDiT:
    torch.manual_seed(0)
    network = MMDiT(latent_dim=4, hidden_dim=32, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=8, sync_dim=8,
                    text_dim=8, max_text_tokens=4).eval()
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return network


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_compiled_velocity_equals_eager_and_follows_weight_changes() -> None:
    network = _network()
    conditions = dict(seconds_start=torch.zeros(2), seconds_total=torch.full((2,), 0.3),
                      clip=torch.randn(2, 2, 8), sync=torch.randn(2, 5, 8), text=torch.randn(2, 3, 8))
    x, t = torch.randn(2, 13, 4), torch.tensor([0.1, 0.7])
    drop = {f"drop_{m}": torch.ones(2, dtype=torch.bool) for m in ("clip", "sync", "text")}
    with torch.no_grad():
        cond = network.prepare_conditions(13, **conditions)
        uncond = network.prepare_conditions(13, **conditions, **drop)
        eager = network.velocity_fn(cond)(x, t)
        eager_guided = network.guided_velocity_fn(cond, uncond, 3.0)(x, t)
        network.compile_inference()
        compiled = network.velocity_fn(cond)(x, t)
        compiled_guided = network.guided_velocity_fn(cond, uncond, 3.0)(x, t)
        assert _relative(compiled, eager) < RTOL and _relative(compiled_guided, eager_guided) < RTOL
        # A weight changed in place (as load_state_dict or an adapter merge does) is noticed.
        network.final_out.weight.mul_(-2.0)
        changed_eager = network.forward_cached(x, t, cond)
        assert _relative(changed_eager, eager) > 0.5
        assert _relative(network.velocity_fn(cond)(x, t), changed_eager) < RTOL
    # Training, or gradients on: the eager network (compiled graphs hold frozen weights).
    with torch.enable_grad():
        assert network._inference_forward() == network.forward_cached
