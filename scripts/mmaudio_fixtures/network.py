"""Records reference outputs of MMAudio's generator network at a tiny size, for foley's tests.

Runs MMAudio's own code (not part of foley; pass the path of a checkout of
github.com/hkchengrex/MMAudio) outside the repository and writes only derived data:
random weights in MMAudio's key layout, inputs and the reference's outputs.

    PYTHONPATH=/path/to/MMAudio python scripts/mmaudio_fixtures/network.py --out tests/fixtures/mmaudio

Needs ``einops`` and ``torchdiffeq`` (imported by MMAudio's modules).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from helpers.reference_weights import uniform_weights  # noqa: E402

# Tiny dimensions with the structure of the released 44.1 kHz networks: 2 joint + 2 fused blocks,
# 2 heads of 32, 0.5 s of audio (22 latents), 4 CLIP frames, 2 Synchformer segments, 5 text tokens.
TINY = dict(latent_dim=8, clip_dim=24, sync_dim=16, text_dim=20, hidden_dim=64, depth=4, fused_depth=2,
            num_heads=2, latent_seq_len=22, clip_seq_len=4, sync_seq_len=16, text_seq_len=5)
STEPS, CFG = 25, 4.5


def record(v2: bool, out: Path) -> None:
    from mmaudio.model.flow_matching import FlowMatching
    from mmaudio.model.networks import MMAudio

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1234 + v2)
    network = MMAudio(**TINY, v2=v2).eval()
    shapes = {k: list(v.shape) for k, v in network.state_dict().items()}
    seed = 77 + v2
    network.load_state_dict(uniform_weights(shapes, seed))
    batch = 2
    inputs = {
        "latent": torch.randn(batch, TINY["latent_seq_len"], TINY["latent_dim"], generator=generator),
        "clip_f": torch.randn(batch, TINY["clip_seq_len"], TINY["clip_dim"], generator=generator),
        "sync_f": torch.randn(batch, TINY["sync_seq_len"], TINY["sync_dim"], generator=generator),
        "text_f": torch.randn(batch, TINY["text_seq_len"], TINY["text_dim"], generator=generator),
        "negative_text_f": torch.randn(1, TINY["text_seq_len"], TINY["text_dim"], generator=generator),
        "t": torch.tensor([0.3, 0.85]),
        "noise": torch.randn(batch, TINY["latent_seq_len"], TINY["latent_dim"], generator=generator),
    }
    outputs = {}
    with torch.no_grad():
        outputs["velocity"] = network(inputs["latent"], inputs["clip_f"], inputs["sync_f"], inputs["text_f"],
                                      inputs["t"])
        empty = network.get_empty_conditions(batch)
        outputs["velocity_empty"] = network.predict_flow(inputs["latent"], inputs["t"], empty)
        conditions = network.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
        fm = FlowMatching(min_sigma=0, inference_mode="euler", num_steps=STEPS)
        for key, negative in (("generated", None), ("generated_negative", inputs["negative_text_f"])):
            empty = network.get_empty_conditions(batch, negative_text_features=negative)
            x1 = fm.to_data(lambda t, x: network.ode_wrapper(t, x, conditions, empty, CFG), inputs["noise"].clone())
            outputs[key] = network.unnormalize(x1)
    name = "network_v2" if v2 else "network_v1"
    # The weights are not stored: tests rebuild them with uniform_weights(shapes, seed).
    save_file({**{f"input.{k}": v.contiguous() for k, v in inputs.items()},
               **{f"output.{k}": v.contiguous() for k, v in outputs.items()}},
              str(out / f"{name}.safetensors"),
              metadata={"config": json.dumps({**TINY, "v2": v2}), "steps": str(STEPS), "cfg": str(CFG),
                        "weight_shapes": json.dumps(shapes), "weight_seed": str(seed)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for v2 in (False, True):
        record(v2, args.out)


if __name__ == "__main__":
    main()
