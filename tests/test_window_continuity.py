"""Real tiny stages: the pipeline pans the generator's own mel, and neighbouring windows agree on their overlap."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from helpers.pipeline_fakes import event_video
from helpers.tiny_pipeline import tiny_real_pipeline

SR = 44100


def _record(pipeline, name: str) -> list:
    """Wrap ``pipeline.flow.<name>`` to keep (args, result) of every call."""
    calls: list = []
    original = getattr(pipeline.flow, name)

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    setattr(pipeline.flow, name, spy)
    return calls


def test_vocoder_rendering_uses_the_generators_mel(tmp_path: Path, single_thread) -> None:
    from foley.models.mono2stereo import LOG_MEL_FLOOR

    video = tmp_path / "clip.mp4"
    event_video(video, 0.8, events=[0.3], fps=25.0)
    pipeline = tiny_real_pipeline()
    mels = _record(pipeline, "latent_mel")
    codec = pipeline.flow.codec
    vocoded: list = []
    vocode = codec.vocode
    codec.vocode = lambda mel: vocoded.append(mel.clone()) or vocode(mel)
    audio = pipeline(video, steps=2, cfg=2.0, seed=1)
    n, frames = round(0.8 * SR), math.ceil(round(0.8 * SR) / 512)
    assert audio.shape == (2, n) and len(mels) == 1
    mel = mels[0][2]  # the decoded latents of the one window, (1, 16, 2 * ceil(n / 1024))
    assert mel.shape == (1, 16, 2 * math.ceil(n / 1024))
    # One vocoder call, on the two ears' mels; untrained stage 3 is centred, so both are the
    # generator's mel itself (cut to the ceil(n / hop) frames of n samples, floored like any log-mel).
    assert len(vocoded) == 1 and vocoded[0].shape == (2, 16, frames)
    ear = mel[0, :, :frames].clamp_min(LOG_MEL_FLOOR)
    torch.testing.assert_close(vocoded[0], torch.stack([ear, ear]), rtol=0, atol=0)
    # ... not the mel re-analysed from the vocoded mono waveform (the old route).
    reanalysed = codec.mel(torch.nn.functional.pad(vocode(mel)[:, :n], (0, frames * 512 - n)))
    assert float((reanalysed[0] - mel[0, :, :frames]).abs().max()) > 0.1
    expected = vocode(ear[None])[0, :n].clamp(-1, 1)
    # The pipeline vocodes both ears in one batch of 2, the reference one ear alone; the conv
    # kernels may block (and so round) differently for another batch size, thread count or
    # CPU. Along the tiny BigVGAN's path are ~410 multiply-adds per output (convolutions 266,
    # anti-aliasing filters 144), so each float32 evaluation is off by about
    # eps32 * sqrt(410) ~ 20 eps32 of the output's scale; two evaluations: 40 eps32 * max|out|
    # (5.5e-8 here; measured 1.9e-9; shifting the mel by one frame moves the audio by 8e-7).
    tolerance = 40 * torch.finfo(torch.float32).eps * float(expected.abs().max())
    torch.testing.assert_close(audio[0], audio[1], rtol=0, atol=tolerance)
    torch.testing.assert_close(audio[0], expected, rtol=0, atol=tolerance)
    codec.vocode = vocode
    mono = vocode(mel[..., :frames])[:, :n]  # the mel cut to the frames of n samples, as above
    # STFT rendering still works from the mel alone (one vocoder pass for the mono signal).
    pipeline.stereo.render = "stft"
    stft = pipeline(video, steps=2, cfg=2.0, seed=1)
    # Centred pan scales the STFT by exactly 1, so what is left is the float32 FFT round trip:
    # forward and inverse each ~log2(2048) = 11 rounding stages, 22 eps32 * max|x| in all
    # (3e-8 here; measured 5.6e-9).
    tolerance = 2 * math.log2(2048) * torch.finfo(torch.float32).eps * float(mono.abs().max())
    torch.testing.assert_close(stft[0], mono[0].clamp(-1, 1), atol=tolerance, rtol=0)


def _overlap_disagreement(pipeline, video: Path) -> tuple[float, list[float]]:
    """Relative RMS difference of neighbouring windows' latents on their common whole frames."""
    from foley.windowing import latent_frames, plan_windows

    calls = _record(pipeline, "generate_latents")
    pipeline(video, steps=3, cfg=2.0, seed=4)
    s, grid = pipeline.settings, pipeline.flow.samples_per_latent
    total = round(3.0 * SR)
    windows = plan_windows(total, round(s.window_seconds * SR), round(s.overlap_seconds * SR), grid)
    latents = [row for _, _, out in calls for row in out]
    assert len(latents) == len(windows) >= 3
    diffs, scale = [], []
    for (prev, a), (nxt, b) in zip(zip(windows, latents), zip(windows[1:], latents[1:])):
        first_a, _ = latent_frames(prev, grid)
        first_b, _ = latent_frames(nxt, grid)
        stop = first_a + prev.length // grid
        common_a, common_b = a[first_b - first_a : stop - first_a], b[: stop - first_b]
        diffs.append(float((common_a - common_b).pow(2).mean().sqrt()))
        scale.append(float(common_a.pow(2).mean().sqrt()))
    return max(d / c for d, c in zip(diffs, scale)), diffs


def test_shared_noise_and_inpainting_make_neighbouring_windows_agree(tmp_path: Path, single_thread) -> None:
    video = tmp_path / "clip.mp4"
    event_video(video, 3.0, events=[0.5, 1.2, 2.1], fps=25.0)
    results = {mode: _overlap_disagreement(tiny_real_pipeline(continuity=mode), video)
               for mode in ("independent", "shared_noise", "inpaint")}
    independent, shared, inpaint = (results[m][0] for m in ("independent", "shared_noise", "inpaint"))
    # Independent windows start from unrelated noise at the same absolute frames: the overlaps
    # disagree at the level of the latents themselves. Shared noise leaves only the difference the
    # conditioning context makes; inpainting copies the predecessor's frames exactly.
    # (Measured: 1.84, 0.063 and 0 relative RMS.)
    assert independent > 0.5, results
    assert shared < 0.5 * independent, results
    assert inpaint == 0.0, results
