"""Small stand-ins and synthetic panned clips for the stage-3 / pipeline / generate tests.

``FakeCodec`` has the stage-1 codec interface the stereo stage uses (``mel``, ``vocode``,
``sample_rate``, ``hop_length``) with the real mel front end and a magnitude-only
pseudo-inverse "vocoder" (fixed phase), so level differences survive the round trip.
``FakeFlow`` has ``FlowModule``'s generation interface (``generate_latents``, ``latent_mel``):
its audio holds a click at every frame where the sync stream changes, so the output is a
deterministic function of the video timing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class FakeCodec(nn.Module):
    def __init__(self, sample_rate: int = 44100, hop_length: int = 512, n_mels: int = 32, n_fft: int = 2048) -> None:
        super().__init__()
        from foley.models.mel import LogMelSpectrogram

        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.mel = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_fft, n_mels)
        self.register_buffer("inverse", torch.linalg.pinv(self.mel.mel_basis))
        self.gain = nn.Parameter(torch.ones(()))  # a weight, so state-dict round trips are exercised

    def vocode(self, mel: Tensor) -> Tensor:
        magnitude = (self.inverse @ mel.exp()).clamp_min(0.0)
        phase = torch.exp(1j * torch.linspace(0, 50.0, magnitude.shape[-2]))[:, None]
        frames = mel.shape[-1]
        window = self.mel.window
        return self.gain * torch.istft(
            magnitude * phase, self.mel.n_fft, self.hop_length, window=window, center=True, length=frames * self.hop_length
        )


class FakeFlow(nn.Module):
    """``FlowModule``'s generation interface; its "latents" are a waveform of clicks at video changes.

    ``generate_latents`` returns ``(B, T, grid)``: a waveform cut into latent frames of
    ``grid`` samples, with a decaying click at every frame where the sync stream changes, so
    the pipeline's output is a deterministic function of the video timing; ``latent_mel``
    is the codec's mel of that waveform. The default grid is one 25 fps video frame (1764
    samples), so windows start on the video frame grid of 25 fps test videos and every window
    samples the video at the same phase (the click sits on the first stream frame after a
    change, up to one frame late; the same lag in every window). Noise and known latents are
    recorded, not used.
    """

    def __init__(self, codec: FakeCodec, grid: int = 1764) -> None:
        super().__init__()
        self.sample_rate = codec.sample_rate
        self.samples_per_latent = grid
        self.latent_channels = grid
        self.mel = codec.mel
        self.hop_length = codec.hop_length
        self.level = nn.Parameter(torch.tensor(0.5))
        self.calls: list[dict[str, Any]] = []

    def clicks(self, batch: dict) -> Tensor:
        b = batch["sync_frames"].shape[0]
        n = int(batch["audio_mask"].shape[-1])
        frames = batch["sync_frames"].float()
        fps = float(frames.shape[1]) / float(batch["seconds_total"][0])
        change = (frames[:, 1:] - frames[:, :-1]).abs().flatten(2).mean(-1) > 1.0
        out = torch.zeros(b, n)
        decay = torch.exp(-torch.arange(2000) / 200.0)
        for i, j in change.nonzero().tolist():
            start = int(round((j + 1) / fps * self.sample_rate))
            stop = min(n, start + decay.numel())
            if start < n:
                out[i, start:stop] += float(self.level) * decay[: stop - start]
        return out

    @torch.no_grad()
    def generate_latents(self, batch: dict, steps: int = 25, cfg: float = 4.5, seed: int = 0,
                         negative_prompt: str | None = None, noise: Tensor | None = None,
                         known: Tensor | None = None, known_mask: Tensor | None = None) -> Tensor:
        self.calls.append({"steps": steps, "cfg": cfg, "seed": seed, "negative_prompt": negative_prompt,
                           "caption": list(batch["caption"]), "noise": noise, "known_mask": known_mask,
                           "sync_frames": batch["sync_frames"], "seconds_total": batch["seconds_total"]})
        wave = self.clicks(batch)
        grid = self.samples_per_latent
        return torch.nn.functional.pad(wave, (0, (-wave.shape[-1]) % grid)).unflatten(-1, (-1, grid))

    @torch.no_grad()
    def latent_mel(self, latent: Tensor) -> Tensor:
        wave = latent.flatten(1)
        return self.mel(torch.nn.functional.pad(wave, (0, (-wave.shape[-1]) % self.hop_length)))


def panned_batch(
    count: int,
    seed: int,
    seconds: float = 1.0,
    sample_rate: int = 44100,
    fps: float = 25.0,
    size: int = 32,
) -> dict[str, Any]:
    """Clips of one noise source moving across the screen, amplitude-panned by its x position.

    The video shows a white square at the source position (x = 0 is the left edge, fully left).
    """
    gen = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t_frames = int(math.floor(seconds * fps + 1e-6))
    audio = np.zeros((count, 2, n), dtype=np.float32)
    frames = np.zeros((count, t_frames, 3, size, size), dtype=np.uint8)
    times = np.arange(n) / sample_rate
    for i in range(count):
        x0, x1 = gen.uniform(0, 1, size=2)
        x = x0 + (x1 - x0) * times / seconds
        noise = gen.standard_normal(n)
        # Bursts with gaps, so the clip's level changes and the ILD is measured where it sounds.
        envelope = 0.3 + 0.7 * (np.sin(2 * np.pi * gen.uniform(1.5, 4) * times + gen.uniform(0, 6)) > 0)
        source = 0.2 * noise * envelope
        audio[i, 0] = np.cos(np.pi / 2 * x) * source
        audio[i, 1] = np.sin(np.pi / 2 * x) * source
        row = gen.integers(0, size - 6)
        for k in range(t_frames):
            col = int(round((x0 + (x1 - x0) * (k / fps) / seconds) * (size - 6)))
            frames[i, k, :, row : row + 6, col : col + 6] = 255
    from foley.batch import collate_examples

    return collate_examples([
        {"audio": torch.from_numpy(audio[i]), "sync_frames": torch.from_numpy(frames[i]), "caption": "",
         "seconds_start": 0.0, "seconds_total": seconds, "key": f"pan-{seed}-{i}", "meta": {}}
        for i in range(count)
    ])


def tiny_pipeline(window_seconds: float = 8.0, overlap_seconds: float = 1.0, continuity: str = "inpaint"):
    """A FoleyPipeline of FakeFlow + a real (untrained, tiny) StereoModule on FakeCodec."""
    from foley.models.mono2stereo import Mono2Stereo
    from foley.pipeline import FoleyPipeline, PipelineSettings
    from foley.stages.stereo_module import StereoModule

    codec = FakeCodec()
    stereo = StereoModule(Mono2Stereo(n_mels=32, hidden=8, layers=1, video_channels=4, video_size=16, video_columns=4), codec=codec)
    settings = PipelineSettings(
        window_seconds=window_seconds, overlap_seconds=overlap_seconds, clip_size=16, sync_size=16, window_batch=4,
        continuity=continuity,
    )
    return FoleyPipeline(FakeFlow(codec), stereo, settings)


def event_video(path, seconds: float, events: list[float], fps: float = 25.0, size: int = 32) -> None:
    """A video whose brightness steps up at each event time (the only frame changes)."""
    from foley.io.media import write_video

    count = int(round(seconds * fps))
    frames = np.zeros((count, size, size, 3), dtype=np.uint8)
    for k, t in enumerate(sorted(events)):
        frames[int(round(t * fps)) :] = min(255, 30 * (k + 1))
    write_video(path, frames, fps)
