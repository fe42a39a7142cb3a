"""A bell struck by a hammer: the synthetic world's first category outside the default pool.

It is not drawn by default (``foley synth`` without ``--categories``), so datasets and models of
the six default categories stay as they were; ``--categories bell`` asks for it. That makes it
the held-out category of the LoRA benchmark (``benchmarks/bench_lora_category.py``): a model
trained on the default world has never seen or heard a bell.

Look: a golden bell hangs from a beam on a rope; a hammer swings in from the side, its head
touches the bell's rim exactly on the strike frame, where the rim flashes. Sound: a bell's
inharmonic partials (hum, prime, tierce, quint, nominal...) ringing for about a second, plus a
metallic strike click; bigger bells ring lower, a wider swing strikes louder.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from foley.synth import sound
from foley.synth.draw import Canvas
from foley.synth.objects import PALETTE, SceneObject, Timeline, schedule_frames, size_word, strike_swing

__all__ = ["Bell"]

_BELL_COLORS = {"gold": (0.93, 0.72, 0.2), "bronze": (0.8, 0.5, 0.25), "silver": (0.78, 0.8, 0.84)}

class Bell(SceneObject):
    """A hanging bell struck by a hammer; each strike is a ``hit`` event.

    The hammer head is at the rim exactly on a strike frame; between strikes it swings out and
    back (farther for louder strikes). The rim flashes on the strike frame and fades over the
    next two. Fundamental ``90 / half_width`` Hz (about 600 to 1000 Hz).
    """

    category = "bell"
    MAX_SWING = 0.22

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        super().__init__(object_id, rng, timeline, region)
        self.half_width = float(rng.uniform(0.08, 0.13))
        self.color_name = str(rng.choice(sorted(_BELL_COLORS)))
        low = region[0] + self.half_width + 0.03
        high = max(low, region[1] - self.half_width - 0.25)
        self.x = float(rng.uniform(low, high))
        self.top = float(rng.uniform(0.28, 0.38))
        self.height = 1.5 * self.half_width
        self.strikes = schedule_frames(rng, timeline, first=(0.2, 1.0), gap=(0.45, 1.1))
        self.swings = rng.uniform(0.07, self.MAX_SWING, size=len(self.strikes))
        self.strike_times = np.asarray(self.strikes, dtype=np.float64) / timeline.fps
        self.fundamental_hz = 90.0 / self.half_width

    @property
    def rim(self) -> tuple[float, float]:
        """The point of the rim the hammer strikes (right side, near the lip)."""
        return self.x + self.half_width, self.top + 0.85 * self.height

    def swing_at(self, t: np.ndarray) -> np.ndarray:
        """Distance of the hammer head from the rim (0 exactly at strike times)."""
        return strike_swing(t, self.strike_times, self.swings, 0.12)

    def loudness(self) -> np.ndarray:
        return self.swings / self.MAX_SWING

    def events(self) -> list[dict[str, Any]]:
        out = []
        for frame, level in zip(self.strikes, self.loudness()):
            onset = self.timeline.time_of(frame)
            out.append(self._event(onset, min(round(onset + 1.2, 6), self.timeline.seconds), "hit",
                                   [[onset, round(self.x, 4)]], loudness=round(float(level), 4)))
        return out

    def draw(self, canvas: Canvas) -> None:
        w, top, h = self.half_width, self.top, self.height
        color = np.asarray(_BELL_COLORS[self.color_name])
        canvas.rect(self.x - 0.2, self.x + 0.2, 0.12, 0.15, (0.35, 0.25, 0.18))  # beam
        canvas.rect(self.x - 0.006, self.x + 0.006, 0.15, top, (0.6, 0.55, 0.45))  # rope
        canvas.ellipse(self.x, top + 0.25 * h, 0.55 * w, 0.3 * h, 0.9 * color)  # crown
        canvas.rect(self.x - 0.6 * w, self.x + 0.6 * w, top + 0.25 * h, top + 0.55 * h, 0.9 * color)  # waist
        canvas.rect(self.x - 0.8 * w, self.x + 0.8 * w, top + 0.55 * h, top + 0.8 * h, color)  # flare
        canvas.ellipse(self.x, top + 0.85 * h, w, 0.12 * h, color)  # lip
        canvas.ellipse(self.x, top + 0.9 * h, 0.12 * w, 0.12 * w, 0.5 * color)  # clapper
        strikes = np.asarray(self.strikes, dtype=np.int64)
        rim_x, rim_y = self.rim
        if len(strikes):
            level = 0.4 + 0.4 * self.loudness()
            for lag, fraction in ((0, 1.0), (1, 0.3), (2, 0.1)):
                frames = strikes + lag
                keep = frames < self.timeline.num_frames
                canvas.glow(rim_x, rim_y, 0.6 * w, (1.0, 0.95, 0.7), fraction * level[keep], frames=frames[keep])
        # The hammer: a head that swings out along the upper right and back onto the rim.
        swing = self.swing_at(self.timeline.frame_times)
        head_x = rim_x + 0.03 + 0.8 * swing
        head_y = rim_y - 0.9 * swing
        canvas.segment(head_x, head_y, head_x + 0.16, head_y + 0.1, 0.022, (0.55, 0.38, 0.22))  # handle
        canvas.rect(head_x - 0.03, head_x + 0.03, head_y - 0.035, head_y + 0.035, PALETTE["white"])

    def add_sound(self, out: np.ndarray) -> None:
        for event, level in zip(self.events(), self.loudness()):
            ring = sound.bell_strike(self.rng, self.fundamental_hz, self.timeline.sample_rate)
            sound.place_panned(out, self.timeline.sample_of(event["onset"]), 0.5 * level * ring, self.x)

    def phrase(self) -> str:
        return f"a hammer strikes a {size_word(self.half_width, 0.08, 0.13)} {self.color_name} bell"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": round(self.half_width, 4), "pitch_hz": round(self.fundamental_hz, 2),
                "x": round(self.x, 4), "y": round(self.rim[1], 4)}
