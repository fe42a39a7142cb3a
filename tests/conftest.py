"""Suite-wide test settings: offline hubs, small thread counts, shared synthetic data."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for modules of tiny convolutions: far faster on a shared, busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory) -> dict[str, str]:
    """Tiny synthetic-world shards shared by the whole suite: train and a held-out val split."""
    from foley.synth.world import synth

    root = tmp_path_factory.mktemp("synth")
    train = synth(out=root / "train", clips=6, seconds=2.0, seed=1, fps=25.0, size=64, shard_size=3)
    val = synth(out=root / "val", clips=2, seconds=2.0, seed=2, fps=25.0, size=64, shard_size=2)
    return {"train": str(train), "val": str(val)}
