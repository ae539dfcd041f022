"""What moves on the face over a turn: the mouth's loudness level, blinks, and head sway.

All three are functions of the turn's clock and a seed, advanced one frame at a
time, so the same audio with the same seed gives the same video. Head pose is
quantized to whole steps (a step is 1 px at 256 px) so the renderer's cache of
encoded frames stays small.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from adapters.face.render import EyeState
from adapters.face.visemes import ENVELOPE_LEVELS


def rms(samples: np.ndarray) -> float:
    """Root mean square of PCM16 samples, in PCM16 units; 0 for no samples."""
    if not len(samples):
        return 0.0
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


class Envelope:
    """Maps a frame window's RMS to a mouth-opening level, 0 (closed) to ENVELOPE_LEVELS - 1.

    Providers speak at different loudness, so the scale follows the loudest recent
    window (a peak that jumps up at once and decays over tens of seconds) rather
    than a fixed full scale. Windows far below that peak are silence: closed mouth.
    """

    INITIAL_PEAK = 2500.0
    """Typical PCM16 RMS of a loud vowel in TTS output (about -22 dBFS)."""
    MIN_PEAK = 400.0
    """Very quiet audio is not blown up to a wide-open mouth."""
    GATE = 0.06
    """Below this fraction of the reference, a window is silence."""
    HALF_LIFE_MS = 15000.0

    def __init__(self) -> None:
        self._peak = self.INITIAL_PEAK
        self._last_ms = 0.0

    def level(self, value: float, at_ms: float) -> int:
        decay = 0.5 ** (max(0.0, at_ms - self._last_ms) / self.HALF_LIFE_MS)
        self._last_ms = at_ms
        self._peak = max(value, self._peak * decay, self.MIN_PEAK)
        reference = 0.7 * self._peak
        if value < self.GATE * reference:
            return 0
        # A power below 1 opens the mouth visibly on quieter consonants too.
        openness = math.pow(min(1.0, value / reference), 0.7)
        return max(1, round(openness * (ENVELOPE_LEVELS - 1)))


class Blinker:
    """Blinks every 2-5.5 s at random but reproducible times; arousal speeds it up.

    Blink times live on an internal clock that runs at `rate` times the turn's
    clock, so the rate can change between segments without a jump.
    """

    def __init__(self, seed: int, frame_ms: float) -> None:
        self._rng = random.Random(seed)
        self._duration_ms = max(160.0, 3 * frame_ms)
        self._next = self._rng.uniform(600.0, 2500.0)
        self._inner_ms = 0.0
        self._last_ms = 0.0
        self._started_ms: float | None = None

    def state(self, at_ms: float, rate: float) -> EyeState:
        self._inner_ms += max(0.0, at_ms - self._last_ms) * rate
        self._last_ms = at_ms
        if self._inner_ms >= self._next:
            self._started_ms = at_ms
            self._next = self._inner_ms + self._rng.uniform(2000.0, 5500.0)
        if self._started_ms is None:
            return EyeState.OPEN
        phase = (at_ms - self._started_ms) / self._duration_ms
        if phase >= 1.0:
            return EyeState.OPEN
        return EyeState.CLOSED if 0.25 <= phase < 0.75 else EyeState.HALF


@dataclass(frozen=True, slots=True)
class Pose:
    """Head pose in whole steps: sway moves the head sideways and rolls it; nod moves it up and down."""

    sway: int = 0
    nod: int = 0

    STEP_PX_AT_256 = 1.0
    TILT_DEG_PER_SWAY = 0.5

    def offsets(self, width: int, height: int) -> tuple[int, int, float]:
        """(dx px, dy px, tilt degrees) at this frame size."""
        step = self.STEP_PX_AT_256 * min(width, height) / 256
        return (round(self.sway * step), round(self.nod * step), -self.sway * self.TILT_DEG_PER_SWAY)


class HeadMotion:
    """A slow, aperiodic sway and nod: sums of sines at unrelated frequencies, phases from the seed."""

    SWAY_STEPS = 3.0
    NOD_STEPS = 2.0
    MAX_STEPS = 8

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed ^ 0x5EED)
        self._phases = [rng.uniform(0.0, 2 * math.pi) for _ in range(4)]

    def pose(self, at_ms: float, gain: float) -> Pose:
        if gain <= 0:
            return Pose()
        t = at_ms / 1000.0
        p = self._phases
        sway = 0.65 * math.sin(2 * math.pi * 0.21 * t + p[0]) + 0.35 * math.sin(2 * math.pi * 0.53 * t + p[1])
        nod = 0.6 * math.sin(2 * math.pi * 0.17 * t + p[2]) + 0.4 * math.sin(2 * math.pi * 0.71 * t + p[3])
        return Pose(self._clamp(sway * self.SWAY_STEPS * gain), self._clamp(nod * self.NOD_STEPS * gain))

    def _clamp(self, value: float) -> int:
        return max(-self.MAX_STEPS, min(self.MAX_STEPS, round(value)))
