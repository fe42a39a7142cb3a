"""ImageBind audio/vision: official key layout, forward against the official code's outputs,
and ImageBind's audio/vision preprocessing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from foley.metrics.embedders import MissingWeightsError, mono_zero_mean, resample
from foley.metrics.ib_score import ImageBindScore
from foley.metrics.imagebind import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGEBIND_FILE,
    IMAGEBIND_MEL_MEAN,
    IMAGEBIND_MEL_STD,
    ImageBind,
    ImageBindAudioEmbedder,
    ImageBindVideoEmbedder,
    imagebind_audio_clips,
    imagebind_frame_pairs,
    imagebind_frames,
    imagebind_from_file,
    imagebind_log_mel,
    load_imagebind_state,
)

MANIFEST = Path(__file__).parents[1] / "manifests" / "imagebind_huge_audio_vision.json"
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def hash_uniform(n: int, seed: int) -> torch.Tensor:
    """Integer-hash values in [0, 1): exact int64 arithmetic, the same on every machine
    (the manifest's reference outputs were computed from the same function)."""
    i = torch.arange(n, dtype=torch.int64) + seed * 1000003
    h = (i * 1103515245 + 12345) % 2**31
    h = h ^ (h >> 13)
    h = (h * 1103515245 + 12345) % 2**31
    h = h ^ (h >> 16)
    return h.double() / 2**31


def tiny_model() -> ImageBind:
    return ImageBind(vision_dim=32, vision_depth=2, vision_heads=2, audio_dim=24, audio_depth=2, audio_heads=2, out_dim=16).eval()


def fill_like_manifest(model: ImageBind) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i, key in enumerate(model.state_dict()):
            if key not in params:
                continue
            p = params[key]
            u = (hash_uniform(p.numel(), i) * 2 - 1).reshape(p.shape)
            if p.dim() >= 2 and not any(s in key for s in ("cls_token", "pos_embed", "bias_k", "bias_v")):
                value = u * (3.0 / (p.numel() / p.shape[0])) ** 0.5
            elif p.dim() == 1 and key.endswith("weight"):
                value = 1.0 + 0.2 * u
            else:
                value = 0.5 * u
            p.copy_(value.float())


def test_state_dict_equals_the_official_vision_audio_layout() -> None:
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        state = ImageBind().state_dict()
    ours = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()}
    assert list(ours) == list(manifest["tensors"])
    assert ours == manifest["tensors"]
    assert manifest["summary"] == {"keys": 569, "params": 719065089, "buffer_keys": ["modality_postprocessors.audio.1.log_logit_scale"]}
    assert manifest["full_checkpoint_summary"]["keys"] == 1311


def test_forward_matches_the_official_code_on_a_tiny_model() -> None:
    reference = json.loads(MANIFEST.read_text())["reference_forward"]
    model = tiny_model()
    fill_like_manifest(model)
    audio = (hash_uniform(2 * 3 * 128 * 204, 7001) * 4 - 2).float().reshape(2, 3, 1, 128, 204)
    frames = hash_uniform(2 * 3 * 3 * 224 * 224, 7002).float().reshape(2, 3, 3, 224, 224)
    with torch.no_grad():
        embeddings = {
            dtype: (model.to(dtype).embed_windows("audio", audio.to(dtype)).double(),
                    model.embed_windows("vision", imagebind_frame_pairs(frames).to(dtype)).double())
            for dtype in (torch.float64, torch.float32)
        }
    # The reference is the official float32 forward. Our float64 forward carries no error of
    # its own (~1e-15), so the difference is the reference's rounding, the same on every
    # machine: for a normalised output ~ eps32 * sqrt(K) * |e| with K the longest reduction,
    # the patch projection (audio 16x16 = 256 terms; vision 3x2x14x14 = 1176). Measured:
    # 0.6 and 1.2 eps32 * |e|. A LayerNorm eps of 1e-5 instead of 1e-6 gives 18 and 47.
    for k, (name, terms) in enumerate([("audio", 256), ("vision", 1176)]):
        expected = torch.tensor(reference[name], dtype=torch.float64)
        bound = EPS32 * math.sqrt(terms) * expected.norm(dim=-1, keepdim=True)
        exact, single = embeddings[torch.float64][k], embeddings[torch.float32][k]
        assert ((exact - expected).abs() <= bound).all(), f"{name}: {((exact - expected).abs() / bound).max():.3f}"
        # Our float32 forward has the same kind of error (measured 0.6 and 1.2 eps32 * |e|).
        assert ((single - exact).abs() <= bound).all(), f"{name}: {((single - exact).abs() / bound).max():.3f}"
    # Audio carries the fixed logit scale 20 on each window; a mean of unit vectors is shorter
    # (float32 norm of 16 terms and the scaling: 20 * eps32 * (16 + 4) = 4.8e-5 < 1e-4).
    assert torch.all(embeddings[torch.float32][0].norm(dim=-1) <= 20.0 + 1e-4)


