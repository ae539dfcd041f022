"""Provider-neutral prosody from emotion and character controls.

Speech engines that take rate, pitch, pitch range and volume (espeak-ng, the
local tone synthesizer, SSML-style providers) share one documented mapping, so
"happy at 0.8" sounds the same kind of different everywhere:

| label     | rate  | pitch (semitones) | range | volume |
|-----------|-------|-------------------|-------|--------|
| neutral   | x1.00 | +0.0              | x1.00 | x1.00  |
| happy     | x1.08 | +2.5              | x1.40 | x1.05  |
| sad       | x0.85 | -2.5              | x0.60 | x0.85  |
| angry     | x1.10 | -1.0              | x1.30 | x1.25  |
| surprised | x1.05 | +4.0              | x1.60 | x1.10  |
| fearful   | x1.15 | +3.0              | x0.80 | x0.90  |
| disgusted | x0.90 | -2.0              | x0.90 | x0.95  |

Each row is scaled by `intensity` (0 gives neutral, 1 the full row, 0.5 half
way, in log space for the multipliers). Then arousal adds up to +-10 % rate and
+-15 % volume, valence up to +-1.5 semitones, `speech_rate` multiplies the rate,
`pitch_shift` adds up to +-6 semitones, and `expressivity` scales the range
(0.6 is neutral; 0 halves it, 1 gives 1.33x).
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.controls import Controls, EmotionLabel

# label: (rate multiplier, pitch semitones, range multiplier, volume multiplier)
EMOTION_PROSODY: dict[EmotionLabel, tuple[float, float, float, float]] = {
    EmotionLabel.NEUTRAL: (1.00, 0.0, 1.00, 1.00),
    EmotionLabel.HAPPY: (1.08, 2.5, 1.40, 1.05),
    EmotionLabel.SAD: (0.85, -2.5, 0.60, 0.85),
    EmotionLabel.ANGRY: (1.10, -1.0, 1.30, 1.25),
    EmotionLabel.SURPRISED: (1.05, 4.0, 1.60, 1.10),
    EmotionLabel.FEARFUL: (1.15, 3.0, 0.80, 0.90),
    EmotionLabel.DISGUSTED: (0.90, -2.0, 0.90, 0.95),
}


@dataclass(frozen=True, slots=True)
class Prosody:
    """Relative prosody: multiply a voice's rate, range and volume; shift its pitch."""

    rate: float = 1.0
    pitch_semitones: float = 0.0
    range: float = 1.0
    volume: float = 1.0


def prosody_for(controls: Controls) -> Prosody:
    """The prosody the controls ask for, per the table in this module's docstring."""
    rate, pitch, rng, volume = EMOTION_PROSODY[controls.label]
    k = controls.intensity
    rate, rng, volume = rate**k, rng**k, volume**k
    pitch *= k
    rate *= 1.0 + 0.10 * controls.arousal
    volume *= 1.0 + 0.15 * controls.arousal
    pitch += 1.5 * controls.valence
    rate *= controls.speech_rate
    pitch += 6.0 * controls.pitch_shift
    rng *= 0.5 + controls.expressivity / 1.2
    return Prosody(rate=rate, pitch_semitones=pitch, range=rng, volume=volume)
