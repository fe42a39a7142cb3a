"""Records reference outputs of MMAudio's 44.1 kHz Mel-VAE and mel front end at a tiny size, for foley's tests.

Runs MMAudio's own code (not part of foley; pass the path of a checkout of
github.com/hkchengrex/MMAudio on PYTHONPATH) outside the repository and writes only derived
data: random raw weights in the layout of ``v1-44.pth`` (before ``remove_weight_norm``), a
waveform, and the reference's outputs in float32 and, for the VAE, in float64 (the float32
converted weights run in float64, the exact function the float32 runs approximate).

    PYTHONPATH=/path/to/MMAudio python scripts/mmaudio_fixtures/vae.py --out tests/fixtures/mmaudio
    PYTHONPATH=/path/to/MMAudio python scripts/mmaudio_fixtures/vae.py --full-size   # measure only

``--full-size`` builds the released size (305 M parameters) with random weights, runs MMAudio and
foley on one second of audio and prints the errors; it writes nothing. Needs ``einops`` and
``librosa`` (imported by MMAudio's modules).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

# Tiny sizes with the structure of the released VAE (widths 6/12/24, 8 latent channels; MMAudio's
# VAE class only knows 128 (44.1 kHz) and 80 mel bins). 12288 samples: 24 mel frames, 12 latents.
TINY = dict(data_dim=128, embed_dim=8, hidden_dim=6)
FULL = dict(data_dim=128, embed_dim=40, hidden_dim=512)
BATCH, SAMPLES = 2, 12288
SR = 44100


def waveform(samples: int, generator: torch.Generator) -> Tensor:
    """Row 0: two tones and noise peaking above 1 (the front end clamps); row 1: noise with a silent stretch."""
    t = torch.arange(samples, dtype=torch.float64) / SR
    loud = 0.7 * torch.sin(2 * math.pi * 440 * t) + 0.4 * torch.sin(2 * math.pi * 3150 * t + 1.0)
    loud = loud + 0.25 * torch.randn(samples, generator=generator, dtype=torch.float64)
    quiet = 0.3 * torch.randn(samples, generator=generator, dtype=torch.float64)
    quiet[samples // 3 : 2 * samples // 3] = 0.0  # whole mel frames of exact silence
    return torch.stack([loud, quiet]).float()


def raw_weights(vae: torch.nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """Random raw state dict: Gaussian conv weights (MMAudio's initialisation), non-zero output gains
    and perturbed mel statistics (so a test fails if any is not read from the file)."""
    state = {}
    for key, value in vae.state_dict().items():
        if key.endswith("learnable_gain"):
            state[key] = 0.5 * torch.randn((), generator=generator)
        elif key == "data_mean":
            state[key] = value + 0.5 * torch.randn(value.shape, generator=generator)
        elif key == "data_std":
            state[key] = value * torch.exp(0.2 * torch.randn(value.shape, generator=generator))
        else:
            state[key] = torch.randn(value.shape, generator=generator)
    return state


@contextmanager
def float64_norms() -> Iterator[None]:
    """MMAudio computes activation norms in float32 whatever the input dtype; for the float64 runs
    the norm is taken in the input's dtype (the same formula)."""
    import mmaudio.ext.autoencoder.vae_modules as modules

    original = modules.normalize

    def normalize(x: Tensor, dim=None, eps: float = 1e-4) -> Tensor:
        dim = list(range(1, x.ndim)) if dim is None else dim
        norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
        return x / torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))

    modules.normalize = normalize
    try:
        yield
    finally:
        modules.normalize = original


@torch.no_grad()
def reference_outputs(vae: torch.nn.Module, wave: Tensor) -> dict[str, Tensor]:
    """MMAudio's front end, normalised mel, posterior and decoded mel (float32), and the VAE in float64."""
    from mmaudio.ext.mel_converter import get_mel_converter

    mel = get_mel_converter("44k")(wave)
    posterior = vae.encode(mel)
    outputs = {
        "mel": mel,
        "mel_normalized": vae.normalize(mel),
        "mean": posterior.mean,
        "logvar": posterior.logvar,
        "decoded": vae.decode(posterior.mean),
    }
    vae64 = copy.deepcopy(vae).double()
    with float64_norms():
        posterior64 = vae64.encode(mel.double())
        outputs |= {
            "mean_f64": posterior64.mean,
            "logvar_f64": posterior64.logvar,
            "decoded_f64": vae64.decode(posterior.mean.double()),
        }
    return outputs


