"""The sounding objects of the synthetic world.

Each object plans its own behaviour from a private random generator, then draws itself
onto a :class:`~foley.synth.draw.Canvas` and adds its sound to a stereo buffer. Sound
events are scheduled on the frame grid (onset = frame / fps), so the frame that shows
the cause (contact, hit, switch-on) is displayed exactly when the sound starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.signal import fftconvolve

from foley.synth import sound
from foley.synth.draw import Canvas, hsv_to_rgb

FLOOR_Y = 0.8  # floor line (normalised, from the top); standing objects rest on it
FADE_SECONDS = 0.005  # fade length of continuous sources, inside their event interval

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.18, 0.15),
    "orange": (1.0, 0.55, 0.1),
    "yellow": (0.97, 0.9, 0.2),
    "green": (0.25, 0.88, 0.3),
    "cyan": (0.2, 0.85, 0.92),
    "blue": (0.25, 0.42, 1.0),
    "purple": (0.68, 0.32, 0.98),
    "pink": (1.0, 0.5, 0.78),
    "white": (0.95, 0.95, 0.95),
}

# Hue bins of the lamp's light, for captions: (upper hue bound, name).
_HUE_NAMES = ((0.05, "red"), (0.11, "orange"), (0.19, "yellow"), (0.42, "green"), (0.55, "cyan"), (0.72, "blue"), (0.85, "purple"))


@dataclass(frozen=True)
class Timeline:
    """Frame and sample grids of one clip.

    Args:
        seconds: Clip duration.
        fps: Video frame rate.
        sample_rate: Audio sample rate.
    """

    seconds: float
    fps: float
    sample_rate: int

    @property
    def num_frames(self) -> int:
        return int(math.floor(self.seconds * self.fps + 1e-6))

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def frame_times(self) -> np.ndarray:
        return np.arange(self.num_frames) / self.fps

    @property
    def sample_times(self) -> np.ndarray:
        return np.arange(self.num_samples) / self.sample_rate

    def time_of(self, frame: int) -> float:
        """Event time of a frame, as stored in the metadata (the audio onset is ``round(time * sr)``)."""
        return min(round(frame / self.fps, 6), self.seconds)

    def sample_of(self, time: float) -> int:
        return int(round(time * self.sample_rate))

    def frames(self, seconds: float) -> int:
        return int(round(seconds * self.fps))


def schedule_frames(rng: np.random.Generator, timeline: Timeline, first: tuple[float, float], gap: tuple[float, float], min_gap_frames: int = 3) -> list[int]:
    """Event frames: the first within ``first`` seconds, then gaps drawn from ``gap`` seconds."""
    frames: list[int] = []
    frame = max(1, timeline.frames(rng.uniform(*first)))
    while frame < timeline.num_frames:
        frames.append(frame)
        frame += max(min_gap_frames, timeline.frames(rng.uniform(*gap)))
    return frames


def strike_swing(t: np.ndarray, times: np.ndarray, amplitudes: np.ndarray, rest: float) -> np.ndarray:
    """Distance of a striker (drum stick, hammer) from what it strikes at times ``t``: 0 exactly
    at the strike ``times``, a half-sine swing of ``amplitudes[j]`` before strike ``j`` (held up,
    then a 0.3 s swing into the first one), and back out to ``rest`` over 0.3 s after the last."""
    distance = np.full(len(t), rest)
    if not len(times):
        return distance
    before = t <= times[0]
    distance[before] = amplitudes[0] * np.sin(0.5 * np.pi * np.minimum(1.0, (times[0] - t[before]) / 0.3))
    for j in range(1, len(times)):
        start, stop = times[j - 1], times[j]
        inside = (t > start) & (t <= stop)
        distance[inside] = amplitudes[j] * np.sin(np.pi * (t[inside] - start) / (stop - start))
    after = t > times[-1]
    distance[after] = rest * np.sin(np.minimum(np.pi / 2, np.pi * (t[after] - times[-1]) / 0.6))
    return distance


def size_word(value: float, low: float, high: float) -> str:
    third = (high - low) / 3
    return "small" if value < low + third else ("large" if value > high - third else "medium")


class SceneObject:
    """Base class: one object with its behaviour, drawing and sound.

    Args:
        object_id: Index of the object in the clip.
        rng: Private random generator (all randomness of the object comes from it).
        timeline: The clip's frame/sample grids.
        region: Horizontal extent ``(left, right)`` the object may use.
    """

    category: ClassVar[str] = ""
    layer: ClassVar[int] = 1  # drawing order: 0 background, 1 standing, 2 foreground

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        self.object_id = object_id
        self.rng = rng
        self.timeline = timeline
        self.region = region
        self.color_name = "white"

    def events(self) -> list[dict[str, Any]]:
        return []

    def draw(self, canvas: Canvas) -> None:
        raise NotImplementedError

    def add_sound(self, out: np.ndarray) -> None:
        """Add this object's stereo sound into ``out`` (2, N)."""

    def phrase(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"object_id": self.object_id, "category": self.category, "color": self.color_name}

    def _event(self, onset: float, offset: float, kind: str, x: list[list[float]], **extra: Any) -> dict[str, Any]:
        return {
            "onset": onset,
            "offset": offset,
            "type": kind,
            "object_id": self.object_id,
            "x": x,
            "category": self.category,
            **extra,
        }