def test_audio_windows_follow_imagebind_data_pipeline() -> None:
    wave = torch.randn(2, 8 * 16000)
    clips = imagebind_audio_clips(wave)
    assert clips.shape == (2, 3, 1, 128, 204)
    # Windows start at 0, 3 and 6 s for an 8 s clip.
    for k, start in enumerate([0, 3, 6]):
        assert torch.equal(clips[1, k], imagebind_log_mel(wave[1, start * 16000 : (start + 2) * 16000]))
    # 2 s make 198 kaldi frames (25 ms / 10 ms, snip edges); the rest is zero-padded, and
    # zero maps to (0 + 4.268) / 9.138 after normalisation.
    fbank = kaldi.fbank(wave[:1, :32000] - wave[:1, :32000].mean(), htk_compat=True, sample_frequency=16000,
                        use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10)
    assert fbank.shape == (198, 128)
    assert torch.allclose(clips[0, 0, 0, :, :198], ((fbank.T - IMAGEBIND_MEL_MEAN) / IMAGEBIND_MEL_STD), atol=1e-5)
    assert torch.allclose(clips[0, 0, 0, :, 198:], torch.full((128, 6), -IMAGEBIND_MEL_MEAN / IMAGEBIND_MEL_STD))
    # Each window's mean is removed, so a DC offset changes nothing, up to rounding: each set is
    # its own float32 pipeline (and the offset's rounding moves samples by <= 2.4e-7). A bin's
    # amplitude is off by ~delta = sqrt(512) * eps32 * 2 ||x||_frame (probabilistic bound; the
    # window is <= 1, pre-emphasis gains <= 1.97), a band's energy E by
    # 2 sqrt(2) delta sqrt(w E) + 2 delta^2 w (w: its filter's sum), its log by that over E:
    # one-bin bands of white noise fall to 1e-5 of the median energy, where a fixed bound is
    # fragile (the old 1e-3: measured 6.5e-5 with AVX-512, 1.6e-4 without SIMD). Two sets,
    # then the normalisation 1 / std.
    shifted = imagebind_audio_clips(wave + 0.3)
    filter_sums = kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)[0].sum(dim=1).double()[:, None]
    worst = 0.0
    for b in range(2):
        for k, start in enumerate([0, 3, 6]):
            x = wave[b, start * 16000 : (start + 2) * 16000].double()
            delta = math.sqrt(512) * EPS32 * 2 * (x - x.mean()).unfold(0, 400, 160).norm(dim=1)
            energy = (clips[b, k, 0, :, :198].double() * IMAGEBIND_MEL_STD + IMAGEBIND_MEL_MEAN).exp()
            error = 2 * (2 * math.sqrt(2) * delta * (filter_sums * energy).sqrt() + 2 * delta**2 * filter_sums)
            bound = torch.log1p(error / energy) / IMAGEBIND_MEL_STD
            worst = max(worst, float(((shifted - clips)[b, k, 0, :, :198].abs() / bound.clamp_min(1e-300)).max()))
    assert worst <= 1.0, f"error / bound = {worst:.3f}"
    assert torch.equal(shifted[..., 198:], clips[..., 198:])  # the zero padding
    # A 1 kHz tone peaks in the HTK-mel band (20 Hz .. 8 kHz, 128 bands) centred nearest 1 kHz.
    t = torch.arange(32000) / 16000
    tone = imagebind_log_mel(torch.sin(2 * math.pi * 1000 * t))[0, :, :198].mean(-1)

    def mel(f: float) -> float:
        return 1127 * math.log1p(f / 700)

    step = (mel(8000) - mel(20)) / 129
    expected = min(range(128), key=lambda i: abs(mel(20) + (i + 1) * step - mel(1000)))
    assert int(tone.argmax()) == expected
    with pytest.raises(ValueError, match="16 kHz"):
        imagebind_audio_clips(wave, 44100)


def test_frames_are_resized_cropped_clip_normalised_and_paired() -> None:
    gray = torch.full((1, 3, 3, 360, 640), 0.5)
    out = imagebind_frames(gray)
    assert out.shape == (1, 3, 3, 224, 224)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, 0].mean(dim=(-1, -2)), expected, atol=1e-4)
    # The centre crop keeps the middle: a frame whose left and right quarters differ from
    # its centre gives the centre's value everywhere after a 640 -> 398 resize and crop.
    frame = torch.zeros(1, 1, 3, 360, 640)
    frame[..., 200:440] = 1.0
    centre = imagebind_frames(frame)[0, 0, :, :, 45:179]
    assert torch.allclose(centre.mean(dim=(-1, -2)), (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD), atol=1e-3)
    # Same as torchvision's Resize(224, bicubic) + CenterCrop(224) + Normalize on tensors.
    from torchvision import transforms

    reference = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(224),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    for shape in [(2, 3, 360, 640), (1, 3, 481, 333)]:
        x = torch.rand(*shape)
        assert torch.allclose(imagebind_frames(x), reference(x), atol=1e-5)
    pairs = imagebind_frame_pairs(torch.arange(4.0).view(1, 4, 1, 1, 1).expand(1, 4, 3, 2, 2))
    assert pairs.shape == (1, 3, 3, 2, 2, 2)
    assert pairs[0, :, 0, :, 0, 0].tolist() == [[0, 1], [1, 2], [2, 3]]
    assert imagebind_frame_pairs(torch.zeros(1, 1, 3, 2, 2)).shape == (1, 1, 3, 2, 2, 2)