def record(out: Path) -> None:
    from mmaudio.ext.autoencoder.vae import VAE

    generator = torch.Generator().manual_seed(4401)
    vae = VAE(**TINY).eval()
    raw = raw_weights(vae, generator)
    vae.load_state_dict(raw, strict=True)
    vae.remove_weight_norm()
    wave = waveform(SAMPLES, generator)
    outputs = reference_outputs(vae, wave)
    config = {"n_mels": TINY["data_dim"], "latent_channels": TINY["embed_dim"], "hidden_channels": TINY["hidden_dim"]}
    metadata = {"foley_config": json.dumps(config), "mmaudio_config": json.dumps(TINY)}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in raw.items()}, str(out / "vae_weights.safetensors"), metadata=metadata)
    tensors = {"input.waveform": wave, **{f"output.{k}": v.contiguous() for k, v in outputs.items()}}
    save_file(tensors, str(out / "vae_io.safetensors"), metadata=metadata)
    for name in ("vae_weights", "vae_io"):
        print(f"{out / name}.safetensors: {(out / f'{name}.safetensors').stat().st_size / 1024:.0f} KB")


def _relative(value: Tensor, truth: Tensor) -> float:
    """Largest error over the largest magnitude of the exact output."""
    return float((value.double() - truth.double()).abs().max() / truth.double().abs().max())


@torch.no_grad()
def measure_full_size(seconds: float) -> None:
    from mmaudio.ext.autoencoder.vae import VAE
    from mmaudio.ext.mel_converter import get_mel_converter

    from foley.convert.mmaudio_vae import convert_vae_state_dict, mel_front_end
    from foley.models.mel_vae_mp import MagnitudePreservingMelVAE

    generator = torch.Generator().manual_seed(4402)
    vae = VAE(**FULL).eval()
    raw = raw_weights(vae, generator)
    vae.load_state_dict(raw, strict=True)
    ours = MagnitudePreservingMelVAE().eval()
    ours.load_state_dict(convert_vae_state_dict(raw), strict=True)
    del raw
    vae.remove_weight_norm()
    samples = round(seconds * SR) // 1024 * 1024
    wave = waveform(samples, generator)
    start = time.perf_counter()
    ref = reference_outputs(vae, wave)
    del vae
    reference_time = time.perf_counter() - start
    start = time.perf_counter()
    mel = mel_front_end()(wave)
    mean, logvar = ours.encode(ref["mel"])
    decoded = ours.decode(ref["mean"])
    foley_time = time.perf_counter() - start
    mel_f64 = get_mel_converter("44k").double()(wave.double())
    print(f"full size, {samples} samples, reference {reference_time:.1f} s (with its float64 run), foley {foley_time:.1f} s")
    rows = [("mel front end", mel, ref["mel"], mel_f64), ("encoder mean", mean, ref["mean"], ref["mean_f64"]),
            ("encoder logvar", logvar, ref["logvar"], ref["logvar_f64"]),
            ("decoded mel", decoded, ref["decoded"], ref["decoded_f64"])]
    for name, value, ref32, ref64 in rows:
        print(f"{name:15s} max|foley-ref32|/max|ref| {_relative(value, ref32):.2e}   "
              f"foley vs float64 {_relative(value, ref64):.2e}   MMAudio float32 vs float64 {_relative(ref32, ref64):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for vae_weights.safetensors and vae_io.safetensors")
    parser.add_argument("--full-size", action="store_true", help="measure at the released size instead")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio length of the --full-size run")
    args = parser.parse_args()
    if args.full_size:
        measure_full_size(args.seconds)
    elif args.out is None:
        parser.error("pass --out (or --full-size)")
    else:
        record(args.out)


if __name__ == "__main__":
    main()
