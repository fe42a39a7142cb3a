"""Records MMAudio's feature front ends at a tiny size, for foley's tests.

Runs MMAudio's own code (not part of foley; pass a checkout of github.com/hkchengrex/MMAudio on
PYTHONPATH) outside the repository and writes only derived data under ``--out``: random weights
in MMAudio's key layout, inputs and the reference's outputs.

* ``frames_reference.safetensors``: small synthetic videos made with ``foley.io.media`` (constant
  25, 24, 30 and 30000/1001 fps, and a variable-rate one starting at 50 ms), the source frames
  MMAudio's ``read_frames`` picks for its 8 and 25 fps streams, the duration ``load_video`` keeps,
  and SHA-256 digests of each resized frame (CLIP: 384 x 384 stretch; sync: 224 centre crop).
* ``clip_image.safetensors``: a tiny open_clip image tower (``visual.*``, input 384 x 384) and
  ``FeaturesUtils.encode_video_with_clip`` of ``load_video``'s CLIP frames of a 1 s video.
* ``text_clip.safetensors``: a tiny open_clip text tower (77 tokens, the full 49408-token vocabulary
  with only the rows the captions use stored) and ``FeaturesUtils.encode_text`` of some captions.
* ``sync_features.safetensors``: a tiny Synchformer (``vfeat_extractor.*``) and
  ``FeaturesUtils.encode_video_with_sync`` of ``load_video``'s sync frames of a 1.28 s video.

``FeaturesUtils`` is MMAudio's own class, built by its constructor with two substitutions: the
open_clip model it downloads is the tiny one, and MotionFormer's config gets a tiny width and
depth (geometry kept: 224 x 224, 16 x 16 patches, 2-frame tubelets, 16-frame segments). The
Synchformer weights go through a real ``synchformer_state_dict.pth`` with extra non-visual keys.

    cd /some/scratch && PYTHONPATH=/path/to/MMAudio python /path/to/foley/scripts/mmaudio_fixtures/encoders.py \\
        --out /path/to/foley/tests/fixtures/mmaudio

Needs open_clip_torch, timm, omegaconf, einops, av, colorlog and torchdiffeq (imported by MMAudio's
modules), and foley itself (for the synthetic videos).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from safetensors.torch import save_file

CLIP_NAME = "hf-hub:apple/DFN5B-CLIP-ViT-H-14-384"
# Tiny open_clip CLIP: image tower at MMAudio's 384 x 384 input (12 x 12 patches of 32), text
# tower with CLIP's 77-token context and full vocabulary (the tokenizer's ids reach 49407).
TINY_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 384, "layers": 2, "width": 16, "head_width": 8, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
TINY_SYNC = {"EMBED_DIM": 16, "NUM_HEADS": 2, "DEPTH": 2}
CAPTIONS = [
    "",
    "a dog barks twice",
    "Glass SHATTERS, then a loud crash!!  ",
    "rain on a tin roof " * 20,  # longer than 77 tokens: truncated, the last token is end-of-text
]


# ----------------------------------------------------------------------------- videos
def pattern(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Frames with the index in colour (R, G) and a fixed sharp texture (B) for the resizers."""
    rng = np.random.default_rng(seed)
    index = np.arange(count)
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[..., 0] = (16 * (index % 16) + 8)[:, None, None]
    frames[..., 1] = (16 * (index // 16) + 8)[:, None, None]
    texture = (rng.random((-(-height // 4), -(-width // 4))) > 0.5).astype(np.uint8) * 255
    frames[..., 2] = np.kron(texture, np.ones((4, 4), dtype=np.uint8))[None, :height, :width]
    return frames


def write_timed_video(frames: np.ndarray, stamps_ms: list[int]) -> bytes:
    """H.264 mp4 whose frame i starts at stamps_ms[i] milliseconds (variable frame rate)."""
    import io

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.options = {"crf": "18"}
        for image, pts in zip(frames, stamps_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def make_videos() -> dict[str, tuple[bytes, float]]:
    """name -> (mp4 bytes, duration to request)."""
    from foley.io.media import encode_video_bytes

    videos = {}
    for name, fps, (h, w) in (("cfr25", 25, (48, 64)), ("cfr24", 24, (40, 90)), ("cfr30", 30, (40, 90)),
                              ("ntsc", Fraction(30000, 1001), (64, 48))):
        count = math.ceil(2 * fps)
        videos[name] = (encode_video_bytes(pattern(count, h, w, seed=len(videos)), fps, threads=1), 2.0)
    rng = np.random.default_rng(7)
    stamps = np.cumsum(rng.integers(10, 90, size=40)) + 50 - 10  # first frame at 40..130 ms, gaps 10-89 ms
    stamps = [int(s) for s in stamps if s < 2100]
    videos["vfr"] = (write_timed_video(pattern(len(stamps), 48, 48, seed=9), stamps), 1.5)
    return videos


def digests(frames: torch.Tensor) -> torch.Tensor:
    """SHA-256 of each uint8 frame's bytes, as uint8 (T, 32)."""
    rows = [np.frombuffer(hashlib.sha256(f.contiguous().numpy().tobytes()).digest(), dtype=np.uint8) for f in frames]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, 32, dtype=torch.uint8)


def to_uint8(frames: torch.Tensor, normalised: bool) -> torch.Tensor:
    """Recover load_video's uint8 pixels from its float frames, checking that the forward transform
    (``ToDtype(scale=True)``, then ``Normalize(0.5, 0.5)`` for the sync stream) gives them back exactly."""
    unit = frames * 0.5 + 0.5 if normalised else frames
    pixels = torch.round(unit * 255).to(torch.uint8)
    again = pixels.to(torch.float32).mul_(1.0 / 255)
    if normalised:
        again = again.sub_(0.5).div_(0.5)
    assert torch.equal(again, frames), "frames are not resized uint8 frames scaled by 1/255"
    return pixels


def record_frames(videos: dict[str, tuple[bytes, float]], work: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from mmaudio.data.av_utils import read_frames
    from mmaudio.eval_utils import load_video

    tensors, meta = {}, {}
    for name, (data, duration) in videos.items():
        path = work / f"{name}.mp4"
        path.write_bytes(data)
        (clip_raw, sync_raw), all_frames, fps = read_frames(path, [8.0, 25.0], 0, duration, need_all_frames=True)
        source = np.stack(all_frames)

        def indices(chosen: np.ndarray) -> torch.Tensor:
            found = [int(np.flatnonzero((source == f).reshape(len(source), -1).all(axis=1))[0]) for f in chosen]
            return torch.tensor(found, dtype=torch.int64)

        info = load_video(path, duration)
        tensors[f"{name}.mp4"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        tensors[f"{name}.clip_indices"] = indices(clip_raw)
        tensors[f"{name}.sync_indices"] = indices(sync_raw)
        tensors[f"{name}.clip_digests"] = digests(to_uint8(info.clip_frames, normalised=False))
        tensors[f"{name}.sync_digests"] = digests(to_uint8(info.sync_frames, normalised=True))
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            times = [frame.time for frame in container.decode(stream)]
        tensors[f"{name}.frame_times"] = torch.tensor(times, dtype=torch.float64)
        meta[name] = {"requested_duration": duration, "kept_duration": info.duration_sec,
                      "clip_frames": int(info.clip_frames.shape[0]), "sync_frames": int(info.sync_frames.shape[0]),
                      "guessed_rate": str(fps)}
    return tensors, meta


# ----------------------------------------------------------------------------- networks
def random_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Uniform weights: variance 1/fan_in for matrices, gains near 1 for norms, small vectors."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        unit = torch.rand(value.shape, generator=generator, dtype=torch.float64) * 2 - 1
        if value.ndim >= 2 and value.shape[-1] > 1 and "embed" not in key and "cls_token" not in key:
            values = unit * math.sqrt(3.0 / math.prod(value.shape[1:]))
        elif value.ndim == 1 and key.endswith("weight"):  # normalisation gains
            values = 1.0 + 0.2 * unit
        else:
            values = 0.3 * unit
        out[key] = values.to(value.dtype)
    return out


def build_features_utils(work: Path):
    """MMAudio's FeaturesUtils, built by its constructor with the tiny CLIP and Synchformer."""
    import open_clip
    from omegaconf import OmegaConf

    import mmaudio.ext.synchformer.motionformer as motionformer
    import mmaudio.model.utils.features_utils as features_utils
    from mmaudio.ext.synchformer import Synchformer

    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**TINY_CLIP)
    state = random_like(clip.state_dict(), seed=1)
    # Only the token rows the captions use are stored: zero the rest (no output depends on them).
    tokenizer = open_clip.get_tokenizer("ViT-H-14-378-quickgelu")
    used = torch.unique(tokenizer(CAPTIONS))
    keep = torch.zeros(TINY_CLIP["text_cfg"]["vocab_size"], 1)
    keep[used] = 1.0
    state["token_embedding.weight"] = state["token_embedding.weight"] * keep
    clip.load_state_dict(state)

    def tiny_clip(name: str, return_transform: bool):
        assert name == CLIP_NAME and return_transform is False, (name, return_transform)
        return clip

    real_load = OmegaConf.load

    def tiny_config(path):
        config = real_load(path)
        for key, value in TINY_SYNC.items():
            config.VIT[key] = value
        return config

    motionformer.OmegaConf.load = tiny_config
    features_utils.create_model_from_pretrained = tiny_clip
    sync = Synchformer()
    sync_state = random_like(sync.state_dict(), seed=2)
    checkpoint = dict(sync_state)
    checkpoint["afeat_extractor.dummy.weight"] = torch.zeros(3)  # MMAudio keeps only vfeat_extractor.*
    checkpoint["transformer.dummy.bias"] = torch.zeros(2)
    torch.save(checkpoint, work / "synchformer_state_dict.pth")
    utils = features_utils.FeaturesUtils(tod_vae_ckpt=None, synchformer_ckpt=work / "synchformer_state_dict.pth",
                                         enable_conditions=True, mode="44k").eval()
    return utils, clip, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        videos = make_videos()
        tensors, meta = record_frames(videos, work)
        save_file(tensors, args.out / "frames_reference.safetensors", metadata={"videos": json.dumps(meta)})

        from mmaudio.eval_utils import load_video

        utils, clip, used = build_features_utils(work)
        (work / "cfr30.mp4").write_bytes(videos["cfr30"][0])
        with torch.inference_mode():
            clip_info = load_video(work / "cfr30.mp4", 1.0)
            clip_features = utils.encode_video_with_clip(clip_info.clip_frames[None])
            sync_info = load_video(work / "cfr30.mp4", 1.28)
            sync_features = utils.encode_video_with_sync(sync_info.sync_frames[None])
            tokens = utils.tokenizer(CAPTIONS)
            text_features = utils.encode_text(CAPTIONS)
        visual = {k: v.clone() for k, v in clip.state_dict().items() if k.startswith("visual.")}
        save_file({**visual, "video.mp4": tensors["cfr30.mp4"], "features": clip_features[0].contiguous()},
                  args.out / "clip_image.safetensors",
                  metadata={"model_config": json.dumps(TINY_CLIP), "duration": "1.0", "model_name": CLIP_NAME})
        text_keys = ("positional_embedding", "transformer.", "ln_final.")
        text = {k: v.clone() for k, v in clip.state_dict().items() if k.startswith(text_keys)}
        text["token_embedding.ids"] = used
        text["token_embedding.rows"] = clip.token_embedding.weight[used].clone()
        save_file({**text, "tokens": tokens, "features": text_features.contiguous()},
                  args.out / "text_clip.safetensors",
                  metadata={"model_config": json.dumps(TINY_CLIP), "captions": json.dumps(CAPTIONS),
                            "tokenizer": "ViT-H-14-378-quickgelu"})
        sync_state = {k: v.clone() for k, v in utils.synchformer.state_dict().items()}
        save_file({**sync_state, "video.mp4": tensors["cfr30.mp4"], "features": sync_features[0].contiguous()},
                  args.out / "sync_features.safetensors",
                  metadata={"tiny": json.dumps(TINY_SYNC), "duration": "1.28"})
    for path in sorted(args.out.glob("*.safetensors")):
        if path.name.split("_")[0] in ("frames", "clip", "text", "sync"):
            print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")
    print(json.dumps(meta, indent=1))
    print("clip", tuple(clip_features.shape), "sync", tuple(sync_features.shape), "text", tuple(text_features.shape))


if __name__ == "__main__":
    main()
