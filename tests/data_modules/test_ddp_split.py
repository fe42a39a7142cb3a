"""Two-process DDP (CPU, gloo): every rank reads different samples; validation sees each sample once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import clips

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import lightning as L
    from foley.data_modules import FoleyDataModule

    shards, out = sys.argv[1], sys.argv[2]

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.train_keys, self.val_keys = [], []

        def training_step(self, batch, index):
            self.train_keys += batch["key"]
            return (self.weight - batch["audio"].mean()) ** 2

        def validation_step(self, batch, index):
            self.val_keys += batch["key"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = FoleyDataModule(train_shards=shards, val_shards=shards, clip_seconds=0.5, load_video=False,
                         batch_size=1, num_workers=2, samples_per_epoch=4, seed=0)
    model = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as handle:
        json.dump({"train": model.train_keys, "val": model.val_keys}, handle)
    """
)


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_samples(tmp_path):
    shards = tmp_path / "shards"
    clips.write_shards(shards, [clips.make_clip(1.0, 25, key=f"k{i}") for i in range(6)], shard_size=3)
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(script), str(shards), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 2 ranks x 2 workers = 4 readers > 2 shards: sample-level split; 4 samples per epoch = 2 per rank
    # (equal step counts, so DDP gradient all-reduce cannot hang).
    assert [len(r["train"]) for r in ranks] == [2, 2]
    assert sorted(ranks[0]["val"] + ranks[1]["val"]) == [f"k{i}" for i in range(6)]
    assert not set(ranks[0]["val"]) & set(ranks[1]["val"])
    assert len(set(ranks[0]["train"] + ranks[1]["train"])) == 4  # no sample read by two readers