def test_loading_drops_other_modalities_and_names_a_wrong_file(tmp_path: Path) -> None:
    source = tiny_model()
    fill_like_manifest(source)
    state = dict(source.state_dict())
    state["modality_trunks.text.blocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)
    state["modality_postprocessors.text.1.log_logit_scale"] = torch.zeros(())
    torch.save(state, tmp_path / IMAGEBIND_FILE)
    target = tiny_model()
    load_imagebind_state(target, tmp_path / IMAGEBIND_FILE)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    # The embedders build on the meta device and adopt the file's tensors.
    sizes = dict(vision_dim=32, vision_depth=2, vision_heads=2, audio_dim=24, audio_depth=2, audio_heads=2, out_dim=16)
    adopted = imagebind_from_file(tmp_path / IMAGEBIND_FILE, **sizes)
    assert not any(t.is_meta for t in [*adopted.parameters(), *adopted.buffers()])
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in adopted.state_dict().items())
    broken = {k: v for k, v in state.items() if k != "modality_heads.audio.2.weight"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match=r"(?s)broken\.pth.*modality_heads\.audio\.2\.weight.*imagebind_huge\.pth"):
        load_imagebind_state(tiny_model(), tmp_path / "broken.pth")
    with pytest.raises(MissingWeightsError, match=r"imagebind_huge\.pth.*dl\.fbaipublicfiles\.com/imagebind"):
        ImageBindAudioEmbedder(None)
    with pytest.raises(MissingWeightsError, match=r"absent\.pth does not exist"):
        ImageBindVideoEmbedder(str(tmp_path / "absent.pth"))
    with pytest.raises(MissingWeightsError, match=r"imagebind_huge\.pth.*dl\.fbaipublicfiles\.com/imagebind"):
        ImageBindScore(weights_path=None)


def test_embedders_feed_the_ib_score() -> None:
    model = tiny_model()
    fill_like_manifest(model)
    audio_embedder = ImageBindAudioEmbedder(model=model, seconds=8.0)
    wave = torch.randn(2, 2, 5 * 44100)
    audio_embedding, none = audio_embedder.embed(wave, 44100)
    assert none is None and audio_embedding.shape == (2, 16) and audio_embedder.embedding_dim == 16
    manual = model.embed_windows("audio", imagebind_audio_clips(torch.nn.functional.pad(resample(mono_zero_mean(wave), 44100, 16000), (0, 3 * 16000))))
    assert torch.allclose(audio_embedding, manual, atol=1e-5)
    video_embedding = ImageBindVideoEmbedder(model=model)(torch.rand(2, 4, 3, 240, 320))
    assert video_embedding.shape == (2, 16)


def test_ib_score_is_100_times_the_mean_cosine_of_clip_stream_at_half_a_frame_per_second() -> None:
    model = tiny_model()
    fill_like_manifest(model)
    metric = ImageBindScore(model=model, seconds=8.0, frames_fps=8.0)
    raw = ImageBindScore(model=model, seconds=8.0, frames_fps=8.0, scale=1.0, name="ib_cosine")
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 64, 3, 224, 224), generator=g, dtype=torch.uint8)  # 8 s at 8 fps
    generated = torch.randn(3, 2, 8 * 44100, generator=g)
    cosines = []
    for part in (slice(0, 2), slice(2, 3)):  # two updates of different sizes
        for score in (metric, raw):
            score.update(generated[part], {"clip_frames": frames[part]}, 44100)
        # 0.5 fps of an 8 fps stream: frames 0, 16, 32, 48 (t = 0, 2, 4, 6 s) -> 3 pairs.
        video = model.embed_windows("vision", imagebind_frame_pairs(imagebind_frames(frames[part, ::16].float() / 255)))
        audio, _ = ImageBindAudioEmbedder(model=model, seconds=8.0).embed(generated[part], 44100)
        cosines.append(torch.nn.functional.cosine_similarity(video.double(), audio.double(), dim=-1))
    # The metric embeds with the same float32 operations as this reference; the remaining
    # difference is the float64 summation order of three cosines.
    expected = torch.cat(cosines).mean()
    assert float(metric.compute()["ib_score"]) == pytest.approx(100 * float(expected), rel=1e-12)
    assert float(raw.compute()["ib_cosine"]) == pytest.approx(float(expected), rel=1e-12)
    assert cosines[0].std() > 1e-3  # the clips differ, so the mean over clips is tested
    metric.reset()
    with pytest.raises(ValueError, match="clip_frames"):
        metric.update(generated, {}, 44100)
    with pytest.raises(ValueError, match="multiple of 0.5"):
        ImageBindScore(model=model, frames_fps=0.3)
