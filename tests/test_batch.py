"""foley.batch.collate_examples: the one constructor of the stage batch (docs/architecture.md §2)."""
from __future__ import annotations

import pytest
import torch

from foley.batch import collate_examples


def _example(key: str, frames: int, **fields) -> dict:
    return {"caption": f"c-{key}", "seconds_start": 0.25, "seconds_total": 0.5, "key": key, "meta": {"key": key},
            "sync_frames": torch.full((frames, 3, 4, 4), 7, dtype=torch.uint8), **fields}


def test_training_examples_pad_audio_and_frames_to_the_longest() -> None:
    short, long = torch.ones(2, 3), torch.arange(10.0).view(2, 5)
    batch = collate_examples([_example("a", 2, audio=short), _example("b", 4, audio=long)])
    assert batch["audio"].shape == (2, 2, 5) and torch.equal(batch["audio"][0, :, 3:], torch.zeros(2, 2))
    torch.testing.assert_close(batch["audio_mono"], batch["audio"].mean(dim=1), rtol=0, atol=0)
    assert batch["audio_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["sync_frames"].shape == (2, 4, 3, 4, 4) and batch["sync_frames"].dtype == torch.uint8
    assert batch["sync_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert "clip_frames" not in batch and "clip_mask" not in batch
    assert batch["seconds_start"].dtype == batch["seconds_total"].dtype == torch.float32
    assert batch["caption"] == ["c-a", "c-b"] and batch["key"] == ["a", "b"] and batch["meta"][1] == {"key": "b"}


def test_generation_examples_give_the_length_as_audio_mask_without_a_target() -> None:
    batch = collate_examples([_example("a", 3, num_samples=6), _example("b", 3, num_samples=4)])
    assert "audio" not in batch and "audio_mono" not in batch and "num_samples" not in batch
    assert batch["audio_mask"].tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    assert batch["sync_mask"].all()


def test_precomputed_members_pass_through_padded_and_must_be_in_every_example() -> None:
    batch = collate_examples([_example("a", 1, num_samples=2, latent=torch.ones(2, 3)),
                              _example("b", 1, num_samples=2, latent=torch.ones(4, 3))])
    assert batch["latent"].shape == (2, 4, 3) and batch["latent"][0, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="'latent' is missing"):
        collate_examples([_example("a", 1, num_samples=2, latent=torch.ones(2, 3)), _example("b", 1, num_samples=2)])