class BouncingBall(SceneObject):
    """A ball bouncing on the floor; each floor contact is an impact.

    Flight times between contacts set the bounce height (g*dt^2/8) and the impact
    speed (g*dt/2), and the impact loudness is proportional to that speed. Smaller balls
    ring higher. The contact frame shows the ball squashed on the floor with a flash.
    """

    category = "bouncing_ball"
    GRAVITY = 3.3  # frame heights / s^2; the longest flight (1.1 s) rises 0.5 frame heights
    MAX_FLIGHT = 1.1

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        super().__init__(object_id, rng, timeline, region)
        self.radius = float(rng.uniform(0.06, 0.12))
        self.color_name = str(rng.choice(["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]))
        self.contacts = schedule_frames(rng, timeline, first=(0.15, 1.0), gap=(0.35, self.MAX_FLIGHT))
        first = self.contacts[0] if self.contacts else timeline.num_frames
        # The flight that ends at the first contact starts before the clip, so no frame
        # shows a floor contact without its sound.
        shortest = max(0.35, (first + 1) / timeline.fps) if self.contacts else 0.35
        before = first - max(3, timeline.frames(rng.uniform(shortest, max(shortest, self.MAX_FLIGHT))))
        last = self.contacts[-1] if self.contacts else first
        after = max(last, first) + max(3, timeline.frames(rng.uniform(0.35, self.MAX_FLIGHT)))
        self.knots = np.array([before, *self.contacts, after], dtype=np.float64) / timeline.fps
        span = max(region[1] - region[0] - 2.4 * self.radius, 1e-3)
        self.x_low = region[0] + 1.2 * self.radius
        self.x_span = span
        self.x_start = float(rng.uniform(0, span))
        self.x_speed = float(rng.uniform(0.03, 0.15) * rng.choice([-1, 1]))
        self.pitch_hz = 55.0 / self.radius

    def x_at(self, t: np.ndarray | float) -> np.ndarray:
        u = np.mod(self.x_start + self.x_speed * np.asarray(t, dtype=np.float64), 2 * self.x_span)
        return self.x_low + np.where(u > self.x_span, 2 * self.x_span - u, u)

    def height_at(self, t: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(self.knots, t, side="right") - 1, 0, len(self.knots) - 2)
        start, stop = self.knots[index], self.knots[index + 1]
        return np.maximum(0.5 * self.GRAVITY * (t - start) * (stop - t), 0.0)

    def impact_speeds(self) -> np.ndarray:
        return self.GRAVITY * np.diff(self.knots)[: len(self.contacts)] / 2

    def loudness(self) -> np.ndarray:
        """Relative impact loudness in (0, 1]: impact speed / the largest possible speed."""
        return self.impact_speeds() / (self.GRAVITY * self.MAX_FLIGHT / 2)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for frame, level in zip(self.contacts, self.loudness()):
            onset = self.timeline.time_of(frame)
            out.append(self._event(onset, min(round(onset + 0.25, 6), self.timeline.seconds), "impact",
                                   [[onset, round(float(self.x_at(onset)), 4)]], loudness=round(float(level), 4)))
        return out

    def draw(self, canvas: Canvas) -> None:
        times = self.timeline.frame_times
        x = self.x_at(times)
        height = self.height_at(times)
        rx = np.full(len(times), self.radius)
        ry = np.full(len(times), self.radius)
        contact = np.asarray(self.contacts, dtype=np.int64)
        rx[contact] *= 1.3
        ry[contact] *= 0.7
        cy = FLOOR_Y - ry - height
        # Shadow: sharper and larger as the ball comes down.
        closeness = 1.0 - np.clip(height / 0.5, 0, 1)
        canvas.ellipse(x, FLOOR_Y + 0.012, self.radius * (0.6 + 0.6 * closeness), 0.018, (0.0, 0.0, 0.0), alpha=0.35 + 0.4 * closeness)
        if len(contact):
            # The flash lights the floor and wall around the ball; the opaque ball drawn
            # on top keeps its colour.
            level = 0.5 + 0.5 * self.loudness()
            canvas.glow(x[contact], FLOOR_Y, 1.6 * self.radius, (1.0, 1.0, 0.9), level, frames=contact)
            follow = contact[contact + 1 < self.timeline.num_frames] + 1
            canvas.glow(x[follow], FLOOR_Y, 1.6 * self.radius, (1.0, 1.0, 0.9), 0.4 * level[: len(follow)], frames=follow)
        canvas.ellipse(x, cy, rx, ry, PALETTE[self.color_name])
        canvas.glow(x - 0.35 * rx, cy - 0.35 * ry, 0.3 * self.radius, (1.0, 1.0, 1.0), 0.3)

    def add_sound(self, out: np.ndarray) -> None:
        for event, level in zip(self.events(), self.loudness()):
            ring = sound.impact_modes(self.rng, self.pitch_hz, self.timeline.sample_rate)
            sound.place_panned(out, self.timeline.sample_of(event["onset"]), 0.55 * level * ring, event["x"][0][1])

    def phrase(self) -> str:
        return f"a {size_word(self.radius, 0.06, 0.12)} {self.color_name} ball bounces on the floor"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": round(self.radius, 4), "pitch_hz": round(self.pitch_hz, 2)}


class Drum(SceneObject):
    """A drum struck by a stick; the stick's raise before a hit sets the hit's loudness.

    The stick tip touches the drum head exactly on the hit frame, where the head also
    flashes. Bigger drums sound lower.
    """

    category = "drum"
    MAX_RAISE = 0.3

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        super().__init__(object_id, rng, timeline, region)
        self.half_width = float(rng.uniform(0.09, 0.14))
        self.color_name = str(rng.choice(["red", "blue", "green", "orange", "purple", "cyan"]))
        low = region[0] + self.half_width + 0.02
        high = max(low, region[1] - self.half_width - 0.2)
        self.x = float(rng.uniform(low, high))
        self.body_height = 1.1 * self.half_width
        self.head_y = FLOOR_Y - self.body_height
        self.hits = schedule_frames(rng, timeline, first=(0.2, 1.0), gap=(0.3, 0.9))
        self.raises = rng.uniform(0.08, self.MAX_RAISE, size=len(self.hits))
        self.hit_times = np.asarray(self.hits, dtype=np.float64) / timeline.fps
        self.rest = 0.22
        self.low_hz = 11.0 / self.half_width

    def raise_at(self, t: np.ndarray) -> np.ndarray:
        """Height of the stick tip above the drum head (0 exactly at hit times)."""
        return strike_swing(t, self.hit_times, self.raises, self.rest)

    def loudness(self) -> np.ndarray:
        return self.raises / self.MAX_RAISE

    def events(self) -> list[dict[str, Any]]:
        out = []
        for frame, level in zip(self.hits, self.loudness()):
            onset = self.timeline.time_of(frame)
            out.append(self._event(onset, min(round(onset + 0.6, 6), self.timeline.seconds), "hit",
                                   [[onset, round(self.x, 4)]], loudness=round(float(level), 4)))
        return out

    def draw(self, canvas: Canvas) -> None:
        w, color = self.half_width, np.asarray(PALETTE[self.color_name])
        canvas.rect(self.x - w, self.x + w, self.head_y, FLOOR_Y, 0.75 * color)
        canvas.ellipse(self.x, FLOOR_Y, w, 0.3 * w, 0.6 * color)
        canvas.ellipse(self.x, self.head_y, w, 0.3 * w, (0.7, 0.64, 0.5))
        hits = np.asarray(self.hits, dtype=np.int64)
        if len(hits):
            # Head colour + flash stays below white after the hit frame, so the hit frame
            # is the brightest one.
            level = 0.35 + 0.35 * self.loudness()
            for lag, fraction in ((0, 1.0), (1, 0.3), (2, 0.1)):
                frames = hits + lag
                keep = frames < self.timeline.num_frames
                canvas.glow(self.x, self.head_y, 0.9 * w, (1.0, 1.0, 0.85), fraction * level[keep], frames=frames[keep])
        height = self.raise_at(self.timeline.frame_times)
        tip_x = self.x + 0.3 * w
        tip_y = self.head_y - 0.3 * w * 0.3 - height
        canvas.segment(tip_x + 0.22, tip_y - 0.1 - 0.3 * height, tip_x, tip_y, 0.028, (0.98, 0.92, 0.75))

    def add_sound(self, out: np.ndarray) -> None:
        for event, level in zip(self.events(), self.loudness()):
            stroke = sound.membrane_hit(self.rng, self.low_hz, self.timeline.sample_rate)
            sound.place_panned(out, self.timeline.sample_of(event["onset"]), 0.6 * level * stroke, self.x)

    def phrase(self) -> str:
        return f"a stick hits a {size_word(self.half_width, 0.09, 0.14)} {self.color_name} drum"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": round(self.half_width, 4), "pitch_hz": round(self.low_hz, 2),
                "x": round(self.x, 4), "y": round(self.head_y, 4)}


class Lamp(SceneObject):
    """A lamp that switches on and off; while lit it hums at a pitch set by its colour.

    Hue h in [0, 0.75] maps to 220 * 4**h Hz (red 220 Hz ... blue/purple ~620 Hz); the
    hue may glide while lit and the pitch glides with it. Bigger bulbs are louder.
    """

    category = "lamp"
    MAX_HUE = 0.75

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        super().__init__(object_id, rng, timeline, region)
        self.bulb = float(rng.uniform(0.06, 0.1))
        self.x = float(rng.uniform(region[0] + 0.1, region[1] - 0.1))
        self.bulb_y = float(rng.uniform(0.3, 0.45))
        self.intervals: list[tuple[int, int, float, float]] = []
        frame = 0 if rng.random() < 0.25 else max(1, timeline.frames(rng.uniform(0.2, 1.5)))
        while frame < timeline.num_frames - timeline.frames(0.3):
            stop = min(timeline.num_frames, frame + max(3, timeline.frames(rng.uniform(0.8, 3.0))))
            hue_start = float(rng.uniform(0, self.MAX_HUE))
            hue_stop = hue_start
            if rng.random() < 0.35:
                hue_stop = float(np.clip(hue_start + rng.choice([-1, 1]) * rng.uniform(0.1, 0.25), 0, self.MAX_HUE))
            self.intervals.append((frame, stop, hue_start, hue_stop))
            frame = stop + max(3, timeline.frames(rng.uniform(0.4, 1.5)))
        hues = [iv[2] for iv in self.intervals] or [0.0]
        self.color_name = hue_name(hues[0])

    @staticmethod
    def pitch(hue: np.ndarray | float) -> np.ndarray:
        return 220.0 * 4.0 ** np.asarray(hue)

    def _bounds(self, start: int, stop: int) -> tuple[float, float]:
        return self.timeline.time_of(start), self.timeline.time_of(stop)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for start, stop, hue_start, hue_stop in self.intervals:
            onset, offset = self._bounds(start, stop)
            out.append(self._event(onset, offset, "tone", [[onset, round(self.x, 4)]],
                                   pitch_hz=[[onset, round(float(self.pitch(hue_start)), 2)], [offset, round(float(self.pitch(hue_stop)), 2)]]))
        return out

    def draw(self, canvas: Canvas) -> None:
        canvas.rect(self.x - 0.012, self.x + 0.012, self.bulb_y, FLOOR_Y, (0.55, 0.55, 0.58))
        canvas.rect(self.x - 0.07, self.x + 0.07, FLOOR_Y - 0.03, FLOOR_Y + 0.005, (0.6, 0.6, 0.62))
        canvas.ellipse(self.x, self.bulb_y, self.bulb, self.bulb, (0.28, 0.28, 0.3))
        for start, stop, hue_start, hue_stop in self.intervals:
            frames = np.arange(start, stop)
            progress = (frames - start) / max(stop - start, 1)
            color = hsv_to_rgb(hue_start + (hue_stop - hue_start) * progress, 0.85, 1.0)
            # Halo first, then the opaque bulb: the bulb shows its exact hue, unclipped.
            canvas.glow(self.x, self.bulb_y, 2.2 * self.bulb, color, 0.55, frames=frames)
            canvas.ellipse(self.x, self.bulb_y, self.bulb, self.bulb, color, frames=frames)

    def add_sound(self, out: np.ndarray) -> None:
        sr = self.timeline.sample_rate
        level = 0.1 + 0.08 * (self.bulb - 0.06) / 0.04
        for start, stop, hue_start, hue_stop in self.intervals:
            onset, offset = self._bounds(start, stop)
            first, last = self.timeline.sample_of(onset), min(self.timeline.sample_of(offset), out.shape[1])
            progress = np.arange(last - first) / max(last - first, 1)
            tone = sound.harmonic_tone(self.pitch(hue_start + (hue_stop - hue_start) * progress), sr)
            envelope = sound.gate(out.shape[1], first, last, int(FADE_SECONDS * sr))[first:last]
            sound.place_panned(out, first, level * tone * envelope, self.x)

    def phrase(self) -> str:
        names = list(dict.fromkeys(hue_name(hue) for iv in self.intervals for hue in (iv[2], iv[3])))
        if len(names) <= 1:
            return f"a lamp glows {self.color_name} and hums"
        shown = names[:3]
        listing = ", ".join(shown[:-1]) + f" and {shown[-1]}"
        return f"a lamp glows {listing} in turn and hums"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": round(self.bulb, 4), "x": round(self.x, 4), "y": round(self.bulb_y, 4)}


def hue_name(hue: float) -> str:
    for bound, name in _HUE_NAMES:
        if hue < bound:
            return name
    return "purple"


class Vehicle(SceneObject):
    """A car crossing the frame; engine noise panned with its x position.

    Bigger cars are louder and lower; faster cars rev higher. The engine starts on the
    frame the car's front enters and stops on the frame its rear has left, and it is
    louder when the whole car is in view.
    """

    category = "vehicle"
    layer = 2

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        super().__init__(object_id, rng, timeline, region)
        self.length = float(rng.uniform(0.26, 0.4))
        self.direction = int(rng.choice([-1, 1]))
        self.speed = float(rng.uniform(0.22, 0.5))
        self.color_name = str(rng.choice(["red", "blue", "yellow", "green", "white", "orange", "cyan"]))
        crossing = timeline.frames((1 + self.length) / self.speed) + 1
        latest = max(0, timeline.num_frames - crossing)
        latest = latest if latest > 0 else timeline.frames(0.3 * timeline.seconds)
        self.start = int(rng.integers(0, latest + 1))
        self.stop = self.start + crossing  # the rear has left the frame by this frame
        self.engine_hz = (28.0 + 60.0 * self.speed) * math.sqrt(0.33 / self.length)

    def centre_at(self, t: np.ndarray) -> np.ndarray:
        travelled = self.speed * (np.asarray(t, dtype=np.float64) - self.start / self.timeline.fps)
        if self.direction > 0:
            return -self.length / 2 + travelled
        return 1 + self.length / 2 - travelled

    def visible_fraction(self, t: np.ndarray) -> np.ndarray:
        centre = self.centre_at(t)
        left, right = centre - self.length / 2, centre + self.length / 2
        return np.clip(np.minimum(right, 1.0) - np.maximum(left, 0.0), 0.0, None) / self.length

    def _frames(self) -> np.ndarray:
        return np.arange(self.start, min(self.stop, self.timeline.num_frames))

    def events(self) -> list[dict[str, Any]]:
        onset, offset = self.timeline.time_of(self.start), self.timeline.time_of(self.stop)
        frames = self._frames()
        track = [[self.timeline.time_of(int(i)), round(float(np.clip(self.centre_at(i / self.timeline.fps), 0, 1)), 4)] for i in frames]
        return [self._event(onset, offset, "engine", track)]

    def draw(self, canvas: Canvas) -> None:
        frames = self._frames()
        if not len(frames):
            return
        length, d = self.length, self.direction
        centre = self.centre_at(frames / self.timeline.fps)
        ground = 0.975
        wheel = 0.11 * length
        body_bottom = ground - 0.8 * wheel
        body_top = body_bottom - 0.28 * length
        color = np.asarray(PALETTE[self.color_name])

        def along(u: float) -> np.ndarray:
            return centre + d * u * length

        canvas.rect(centre - length / 2, centre + length / 2, body_top, body_bottom, color, frames=frames)
        cabin = np.sort(np.stack([along(-0.32), along(0.18)]), axis=0)
        canvas.rect(cabin[0], cabin[1], body_top - 0.2 * length, body_top + 0.005, 0.8 * color, frames=frames)
        window = np.sort(np.stack([along(-0.27), along(0.13)]), axis=0)
        canvas.rect(window[0], window[1], body_top - 0.17 * length, body_top - 0.02 * length, (0.55, 0.75, 0.95), frames=frames)
        for u in (-0.3, 0.3):
            canvas.ellipse(along(u), ground - wheel, wheel, wheel, (0.08, 0.08, 0.08), frames=frames)
            canvas.ellipse(along(u), ground - wheel, 0.45 * wheel, 0.45 * wheel, (0.7, 0.7, 0.7), frames=frames)
        canvas.glow(along(0.5), 0.5 * (body_top + body_bottom), 0.035, (1.0, 0.95, 0.55), 0.9, frames=frames)

    def add_sound(self, out: np.ndarray) -> None:
        sr = self.timeline.sample_rate
        first = self.timeline.sample_of(self.timeline.time_of(self.start))
        last = min(self.timeline.sample_of(self.timeline.time_of(self.stop)), out.shape[1])
        if last <= first:
            return
        t = np.arange(first, last) / sr
        phase = 2 * np.pi * self.engine_hz * (t - t[0])
        # Sawtooth-like engine: harmonics 1/k, gently amplitude-modulated at the firing rate.
        engine = sum(np.sin(k * phase) / k for k in range(1, 9)) / 2.7
        engine *= 1.0 + 0.25 * np.sin(0.5 * phase)
        rumble = sound.lowpass(self.rng.standard_normal(len(t)), 500.0, sr)
        rumble /= max(np.max(np.abs(rumble)), 1e-9)
        level = 0.16 * (self.length / 0.33) * (0.7 + 0.6 * self.speed)
        envelope = sound.gate(out.shape[1], first, last, int(FADE_SECONDS * sr))[first:last]
        envelope *= 0.45 + 0.55 * self.visible_fraction(t)
        signal = level * envelope * (0.75 * engine + 0.35 * rumble)
        sound.place_panned(out, first, signal, np.clip(self.centre_at(t), 0.0, 1.0))

    def phrase(self) -> str:
        way = "from left to right" if self.direction > 0 else "from right to left"
        return f"a {size_word(self.length, 0.26, 0.4)} {self.color_name} car drives {way}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": round(self.length, 4), "speed": round(self.speed, 4),
                "direction": self.direction, "pitch_hz": round(self.engine_hz, 2)}


class Rain(SceneObject):
    """Rain: drops fall from the clouds and patter where they land.

    Every landing is a panned click at its exact time and x; a hiss follows the number
    of drops in view. Both sound only between the event's onset (the frame of the first
    landing) and offset.
    """

    category = "rain"
    layer = 0

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        super().__init__(object_id, rng, timeline, region)
        self.color_name = "grey"
        frames = timeline.num_frames
        late_start = rng.random() >= 0.5 and timeline.seconds > 1.0
        self.start = max(1, timeline.frames(rng.uniform(0.3, max(0.3, 0.4 * timeline.seconds)))) if late_start else 0
        early_stop = rng.random() >= 0.5 and timeline.seconds > 2.0
        self.stop = min(frames, self.start + max(3, timeline.frames(rng.uniform(2.0, timeline.seconds)))) if early_stop else frames
        self.rate = float(rng.uniform(30, 120))  # landings per second at full intensity
        period, offset = rng.uniform(3, 8), rng.uniform(0, 2 * np.pi)
        onset, offset_t = timeline.time_of(self.start), timeline.time_of(self.stop)
        count = rng.poisson(self.rate * max(offset_t - onset, 0))
        landing = np.sort(rng.uniform(onset, offset_t, size=count))
        # Intensity swings between 15% and 100%: the number of drops in view (and the
        # patter density with it) rises and falls within a clip.
        keep = rng.random(count) < 0.575 + 0.425 * np.sin(2 * np.pi * landing / period + offset)
        # The first drop lands exactly at the onset: the sound starts on the onset sample.
        self.landing = np.concatenate([[onset], landing[keep]]) if offset_t > onset else np.zeros(0)
        n = len(self.landing)
        self.drop_x = rng.uniform(0.02, 0.98, size=n)
        self.drop_floor = rng.uniform(FLOOR_Y, 0.97, size=n)
        self.drop_speed = rng.uniform(1.3, 1.9, size=n)
        self.drop_level = rng.uniform(0.4, 1.0, size=n)
        if n:
            self.drop_level[0] = 1.0
        self.spawn = self.landing - (self.drop_floor + 0.05) / self.drop_speed

    def _visibility(self) -> tuple[np.ndarray, np.ndarray]:
        """(drop index, frame) pairs for every frame showing a falling drop."""
        fps = self.timeline.fps
        first = np.maximum(np.ceil(self.spawn * fps - 1e-9), 0).astype(np.int64)
        last = np.minimum(np.ceil(self.landing * fps - 1e-9).astype(np.int64), self.timeline.num_frames)  # exclusive
        counts = np.maximum(last - first, 0)
        drop = np.repeat(np.arange(len(self.landing)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return drop, first[drop] + offsets

    def visible_counts(self) -> np.ndarray:
        """Number of falling drops in each frame."""
        _, frame = self._visibility()
        return np.bincount(frame, minlength=self.timeline.num_frames).astype(np.float64)

    def events(self) -> list[dict[str, Any]]:
        if not len(self.landing):
            return []
        onset, offset = self.timeline.time_of(self.start), self.timeline.time_of(self.stop)
        return [self._event(onset, offset, "rain", [[onset, 0.5]], drops_per_second=round(self.rate, 2))]

    def draw(self, canvas: Canvas) -> None:
        canvas.rect(0.0, 1.0, 0.0, 0.13, (0.42, 0.44, 0.5), alpha=0.9)
        for cx in (0.15, 0.45, 0.75):
            canvas.ellipse(cx, 0.12, 0.16, 0.06, (0.46, 0.48, 0.54))
        drop, frame = self._visibility()
        if len(drop):
            y = (frame / self.timeline.fps - self.spawn[drop]) * self.drop_speed[drop] - 0.05
            streak = max(2, round(0.05 * canvas.size))
            steps = np.arange(streak) / canvas.size
            ys = (y[:, None] - steps[None, :]).ravel()
            # Drops about 1/64 of the frame wide, so they survive downsampling to 32 px.
            for column in range(max(1, round(canvas.size / 64))):
                xs = np.repeat(self.drop_x[drop] + column / canvas.size, streak)
                canvas.dots(np.repeat(frame, streak), ys, xs, (0.75, 0.85, 1.0), alpha=0.85)
        splash = np.floor(self.landing * self.timeline.fps + 1e-9).astype(np.int64)
        for dx in (-1.5, 0.0, 1.5):
            canvas.dots(splash, self.drop_floor - 0.5 / canvas.size, self.drop_x + dx / canvas.size, (0.9, 0.95, 1.0), alpha=0.9)

    def add_sound(self, out: np.ndarray) -> None:
        if not len(self.landing):
            return
        sr, n = self.timeline.sample_rate, out.shape[1]
        first = self.timeline.sample_of(self.timeline.time_of(self.start))
        last = min(self.timeline.sample_of(self.timeline.time_of(self.stop)), n)
        impulses = np.zeros((2, n))
        position = np.round(self.landing * sr).astype(np.int64)
        keep = (position >= first) & (position < last)
        left, right = sound.pan_gains(self.drop_x[keep])
        np.add.at(impulses[0], position[keep], left * self.drop_level[keep])
        np.add.at(impulses[1], position[keep], right * self.drop_level[keep])
        length = int(0.012 * sr)
        t = np.arange(length) / sr
        kernel = self.rng.standard_normal(length) * np.exp(-t / 0.0015) + 0.8 * np.sin(2 * np.pi * 3100 * t) * np.exp(-t / 0.004)
        kernel[0] = abs(kernel[0]) + 0.5  # a sharp leading edge right on the landing sample
        kernel /= np.max(np.abs(kernel))
        clicks = fftconvolve(impulses, kernel[None, :], axes=1)[:, :n]
        # Hiss level follows the number of drops in view, interpolated between frames.
        density = np.interp(np.arange(n) / sr, self.timeline.frame_times, self.visible_counts()) / max(self.rate * 0.6, 1.0)
        hiss = sound.bandpass(self.rng.standard_normal((2, n)), 4500.0, 0.6, sr)
        hiss /= max(np.max(np.abs(hiss)), 1e-9)
        gate = sound.gate(n, first, last, int(FADE_SECONDS * sr))
        out += gate * (0.12 * clicks + 0.2 * np.minimum(density, 1.5) * hiss)

    def phrase(self) -> str:
        return ("heavy" if self.rate > 80 else "light") + " rain falls"


class StillLife(SceneObject):
    """A static scene (a vase and a box) that makes no sound at all."""

    category = "silence"

    def __init__(self, object_id: int, rng: np.random.Generator, timeline: Timeline, region: tuple[float, float]) -> None:
        super().__init__(object_id, rng, timeline, region)
        self.color_name = str(rng.choice(["red", "green", "blue", "yellow", "purple", "white"]))
        self.box_color = str(rng.choice(["orange", "cyan", "pink", "white"]))
        self.vase_x = float(rng.uniform(0.2, 0.45))
        self.box_x = float(rng.uniform(0.58, 0.8))
        self.vase_size = float(rng.uniform(0.08, 0.12))
        self.box_size = float(rng.uniform(0.08, 0.14))

    def draw(self, canvas: Canvas) -> None:
        v = self.vase_size
        canvas.ellipse(self.vase_x, FLOOR_Y - v, v, v, PALETTE[self.color_name])
        canvas.rect(self.vase_x - 0.35 * v, self.vase_x + 0.35 * v, FLOOR_Y - 2.6 * v, FLOOR_Y - 1.6 * v, PALETTE[self.color_name])
        b = self.box_size
        canvas.rect(self.box_x - b, self.box_x + b, FLOOR_Y - 1.4 * b, FLOOR_Y, PALETTE[self.box_color])

    def phrase(self) -> str:
        return f"a still room with a {self.color_name} vase and a box, no sound"


OBJECT_TYPES: dict[str, type[SceneObject]] = {
    cls.category: cls for cls in (BouncingBall, Drum, Lamp, Vehicle, Rain, StillLife)
}
FULL_WIDTH = {"vehicle", "rain"}
