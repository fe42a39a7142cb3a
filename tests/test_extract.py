from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from foley.extract import done_keys, extract

from helpers.stage2_parts import save_tiny_codec

CONFIG = "configs/tiny/stage2.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, synth_shards) -> dict:
    # Two 2 s clips; the tiny config extracts their first second.
    root = tmp_path_factory.mktemp("extract")
    return {"root": root, "codec": save_tiny_codec(root / "codec.pt"), "shards": synth_shards["val"]}


def run_extract(inputs: dict, out, **kwargs):
    settings = {"batch_size": 2, "num_workers": 0, "accelerator": "cpu", "devices": 1, "shard_size": 1, "dtype": "float32"}
    return extract(CONFIG, inputs["shards"], out, codec_checkpoint=inputs["codec"], **{**settings, **kwargs})


def feature_shard_keys(out) -> list[str]:
    keys = []
    for path in sorted(out.glob("features-*.tar")):
        with tarfile.open(path) as tar:
            keys += sorted({name.partition(".")[0] for name in tar.getnames()})
    return keys


@pytest.fixture(scope="module")
def extracted(inputs):
    from foley.cli import main

    # Through the command line once, as `foley extract --fit_config CONFIG --shards IN --out OUT ...`.
    out = inputs["root"] / "features"
    result = main(["extract", f"--fit_config={CONFIG}", f"--shards={inputs['shards']}", f"--out={out}",
                   f"--codec_checkpoint={inputs['codec']}",
                   "--batch_size=2", "--num_workers=0", "--accelerator=cpu", "--devices=1", "--shard_size=1",
                   "--dtype=float32"])
    assert result == out
    return out


def test_extract_round_trip_matches_online_features(inputs, extracted):
    from foley.cli import FoleyCLI
    from foley.data_modules import FoleyDataModule

    out = extracted
    index = json.loads((out / "index.json").read_text())
    assert index["total"] == 2 and sorted(feature_shard_keys(out)) == sorted(done_keys(out))

    cli = FoleyCLI(args=["--config", CONFIG, f"--model.init_args.codec_checkpoint={inputs['codec']}",
                         "--trainer.logger=false"], run=False)
    module = cli.model
    raw = FoleyDataModule(val_shards=inputs["shards"], clip_seconds=1.0, clip_size=32, sync_size=32,
                          batch_size=2, num_workers=0)
    features = FoleyDataModule(val_shards=str(out), clip_seconds=1.0, batch_size=2, num_workers=0, load_video=False)
    raw_batch = next(iter(raw.val_dataloader()))
    feature_batch = next(iter(features.val_dataloader()))
    order = [feature_batch["key"].index(k) for k in raw_batch["key"]]
    pick = lambda name: feature_batch[name][order]  # noqa: E731

    torch.testing.assert_close(pick("audio"), raw_batch["audio"], atol=1e-6, rtol=0)  # 24-bit FLAC
    latent, _ = module.encode_latents(raw_batch)
    torch.testing.assert_close(pick("latent").float(), latent, atol=1e-5, rtol=1e-5)
    assert pick("latent_std").min() > 0
    online = module.encode_conditions(raw_batch)
    for name in ("clip", "sync", "text"):
        torch.testing.assert_close(pick(f"{name}_features").float(), online[name], atol=1e-5, rtol=1e-5)
        assert torch.equal(pick(f"{name}_features_mask"), online[f"{name}_mask"])
    # The FlowModule takes the precomputed members instead of running the frozen models.
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    shuffled = {k: (v[order] if isinstance(v, torch.Tensor) else [v[i] for i in order] if isinstance(v, list) else v)
                for k, v in feature_batch.items()}
    torch.testing.assert_close(module.loss(shuffled, generator=generator()), module.loss(raw_batch, generator=generator()),
                               atol=1e-4, rtol=1e-4)


