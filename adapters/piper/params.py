"""Controls to Piper's synthesis knobs, and what Piper cannot do, reported as such.

The controls first become provider-neutral prosody (`adapters.prosody.prosody_for`,
the same table espeak-ng uses), which is then put on the three numbers a VITS voice
takes per run, plus a gain:

| prosody             | Piper knob                                   | limits      |
|---------------------|----------------------------------------------|-------------|
| rate (multiplier)   | length_scale = voice's length_scale / rate   | 0.5 .. 2.0  |
| range (multiplier)  | noise_scale = voice's noise_scale * range    | 0.0 .. 1.2  |
|                     | noise_w = voice's noise_w * range            | 0.0 .. 1.5  |
| volume (multiplier) | gain on the rendered piece                   | 0.3 .. 1.4  |
| pitch (semitones)   | none: downgraded                             |             |

noise_scale varies the voice's timbre and intonation from run to run, noise_w the
phoneme durations: together they are what "expressivity" can mean for this engine
(0 is flat and machine-like, the voice's defaults are natural, more is livelier).
They are not a pitch range in Hz, and the detail says so. Piper has no pitch input
and no pitch-shifting step is built here (one that keeps duration needs a vocoder
or PSOLA, and a plain resample would change the rate the face is timed to), so a
pitch shift, from `character.pitch_shift` or an emotion's pitch, is reported as
downgraded. One voice is loaded, so `character.persona_id` is reported downgraded
unless it is the default persona; personas still differ through their rate,
expressivity and volume defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapters.base import Applied, ControlMapping, Downgrade
from adapters.controls import Controls
from adapters.prosody import prosody_for

LENGTH_LIMITS = (0.5, 2.0)
NOISE_LIMITS = (0.0, 1.2)
NOISE_W_LIMITS = (0.0, 1.5)
VOLUME_LIMITS = (0.3, 1.4)

HONOURED = frozenset(
    {
        "emotion.label",
        "emotion.intensity",
        "emotion.valence",
        "emotion.arousal",
        "character.speech_rate",
        "character.expressivity",
    }
)


@dataclass(frozen=True, slots=True)
class PiperParams:
    """What one synthesis call passes to the voice."""

    length_scale: float
    noise_scale: float
    noise_w: float
    volume: float

    def as_dict(self) -> dict[str, float]:
        return {"length_scale": self.length_scale, "noise_scale": self.noise_scale, "noise_w": self.noise_w,
                "volume": self.volume}  # fmt: skip

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> PiperParams | None:
        """Back from `ControlMapping.params`; None if they were not made by `map_controls`."""
        try:
            return cls(
                float(params["length_scale"]),
                float(params["noise_scale"]),
                float(params["noise_w"]),
                float(params["volume"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def scales(self) -> tuple[float, float, float]:
        return self.length_scale, self.noise_scale, self.noise_w


def map_controls(controls: Controls, defaults: tuple[float, float, float], voice: str) -> ControlMapping:
    """Translate resolved controls into Piper's knobs, saying what was applied and what could not be."""
    params, downgraded = derive(controls, defaults, voice)
    overall = f"length_scale={params.length_scale} noise_scale={params.noise_scale} volume={params.volume}"
    applied = (
        Applied("character.speech_rate", f"length_scale={params.length_scale}"),
        Applied("character.expressivity", f"noise_scale={params.noise_scale} noise_w={params.noise_w}"),
        *(Applied(f"emotion.{name}", overall) for name in ("label", "intensity", "valence", "arousal")),
    )
    return ControlMapping(controls, params=params.as_dict(), applied=applied, downgraded=tuple(downgraded))


def derive(controls: Controls, defaults: tuple[float, float, float], voice: str) -> tuple[PiperParams, list[Downgrade]]:
    prosody = prosody_for(controls)
    base_length, base_noise, base_noise_w = defaults
    downgraded: list[Downgrade] = []
    length = _fit(base_length / prosody.rate, LENGTH_LIMITS, "character.speech_rate", "length_scale", downgraded)
    noise = _fit(base_noise * prosody.range, NOISE_LIMITS, "character.expressivity", "noise_scale", downgraded)
    noise_w = _fit(base_noise_w * prosody.range, NOISE_W_LIMITS, "character.expressivity", "noise_w", downgraded)
    volume = round(max(VOLUME_LIMITS[0], min(VOLUME_LIMITS[1], prosody.volume)), 3)
    if abs(prosody.pitch_semitones) >= 0.05:
        downgraded.append(
            Downgrade(
                "character.pitch_shift",
                f"wanted {prosody.pitch_semitones:+.1f} semitones (pitch_shift and emotion); "
                "Piper has no pitch control, spoken at the voice's own pitch",
            )
        )
    if controls.persona_id != "neutral":
        downgraded.append(
            Downgrade("character.persona_id", f"one Piper voice ({voice}); the persona speaks through its prosody")
        )
    if controls.sources.get("motion_gain", "default") != "default":
        downgraded.append(Downgrade("character.motion_gain", "speech has no motion"))
    return PiperParams(length, noise, noise_w, volume), downgraded


def _fit(wanted: float, limits: tuple[float, float], control: str, knob: str, downgraded: list[Downgrade]) -> float:
    """Round and clamp to the limits; a clamp is reported against `control`."""
    lo, hi = limits
    value = round(max(lo, min(hi, wanted)), 3)
    if value != round(wanted, 3):
        downgraded.append(Downgrade(control, f"wanted {knob}={wanted:.3f}; allowed {lo}..{hi}, used {value}"))
    return value
