"""Stage-3 benchmark: does Mono2Stereo put sounds where their sources are on screen?

Synthesises a training and a held-out set of the synthetic world (true equal-power
panning by on-screen x position), trains a Mono2Stereo on the mono mixdowns for
``--steps`` optimiser steps (the decoded training clips are cached in memory), then renders stereo from the held-out mono mixdowns and prints the
Pearson correlation between predicted and true inter-channel level difference over time
(``foley.metrics.synthetic.pan_correlation``), per category and overall, next to the
centred baseline (an untrained network: no ILD, correlation undefined, counted as 0).
Clips whose true ILD never changes (a single static source) are left out: a correlation
over time is undefined for them.

Evaluate a trained stage-3 checkpoint instead with ``--stereo-ckpt`` and ``--codec-ckpt``.

    python benchmarks/bench_stereo.py --steps 300 --train-clips 64 --val-clips 24
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from foley.data_modules import FoleyDataModule
from foley.metrics.synthetic import pan_correlation
from foley.models.mono2stereo import Mono2Stereo
from foley.stages.stereo_module import StereoModule
from foley.synth.world import synth

CATEGORIES = ["bouncing_ball", "drum", "lamp", "vehicle"]  # sources with an on-screen position


def untrained_codec():
    """Random tiny codec: with render="stft" only its (fixed) mel front end matters."""
    from foley.models.bigvgan import BigVGAN
    from foley.models.codec import Codec
    from foley.models.mel import LogMelSpectrogram
    from foley.models.mel_vae import MelVAE

    vae = MelVAE(n_mels=128, latent_channels=40, hidden_channels=16, encoder_layers=2, decoder_layers=2)
    vocoder = BigVGAN(num_mels=128, upsample_rates=(8, 8, 8), upsample_kernel_sizes=(16, 16, 16),
                      upsample_initial_channel=16, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    return Codec(vae, vocoder, LogMelSpectrogram(n_mels=128))


def evaluate(module: StereoModule, loader) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = defaultdict(list)
    module.eval()
    for batch in loader:
        stereo = module.generate(batch).cpu()
        for i, meta in enumerate(batch["meta"]):
            n = int(batch["audio_mask"][i].sum())
            truth = batch["audio"][i, :, :n]
            if math.isnan(pan_correlation(truth, truth, module.sample_rate)[0]):
                continue  # the true ILD never changes (one static source): correlation over time is undefined
            corr, _ = pan_correlation(stereo[i, :, :n], truth, module.sample_rate)
            value = 0.0 if math.isnan(corr) else corr  # a constant (centred) prediction counts as 0
            scores[meta.get("category", "?")].append(value)
            scores["overall"].append(value)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_stereo"))
    parser.add_argument("--train-clips", type=int, default=64)
    parser.add_argument("--val-clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--render", choices=["vocoder", "stft"], default="stft")
    parser.add_argument("--stereo-ckpt", type=str, default=None)
    parser.add_argument("--codec-ckpt", type=str, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    train_dir, val_dir = args.work / "train", args.work / "val"
    if not (train_dir / "index.json").exists():
        synth(train_dir, clips=args.train_clips, seconds=args.seconds, seed=1, size=64, categories=CATEGORIES, overwrite=True)
    if not (val_dir / "index.json").exists():
        synth(val_dir, clips=args.val_clips, seconds=args.seconds, seed=2, size=64, categories=CATEGORIES, overwrite=True)
    data = FoleyDataModule(
        train_shards=str(train_dir), val_shards=str(val_dir), clip_seconds=args.seconds, clip_size=32, sync_size=32,
        batch_size=args.batch_size, num_workers=0,
    )
    if args.stereo_ckpt:
        from foley.models.codec import Codec

        codec = Codec.from_checkpoint(args.codec_ckpt) if args.codec_ckpt else untrained_codec()
        module = StereoModule.from_checkpoint(args.stereo_ckpt, codec=codec)
        module.render = args.render
        trained_seconds = 0.0
    else:
        network = Mono2Stereo(n_mels=128, hidden=64, layers=4, video_channels=16, video_size=32, video_columns=8)
        module = StereoModule(network, codec=untrained_codec(), render=args.render, num_examples=0,
                              optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3))
    data.setup("validate")
    baseline = evaluate(StereoModule(Mono2Stereo(n_mels=128, hidden=8, layers=1), codec=module.codec, render=args.render), data.val_dataloader())
    if not args.stereo_ckpt:
        # Decode the training set once and cycle over it in memory: the benchmark measures how fast the
        # network learns to pan, not video decoding.
        data.setup("fit")
        cached = list(data.train_dataloader())
        start = time.perf_counter()
        optimizer = module.configure_optimizers()
        module.train()
        for step in range(args.steps):
            loss, _ = module._pan_loss(cached[step % len(cached)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 50 == 0:
                print(f"step {step}: pan loss {loss.item():.4f}", file=sys.stderr)
        trained_seconds = time.perf_counter() - start
    scores = evaluate(module, data.val_dataloader())
    result = {
        "steps": args.steps, "train_seconds": round(trained_seconds, 1), "render": args.render,
        "pan_correlation": {k: round(statistics.mean(v), 3) for k, v in sorted(scores.items())},
        "centred_baseline": {k: round(statistics.mean(v), 3) for k, v in sorted(baseline.items())},
        "clips": {k: len(v) for k, v in sorted(scores.items())},
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
