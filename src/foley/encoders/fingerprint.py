"""Short fingerprints of module weights, to tell whether two frozen encoders are the same."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["weights_fingerprint"]


@torch.no_grad()
def weights_fingerprint(module: nn.Module, samples_per_tensor: int = 4096) -> str:
    """A 16-hex-digit digest of ``module``'s state dict: names, shapes, dtypes and up to
    ``samples_per_tensor`` evenly strided values of each tensor (as float32).

    Strided sampling keeps this to milliseconds for billion-parameter encoders while any
    re-initialisation or different checkpoint still changes the digest.
    """
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        step = max(1, flat.numel() // samples_per_tensor)
        digest.update(flat[::step].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
