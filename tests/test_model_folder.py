"""Model folders: `foley export` / save_pretrained → from_pretrained, bit for bit, without unpickling.

The pipeline is the real tiny one (tiny codec, MM-DiT, CLIP, Synchformer and T5 encoders,
Mono2Stereo), so every component type of a model folder is written and read.
"""
from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.pipeline_fakes import event_video
from helpers.tiny_pipeline import tiny_real_pipeline

from foley import FoleyPipeline  # noqa: E402
from foley.model_folder import FORMAT_VERSION, ModelFolderError  # noqa: E402

SR = 44100
T5_CONFIG = {"vocab_size": 384, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}
FILES = ["codec.json", "codec.safetensors", "encoders/clip_encoder.json", "encoders/clip_encoder.safetensors",
         "encoders/sync_encoder.json", "encoders/sync_encoder.safetensors", "encoders/text_encoder.json",
         "encoders/text_encoder.safetensors", "generator.json", "generator.safetensors", "pipeline.json",
         "stereo.json", "stereo.safetensors"]


def _pipeline(ema: bool = False) -> FoleyPipeline:
    """The tiny real pipeline with a tiny T5 text encoder; with ``ema`` its EMA weights differ from the trained ones."""
    from foley.encoders import TextEncoder

    pipeline = tiny_real_pipeline(window_seconds=1.0, overlap_seconds=0.25)
    flow = pipeline.flow
    flow.text_encoder = TextEncoder(model_config=T5_CONFIG, max_length=16).eval()
    flow.sample_steps, flow.cfg_strength = 2, 2.5
    if ema:
        import copy

        flow.ema_decay = 0.99
        flow.ema_network = copy.deepcopy(flow.network).requires_grad_(False).eval()
        with torch.no_grad():
            for parameter in flow.ema_network.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
    return pipeline


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    event_video(path, 1.6, events=[0.4, 1.1], fps=25.0)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory, video: Path) -> dict:
    """A pipeline, its audio for the test video and its model folder."""
    torch.manual_seed(0)
    pipeline = _pipeline(ema=True)
    pipeline.set_generation_params(negative_prompt="speech")
    folder = pipeline.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")
    audio = pipeline(video, prompt="a drum", seed=1)
    return {"pipeline": pipeline, "folder": folder, "audio": audio}


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_layout_and_descriptions(saved: dict) -> None:
    folder = saved["folder"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == FILES
    index = json.loads((folder / "pipeline.json").read_text())
    assert index["format"] == "foley-model" and index["format_version"] == FORMAT_VERSION
    assert index["generation"] == {"class_path": "foley.pipeline_settings.GenerationDefaults",
                                   "init_args": {"sampler": "euler", "steps": 2, "cfg": 2.5, "negative_prompt": "speech"}}
    assert index["settings"]["init_args"]["window_seconds"] == 1.0 and index["settings"]["init_args"]["sync_size"] == 32
    assert index["stereo"] == {"video_stream": "sync", "render": "vocoder"}
    generator = json.loads((folder / "generator.json").read_text())
    assert generator["class_path"] == "foley.models.mmdit.MMDiT" and generator["init_args"]["hidden_dim"] == 32
    codec = json.loads((folder / "codec.json").read_text())
    assert codec["init_args"]["vae"]["class_path"] == "foley.models.mel_vae.MelVAE"
    # The generator file holds the EMA weights, which generation uses.
    from safetensors.torch import load_file

    stored = load_file(folder / "generator.safetensors")
    ema = saved["pipeline"].flow.ema_network.state_dict()
    assert stored.keys() == ema.keys() and all(torch.equal(stored[k], ema[k]) for k in ema)


def test_from_pretrained_is_bit_identical_and_keeps_the_defaults(saved: dict, video: Path) -> None:
    loaded = FoleyPipeline.from_pretrained(saved["folder"])
    assert loaded.generation == saved["pipeline"].generation
    assert loaded.settings == saved["pipeline"].settings
    assert torch.equal(loaded(video, prompt="a drum", seed=1), saved["audio"])


def test_a_model_folder_is_a_stage1_codec_checkpoint(saved: dict) -> None:
    """Stages 2 and 3 can train against the codec of a shipped model: same component files."""
    from foley.models.codec import Codec

    codec = Codec.from_checkpoint(saved["folder"])
    original = saved["pipeline"].flow.codec
    assert codec.init_config() == original.init_config()
    state = original.state_dict()
    assert all(torch.equal(codec.state_dict()[k], state[k]) for k in state)


def test_loading_never_unpickles(saved: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model folder load tried to unpickle")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = FoleyPipeline.from_pretrained(saved["folder"])
    assert loaded.generation.steps == 2


def test_stored_generation_defaults_reach_the_sampler(saved: dict, video: Path, tmp_path: Path) -> None:
    pipeline = FoleyPipeline.from_pretrained(saved["folder"])
    pipeline.set_generation_params(steps=3, sampler="heun", cfg=1.5, negative_prompt="wind")
    loaded = FoleyPipeline.from_pretrained(pipeline.save_pretrained(tmp_path / "model"))
    sampled: list[tuple[int, str]] = []
    guidance: list[float] = []
    captions: list[list[str]] = []
    sample, guided = loaded.flow.flow.sample, loaded.flow.network.guided_velocity_fn
    encode = loaded.flow.text_encoder.forward

    def spy_sample(velocity, noise, steps, method, **kwargs):
        sampled.append((steps, method))
        return sample(velocity, noise, steps=steps, method=method, **kwargs)

    def spy_guided(cond, uncond, cfg):
        guidance.append(cfg)
        return guided(cond, uncond, cfg)

    def spy_text(texts):
        captions.append(list(texts))
        return encode(texts)

    loaded.flow.flow.sample = spy_sample
    loaded.flow.network.guided_velocity_fn = spy_guided
    loaded.flow.text_encoder.forward = spy_text
    loaded(video, duration=0.5)  # one window: one sampler call
    assert sampled == [(3, "heun")] and guidance == [1.5] and captions == [[""], ["wind"]]
    sampled.clear(), guidance.clear(), captions.clear()
    loaded(video, duration=0.5, steps=2, sampler="euler", cfg=3.0, negative_prompt="")
    assert sampled == [(2, "euler")] and guidance == [3.0] and captions == [[""]]


def test_decoded_frames_give_the_same_audio_as_the_file(saved: dict, video: Path) -> None:
    from foley.io.video import VideoFile

    handle = VideoFile(video)
    assert np.allclose(handle.starts, np.arange(len(handle)) / 25.0)
    frames = handle.frames(np.arange(len(handle)))
    pipeline = saved["pipeline"]
    assert torch.equal(pipeline(frames, fps=25.0, prompt="a drum", seed=1), saved["audio"])
    with pytest.raises(ValueError, match="frame rate"):
        pipeline(frames, prompt="a drum")


def test_text_only_generation(saved: dict, tmp_path: Path) -> None:
    pipeline = saved["pipeline"]
    seen: list[set] = []
    generate_latents = pipeline.flow.generate_latents

    def spy(batch, **kwargs):
        seen.append(set(batch))
        return generate_latents(batch, **kwargs)

    pipeline.flow.generate_latents = spy
    try:
        audio = pipeline(None, prompt="rain", duration=1.3, seed=2)
    finally:
        del pipeline.flow.generate_latents
    assert audio.shape == (2, round(1.3 * SR)) and torch.isfinite(audio).all()
    assert len(seen) == 2 and not any("clip_frames" in keys or "sync_frames" in keys for keys in seen)
    assert torch.equal(pipeline(None, prompt="rain", duration=1.3, seed=2), audio)  # seeded
    with pytest.raises(ValueError, match="duration"):
        pipeline(None, prompt="rain")


def test_generate_command_with_a_model_folder(saved: dict, video: Path, tmp_path: Path) -> None:
    from foley.cli import main
    from foley.io.media import read_audio

    out = tmp_path / "out"
    main(["generate", str(video), "--model", str(saved["folder"]), "--prompt", "a drum", "--seed", "1",
          "--out", str(out), "--device", "cpu"])
    wave, rate = read_audio(out / "clip.wav")
    assert rate == SR and wave.shape == tuple(saved["audio"].shape) and (out / "clip.mp4").is_file()
    main(["generate", "--model", str(saved["folder"]), "--text-only", "--duration", "0.8", "--prompt", "Rain, heavy!",
          "--out", str(out), "--device", "cpu"])
    wave, rate = read_audio(out / "rain_heavy.wav")
    assert rate == SR and wave.shape == (2, round(0.8 * SR))


def test_missing_file_is_named(saved: dict, tmp_path: Path) -> None:
    folder = _copy(saved["folder"], tmp_path)
    (folder / "stereo.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"stereo\.safetensors: missing"):
        FoleyPipeline.from_pretrained(folder)
    (folder / "pipeline.json").unlink()
    with pytest.raises(ModelFolderError, match=r"pipeline\.json: missing"):
        FoleyPipeline.from_pretrained(folder)


def test_wrong_shapes_are_named(saved: dict, tmp_path: Path) -> None:
    folder = _copy(saved["folder"], tmp_path)
    config = json.loads((folder / "stereo.json").read_text())
    config["init_args"]["hidden"] = 16  # the weights were trained with 8 channels
    (folder / "stereo.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"stereo\.safetensors: does not fit .*mel_in\.weight: file \(8, 16, 3\), model \(16, 16, 3\)"):
        FoleyPipeline.from_pretrained(folder)


def test_bad_descriptions_are_named(saved: dict, tmp_path: Path) -> None:
    folder = _copy(saved["folder"], tmp_path)
    config = json.loads((folder / "codec.json").read_text())
    config["init_args"]["vae"]["init_args"]["hidden_chanels"] = 3
    (folder / "codec.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"(?s)codec\.json: cannot build .*hidden_chanels"):
        FoleyPipeline.from_pretrained(folder)
    (folder / "codec.json").write_text(json.dumps({"class_path": "os.system", "init_args": {"command": "true"}}))
    with pytest.raises(ModelFolderError, match=r"codec\.json: class_path 'os\.system' is outside foley"):
        FoleyPipeline.from_pretrained(folder)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0])
def test_unknown_format_version(saved: dict, tmp_path: Path, version: int) -> None:
    folder = _copy(saved["folder"], tmp_path)
    index = json.loads((folder / "pipeline.json").read_text())
    index["format_version"] = version
    (folder / "pipeline.json").write_text(json.dumps(index))
    hint = "upgrade foley" if version > FORMAT_VERSION else "foley export"
    with pytest.raises(ModelFolderError, match=rf"pipeline\.json: format_version {version} .*{hint}"):
        FoleyPipeline.from_pretrained(folder)


def test_hub_id_offline_with_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from foley.hub import HubUnavailableError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # "someone/foley-tiny" is no local folder
    began = time.perf_counter()
    with pytest.raises(HubUnavailableError) as error:
        FoleyPipeline.from_pretrained("someone/foley-tiny")
    # No download attempt and no retries: those take tens of seconds. The bound leaves room for a
    # loaded machine (the call itself takes well under a second).
    assert time.perf_counter() - began < 20.0
    message = str(error.value)
    for needed in ("pipeline.json", "codec.safetensors", "generator.safetensors", "stereo.safetensors",
                   "HF_HUB_OFFLINE=1", "hf download someone/foley-tiny --local-dir MODEL_DIR", str(tmp_path / "hub")):
        assert needed in message, needed
    with pytest.raises(ModelFolderError, match="no such model folder"):
        FoleyPipeline.from_pretrained("./not/a/folder")


def test_writing_is_atomic_and_never_overwrites_by_accident(saved: dict, tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        saved["pipeline"].save_pretrained(target)
    assert (target / "keep.txt").read_text() == "mine"
    saved["pipeline"].save_pretrained(target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "pipeline.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folders left


def test_stored_encoder_copies(tmp_path: Path, video: Path) -> None:
    """Encoders read from their own files are references by default, copies with store_encoders."""
    from foley.encoders import SynchformerEncoder

    from helpers.tiny_pipeline import SYNC_ARGS

    pipeline = _pipeline()
    weights = tmp_path / "synchformer_state_dict.pth"
    torch.save(pipeline.flow.sync_encoder.state_dict(), weights)
    pipeline.flow.sync_encoder = SynchformerEncoder(checkpoint_path=str(weights), **SYNC_ARGS)
    audio = pipeline(video, prompt="a drum", seed=1, duration=0.6)
    referenced = pipeline.save_pretrained(tmp_path / "referenced")
    copied = pipeline.save_pretrained(tmp_path / "copied", store_encoders=True)
    assert not (referenced / "encoders/sync_encoder.safetensors").exists()
    assert json.loads((referenced / "encoders/sync_encoder.json").read_text())["init_args"]["checkpoint_path"] == str(weights)
    assert json.loads((copied / "encoders/sync_encoder.json").read_text())["init_args"]["checkpoint_path"] is None
    assert torch.equal(FoleyPipeline.from_pretrained(referenced)(video, prompt="a drum", seed=1, duration=0.6), audio)
    weights.unlink()  # the copy needs no external file
    assert torch.equal(FoleyPipeline.from_pretrained(copied)(video, prompt="a drum", seed=1, duration=0.6), audio)


def test_stored_copy_of_a_t5_from_a_folder(tmp_path: Path, video: Path) -> None:
    """A T5 read from a transformers folder: the copy stores its weights, the tokenizer stays a reference."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from foley.encoders import TextEncoder

    source = tmp_path / "t5"
    T5EncoderModel(T5Config(**T5_CONFIG)).save_pretrained(source)
    ByT5Tokenizer().save_pretrained(source)
    pipeline = _pipeline()
    pipeline.flow.text_encoder = TextEncoder(model_name=str(source), max_length=16)
    audio = pipeline(video, prompt="a drum", seed=1, duration=0.6)
    copied = pipeline.save_pretrained(tmp_path / "copied", store_encoders=True)
    config = json.loads((copied / "encoders/text_encoder.json").read_text())["init_args"]
    assert config["tokenizer_name"] == str(source) and config["model_config"]["d_model"] == 32
    (source / "model.safetensors").unlink()  # the weights now come from the model folder only
    assert torch.equal(FoleyPipeline.from_pretrained(copied)(video, prompt="a drum", seed=1, duration=0.6), audio)


def _fit_checkpoints(pipeline: FoleyPipeline, root: Path) -> tuple[Path, Path]:
    """Stage-2 and stage-3 checkpoints in the layout `foley fit` writes (LightningCLI: class_path
    hyper-parameters and its instantiator; the codec as a separate stage-1 file)."""
    import lightning

    from foley.stages.stereo_module import NETWORK_CONFIG_KEY

    flow, stereo = pipeline.flow, pipeline.stereo
    flow.codec.save(root / "codec.pt")
    hparams = {"network": flow.network.init_config(), "flow": flow.flow.init_config(), "codec_checkpoint": str(root / "codec.pt"),
               **{name: getattr(flow, name).init_config() for name in ("clip_encoder", "sync_encoder", "text_encoder")},
               "ema_decay": flow.ema_decay, "cfg_strength": flow.cfg_strength, "sample_steps": flow.sample_steps,
               "sampler": flow.sampler, "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    data = {"sample_rate": SR, "clip_seconds": 1.0, "clip_fps": 8.0, "clip_size": 32, "sync_fps": 25.0, "sync_size": 32}
    torch.save({"state_dict": flow.state_dict(), "hyper_parameters": hparams, "datamodule_hyper_parameters": data,
                "pytorch-lightning_version": lightning.__version__}, root / "stage2.ckpt")
    torch.save({"state_dict": stereo.state_dict(), NETWORK_CONFIG_KEY: stereo.network.init_config(),
                "hyper_parameters": {"video_stream": stereo.video_stream, "render": stereo.render},
                "pytorch-lightning_version": lightning.__version__}, root / "stage3.ckpt")
    return root / "stage2.ckpt", root / "stage3.ckpt"


def test_export_from_checkpoints_is_bit_identical(video: Path, tmp_path: Path) -> None:
    from foley.cli import main

    flow_ckpt, stereo_ckpt = _fit_checkpoints(_pipeline(ema=True), tmp_path)
    from_checkpoints = FoleyPipeline.from_checkpoints(flow_ckpt, stereo_ckpt)
    audio = from_checkpoints(video, prompt="a drum", seed=1)
    out = tmp_path / "model"
    main(["export", "--flow_ckpt", str(flow_ckpt), "--stereo_ckpt", str(stereo_ckpt), "--out", str(out)])
    exported = FoleyPipeline.from_pretrained(out)
    assert exported.generation == from_checkpoints.generation  # steps 2, cfg 2.5 from the stage-2 module
    assert exported.settings == from_checkpoints.settings
    assert torch.equal(exported(video, prompt="a drum", seed=1), audio)
    # Stored defaults can be set at export; an existing folder is never replaced by accident.
    with pytest.raises(SystemExit):
        main(["export", "--flow_ckpt", str(flow_ckpt), "--stereo_ckpt", str(stereo_ckpt), "--out", str(out)])
    main(["export", "--flow_ckpt", str(flow_ckpt), "--stereo_ckpt", str(stereo_ckpt), "--out", str(out),
          "--overwrite", "--steps", "3", "--negative_prompt", "speech"])
    assert FoleyPipeline.from_pretrained(out).generation.steps == 3


def _legacy_bundle(pipeline: FoleyPipeline, path: Path) -> None:
    """A file as the removed ``FoleyPipeline.save_bundle`` wrote it (LightningCLI-style hyper-parameters)."""
    from dataclasses import asdict

    flow, stereo = pipeline.flow, pipeline.stereo
    hparams = {"network": flow.network.init_config(), "flow": flow.flow.init_config(), "ema_decay": 0.0,
               "cfg_strength": flow.cfg_strength, "sample_steps": flow.sample_steps, "sampler": flow.sampler,
               **{name: getattr(flow, name).init_config() for name in ("clip_encoder", "sync_encoder", "text_encoder")}}
    torch.save({
        "format": "foley-pipeline-bundle", "version": 1, "settings": asdict(pipeline.settings),
        "codec": {"config": json.dumps(flow.codec.init_config()), "state_dict": flow.codec.state_dict()},
        "flow": {"hyper_parameters": json.dumps(hparams),
                 "state_dict": {k: v for k, v in flow.state_dict().items() if not k.startswith("codec.")}},
        "stereo": {"config": json.dumps(stereo.network.init_config()), "video_stream": stereo.video_stream,
                   "render": stereo.render, "state_dict": stereo.network.state_dict()},
    }, path)


def test_old_bundles_load_and_convert(video: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from foley.export import export

    pipeline = _pipeline()
    audio = pipeline(video, prompt="a drum", seed=1)
    bundle = tmp_path / "pipeline.pt"
    _legacy_bundle(pipeline, bundle)
    with caplog.at_level(logging.WARNING, logger="foley.model_folder"):
        loaded = FoleyPipeline.from_pretrained(bundle)
    assert "foley export --bundle" in caplog.text
    assert torch.equal(loaded(video, prompt="a drum", seed=1), audio)
    folder = export(out=tmp_path / "converted", bundle=str(bundle))
    assert torch.equal(FoleyPipeline.from_pretrained(folder)(video, prompt="a drum", seed=1), audio)
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, checkpoint)
    with pytest.raises(ModelFolderError, match="foley export --flow_ckpt"):
        FoleyPipeline.from_pretrained(checkpoint)


def test_a_model_without_stage_3_renders_dual_mono(tmp_path: Path, video: Path) -> None:
    """No stereo component (converted MMAudio models): both channels are the vocoded generated mel."""
    torch.manual_seed(0)
    pipeline = tiny_real_pipeline(window_seconds=1.0, overlap_seconds=0.25)
    pipeline.stereo = None
    folder = pipeline.save_pretrained(tmp_path / "mono")
    assert not (folder / "stereo.json").exists() and not (folder / "stereo.safetensors").exists()
    loaded = FoleyPipeline.from_pretrained(folder)
    assert loaded.stereo is None
    audio = loaded(video, seed=1, duration=0.8)  # one window: the output is that window's vocoding
    assert audio.shape == (2, round(0.8 * SR))
    assert torch.equal(audio[0], audio[1]) and audio.abs().max() > 0
    assert torch.equal(audio, pipeline(video, seed=1, duration=0.8))
    handle, _, _ = loaded._open(video, None, 0.0, 0.8, "auto")
    batch = loaded._window_batch(handle, [0.0], round(0.8 * SR), None, video.name)
    mel = loaded.flow.latent_mel(loaded.flow.generate_latents(batch, seed=1, noise=None))
    expected = loaded.flow.codec.vocode(mel)[0, : round(0.8 * SR)].clamp(-1, 1)
    torch.testing.assert_close(audio[0], expected.float(), rtol=0, atol=1e-6)