def test_training_on_features_from_other_encoder_weights_is_refused(inputs, extracted):
    from foley.cli import FoleyCLI
    from foley.data_modules import FoleyDataModule

    cli = FoleyCLI(args=["--config", CONFIG, f"--model.init_args.codec_checkpoint={inputs['codec']}",
                         "--trainer.logger=false"], run=False)
    module = cli.model
    batch = next(iter(FoleyDataModule(val_shards=str(extracted), clip_seconds=1.0, batch_size=2, num_workers=0,
                                      load_video=False).val_dataloader()))
    recorded = batch["meta"][0]["extracted"]["encoders"]
    assert recorded == module.encoder_fingerprints() and set(recorded) == {"codec", "clip", "sync", "text"}
    assert torch.isfinite(module.loss(batch))
    # Same architecture, other random initialisation (e.g. another seed): the features no longer match.
    other = FoleyCLI(args=["--config", CONFIG, f"--model.init_args.codec_checkpoint={inputs['codec']}",
                           "--trainer.logger=false", "--seed_everything=123"], run=False).model
    with pytest.raises(ValueError, match=r"sync.*extracted with different weights.*foley extract"):
        other.loss(batch)


def test_extract_resumes_and_overwrites(inputs, extracted):
    out = extracted
    first = sorted(feature_shard_keys(out))
    shard_files = sorted(out.glob("features-*.tar"))
    assert len(shard_files) == 2  # shard_size 1, 2 samples
    # Nothing left to do: no new shards.
    run_extract(inputs, out)
    assert sorted(out.glob("features-*.tar")) == shard_files
    # Lose one completed shard: only its samples are extracted again.
    shard_files[0].unlink()
    run_extract(inputs, out)
    assert sorted(feature_shard_keys(out)) == first
    assert json.loads((out / "index.json").read_text())["total"] == 2
    run_extract(inputs, out, overwrite=True)
    assert sorted(feature_shard_keys(out)) == first
    assert len(list(out.glob("features-*.tar"))) == 2


def feature_members(out) -> dict[str, bytes]:
    members = {}
    for path in sorted(out.glob("features-*.tar")):
        with tarfile.open(path) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".pth")})
    return members


def test_extract_reads_every_sample_and_its_frames_whatever_the_overrides_say(inputs, extracted):
    # A training overlay for feature shards sets load_video: false (configs/finetune/demo.yaml);
    # passed to extract as an override it once made extract write latents and text features only,
    # and stage 2 then trained without video conditions, silently. A validation cap
    # (max_val_samples, 64 in configs/finetune/lora.yaml) once cut extraction after N samples.
    out = inputs["root"] / "features_overlay"
    run_extract(inputs, out, overrides=["--data.init_args.load_video=false", "--data.init_args.max_val_samples=1"])
    assert json.loads((out / "index.json").read_text())["total"] == 2
    written, reference = feature_members(out), feature_members(extracted)
    names = {name.partition(".")[2] for name in written}
    assert {"clip_features.pth", "sync_features.pth", "clip_features_mask.pth", "sync_features_mask.pth"} <= names
    assert written == reference


@pytest.mark.slow
def test_extract_two_processes_split_the_samples(inputs):
    # Two CPU processes stand in for two GPUs: each rank writes its own shards and done-list,
    # rank 0 writes the index over both after the barrier. DDP relaunches the command line,
    # so this runs the real `foley extract` in a subprocess.
    import os
    import subprocess

    out = inputs["root"] / "ddp"
    config = Path(CONFIG).resolve()
    args = ["extract", f"--fit_config={config}", f"--shards={inputs['shards']}", f"--out={out}",
            f"--codec_checkpoint={inputs['codec']}", "--batch_size=1", "--num_workers=0", "--accelerator=cpu",
            "--devices=2", "--strategy=ddp", "--shard_size=1", "--dtype=float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "foley.cli", *args], cwd=inputs["root"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = {path.name.split("-")[1] for path in out.glob("features-*.tar")}
    assert ranks == {"r000", "r001"}
    assert sorted(feature_shard_keys(out)) == sorted(done_keys(out)) and len(done_keys(out)) == 2
    assert json.loads((out / "index.json").read_text())["total"] == 2
