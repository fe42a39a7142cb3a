"""Platform-independent random weights for reference-equivalence fixtures.

The fixtures under tests/fixtures/mmaudio/ store a reference implementation's inputs and
outputs but not its weights: both the fixture script (run once, outside the repo, with the
reference code) and the tests rebuild the weights from the key/shape list and a seed.
Values are integers from NumPy's PCG64 divided by a power of two (exact in float32) times
a correctly rounded square root, so every x86-64 machine gets the same bits; torch's
vectorised ``randn`` and libm's transcendental functions make no such promise.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["uniform_weights"]

_RESOLUTION = 2 ** 20


def uniform_weights(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, torch.Tensor]:
    """Uniform weights with variance ``1 / fan_in`` (matrices) or ``0.09`` (vectors) in key order.

    Keys ending in ``latent_std`` get values in [0.5, 1.5) and keys containing ``norm`` are
    centred on one, so normalisation statistics and gains stay positive.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        unit = rng.integers(-_RESOLUTION, _RESOLUTION, size=shape, dtype=np.int64).astype(np.float64) / _RESOLUTION
        if key.endswith("latent_std"):
            values = 1.0 + 0.5 * unit
        elif len(shape) >= 2:
            values = unit * math.sqrt(3.0 / math.prod(shape[1:]))
        else:
            values = unit * math.sqrt(3.0) * 0.3 + (1.0 if "norm" in key else 0.0)
        weights[key] = torch.from_numpy(values.astype(np.float32))
    return weights
