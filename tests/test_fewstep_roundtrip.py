"""Few-step distillation end to end on a tiny model folder: fit -> export -> generate.

``foley fit --config configs/distill/fewstep.yaml`` distils a tiny real pipeline's generator
(the teacher, guided) into a step-conditioned student; ``foley export`` writes it into a copy
of the teacher's folder with the student's defaults; ``foley generate`` and ``from_pretrained``
then sample it with plain Euler steps of size 1/steps and no guidance pass.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foley.cli import main
from foley.pipeline import FoleyPipeline
from helpers.tiny_pipeline import tiny_real_pipeline

CONFIGS = ["--config", "configs/distill/fewstep.yaml", "--config", "configs/distill/demo.yaml"]
TINY = ["--data.init_args.clip_seconds=1.0", "--data.init_args.batch_size=2", "--data.init_args.shuffle_buffer=4",
        "--trainer.max_steps=3", "--model.init_args.warmup_steps=1", "--model.init_args.optimizer.init_args.lr=0.03",
        "--model.init_args.distillation.init_args.teacher_steps=8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from foley.synth.world import synth

    root = tmp_path_factory.mktemp("fewstep")
    teacher = tiny_real_pipeline(seed=0)
    teacher.set_generation_params(steps=8, cfg=2.0)
    model = teacher.save_pretrained(root / "teacher")
    shards = synth(root / "clips", clips=4, seconds=1.0, size=32, shard_size=4)
    return {"root": root, "teacher": model, "shards": shards}


@pytest.fixture(scope="module")
def fitted(world):
    run = world["root"] / "run"
    main(["fit", *CONFIGS, f"--model.init_args.init_from={world['teacher']}", *TINY,
          f"--data.init_args.train_shards={world['shards']}", "--data.init_args.load_video=true",
          f"--trainer.default_root_dir={run}"])
    checkpoint = str(sorted(run.rglob("last.ckpt"))[-1])
    return checkpoint, torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def student_dir(world, fitted):
    out = world["root"] / "student"
    main(["export", "--flow_ckpt", fitted[0], "--out", str(out)])
    return out


def test_checkpoint_holds_the_student_not_the_teacher(world, fitted) -> None:
    _, checkpoint = fitted
    state = checkpoint["state_dict"]
    assert checkpoint["global_step"] == 3
    assert not any(k.startswith("teacher.") for k in state)  # re-read from init_from
    step_embedding = state["network.step_embed.fc2.weight"]
    assert step_embedding.abs().max() > 0  # starts at zero: it trained
    assert checkpoint["hyper_parameters"]["distillation"]["init_args"]["student_steps"] == [1, 2, 4]
    teacher = FoleyPipeline.from_pretrained(world["teacher"]).flow.network.state_dict()
    moved = [k for k, v in teacher.items() if not torch.equal(state[f"network.{k}"], v)]
    assert moved  # the student's own weights train too, starting from the teacher's
    from foley.stages.distill_module import DistillModule

    module = DistillModule.load_from_checkpoint(fitted[0], map_location="cpu", weights_only=True)
    assert module.teacher_cfg == 2.0  # the teacher folder's guidance, distilled in
    assert all(torch.equal(v, teacher[k]) for k, v in module.teacher.state_dict().items())


def test_export_writes_the_teacher_folder_with_the_student(world, student_dir) -> None:
    index = json.loads((student_dir / "pipeline.json").read_text())
    assert index["generation"]["init_args"] == {"sampler": "euler", "steps": 4, "cfg": 1.0, "negative_prompt": None}
    generator = json.loads((student_dir / "generator.json").read_text())
    assert generator["init_args"]["distilled_steps"] == [1, 2, 4]
    for name in ("codec.safetensors", "stereo.safetensors"):  # everything but the generator is the teacher's
        assert (student_dir / name).read_bytes() == (world["teacher"] / name).read_bytes()
    pipe = FoleyPipeline.from_pretrained(student_dir)
    assert (pipe.generation.steps, pipe.generation.cfg, pipe.generation.sampler) == (4, 1.0, "euler")


def _frames() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 255, size=(25, 32, 32, 3), dtype=np.uint8))


def test_generation_takes_euler_steps_of_the_student_step_size(student_dir, caplog) -> None:
    from foley.io.decoded_frames import DecodedFrames

    pipe = FoleyPipeline.from_pretrained(student_dir)
    flow, network = pipe.flow, pipe.flow.network
    batch = pipe._window_batch(DecodedFrames(_frames(), 25.0), [0.0], 44100, None, "clip")
    for steps in (1, 2, 4):
        latents = flow.generate_latents(batch, steps=steps, seed=3)
        # By hand: the seeded noise, `steps` Euler steps of the conditional student told its step size.
        conditions = flow.encode_conditions(batch)
        length = latents.shape[1]
        mask = torch.ones(1, length, dtype=torch.bool)
        cache = network.prepare_conditions(length, seconds_start=batch["seconds_start"].float(),
                                           seconds_total=batch["seconds_total"].float(), audio_mask=mask,
                                           **conditions, **flow.drop_flags(conditions))
        x = torch.randn(1, length, flow.latent_channels, generator=torch.Generator().manual_seed(3))
        for i in range(steps):
            x = x + (1 / steps) * network.forward_cached(x, torch.full((1,), i / steps), cache, 1.0 / steps)
        torch.testing.assert_close(latents, x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="euler"):
        flow.generate_latents(batch, steps=2, method="heun")
    with caplog.at_level("WARNING", logger="foley.stages.flow_module"):
        flow.generate_latents(batch, steps=3, seed=0)
    assert "distilled for [1, 2, 4] steps" in caplog.text


def test_generate_command_uses_the_folder_defaults(world, student_dir, tmp_path) -> None:
    from foley.io.media import read_audio, write_video
    from foley.synth.world import render_clip

    clip = render_clip(0, 5, 1.0, 25.0, 32)
    write_video(tmp_path / "clip.mp4", clip.frames, fps=25.0)
    main(["generate", str(tmp_path / "clip.mp4"), "--model", str(student_dir), "--out", str(tmp_path / "fast"),
          "--device", "cpu"])
    fast, _ = read_audio(tmp_path / "fast" / "clip.wav")
    pipe = FoleyPipeline.from_pretrained(student_dir)
    np.testing.assert_allclose(fast, pipe(str(tmp_path / "clip.mp4"), steps=4, cfg=1.0, seed=0).numpy(), atol=2.0 ** -15)
    # The same command on the teacher's folder with --steps 4 samples the teacher (guided Euler).
    main(["generate", str(tmp_path / "clip.mp4"), "--model", str(world["teacher"]), "--out", str(tmp_path / "teacher"),
          "--steps", "4", "--device", "cpu"])
    teacher_audio, _ = read_audio(tmp_path / "teacher" / "clip.wav")
    teacher = FoleyPipeline.from_pretrained(world["teacher"])
    np.testing.assert_allclose(teacher_audio, teacher(str(tmp_path / "clip.mp4"), steps=4, cfg=2.0, seed=0).numpy(),
                               atol=2.0 ** -15)


def test_a_student_is_not_distilled_again(student_dir, world, tmp_path) -> None:
    with pytest.raises(ValueError, match="few-step student already"):
        main(["fit", *CONFIGS, f"--model.init_args.init_from={student_dir}", *TINY,
              f"--data.init_args.train_shards={world['shards']}", "--data.init_args.load_video=true",
              f"--trainer.default_root_dir={tmp_path / 'again'}"])


def test_generate_compile_flag_compiles_the_generator(student_dir, tmp_path, monkeypatch) -> None:
    """`foley generate --compile true` turns on MMDiT.compile_inference (its numerics are
    tests/models/test_mmdit_compile.py's; here the compilation itself is stubbed out)."""
    from foley.io.media import write_video
    from foley.models.mmdit import MMDiT
    from foley.synth.world import render_clip

    compiled = []
    monkeypatch.setattr(MMDiT, "compile_inference", lambda self, enabled=True, recompile=True: compiled.append(self))
    clip = render_clip(0, 5, 1.0, 25.0, 32)
    write_video(tmp_path / "clip.mp4", clip.frames, fps=25.0)
    main(["generate", str(tmp_path / "clip.mp4"), "--model", str(student_dir), "--out", str(tmp_path / "out"),
          "--device", "cpu", "--compile", "true"])
    assert len(compiled) == 1 and compiled[0].distilled_steps == [1, 2, 4]
    assert (tmp_path / "out" / "clip.wav").is_file()


def test_gradient_checkpointing_recomputes_the_students_blocks_to_the_same_gradients(fitted, monkeypatch) -> None:
    """``gradient_checkpointing: true`` (the GPU recipe's memory saver) changes memory, not the maths."""
    import foley.models.mmdit as mmdit_module
    from foley.data_modules import FoleyDataModule
    from foley.stages.distill_module import DistillModule

    path, checkpoint = fitted
    stream = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items()
              if k in ("sample_rate", "clip_fps", "clip_size", "clip_crop", "sync_fps", "sync_size", "clip_seconds")}
    data = FoleyDataModule(val_shards=checkpoint["datamodule_hyper_parameters"]["train_shards"], batch_size=2,
                           num_workers=0, **stream)
    batch = next(iter(data.val_dataloader()))
    recomputed = []

    def counting_checkpoint(block, *args, **kwargs):
        recomputed.append(block)
        return torch.utils.checkpoint.checkpoint(block, *args, **kwargs)

    monkeypatch.setattr(mmdit_module, "checkpoint", counting_checkpoint)
    losses, grads = [], []
    for flag in (False, True):
        module = DistillModule.load_from_checkpoint(path, map_location="cpu", weights_only=True,
                                                    gradient_checkpointing=flag).train()
        loss = module.loss(batch, generator=torch.Generator().manual_seed(0))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in module.network.named_parameters() if p.grad is not None})
    blocks = len(module.network.joint_blocks) + len(module.network.audio_blocks)
    assert len(recomputed) == blocks  # only the checkpointed run went through it, once per block
    torch.testing.assert_close(losses[1], losses[0])
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        # The same float32 ops run again in backward; only the summation order of the recomputation
        # may differ.
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()) + 1e-12,
                                   msg=name)
