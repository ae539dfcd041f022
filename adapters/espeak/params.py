"""Controls to espeak-ng parameters: the shared prosody in espeak's own units, and a voice per persona.

The emotion and character controls first become provider-neutral prosody through
`adapters.prosody.prosody_for` (its docstring has the table: e.g. happy is faster,
higher and wider, sad slower, lower, narrower and softer, each row scaled by
intensity, with arousal on rate and volume and valence on pitch). This module puts
that prosody on espeak's four knobs; nothing is simulated:

| prosody              | espeak parameter   | conversion                                        | espeak's limits |
|----------------------|--------------------|---------------------------------------------------|-----------------|
| rate (multiplier)    | rate, words/minute | 175 * rate                                        | 80..450         |
| pitch (semitones)    | base pitch         | 50 + 50/12 * semitones (f0 doubles every +50)     | 0..99           |
| range (multiplier)   | pitch range        | 50 * range * 2^(semitones/12) (0 is monotone)     | 0..99           |
| volume (multiplier)  | volume             | 100 * volume                                      | 0..200          |

espeak's range is a width in Hz, so it follows the pitch shift: the whole intonation
contour moves, not just its floor. So `character.speech_rate` 1.1 is 193 wpm,
`character.pitch_shift` +1 (+6 semitones) is pitch 75 with range 71, and
`character.expressivity` 1.0 (range x1.33) is range 67.

`character.persona_id` picks the voice: the adapter's `voices` option, else
`DEFAULT_VOICES` below (variants after "+" are files in espeak-ng-data/voices/!v).

A value beyond espeak's limits is clamped and reported as a `Downgrade` of the
character control that moves it most directly (rate: speech_rate, pitch:
pitch_shift, range: expressivity). motion_gain is the avatar's: reported as
downgraded here when a caller or persona set it, as every TTS does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapters.base import Applied, ControlMapping, Downgrade
from adapters.controls import Controls
from adapters.prosody import prosody_for

from .binding import RATE_MAX_WPM, RATE_MIN_WPM, RATE_NORMAL_WPM, Parameter

PITCH_LIMITS = (0, 99)
RANGE_LIMITS = (0, 99)
VOLUME_LIMITS = (0, 200)
PITCH_NORMAL = 50
PITCH_PER_SEMITONE = 50 / 12
RANGE_NORMAL = 50
VOLUME_NORMAL = 100

DEFAULT_VOICES: dict[str, str] = {
    "neutral": "en-us",  # espeak's American English male, f0 around 110 Hz
    "professional": "en-gb-x-rp+m3",  # Received Pronunciation, a steadier male variant
    "casual": "en-us+f3",  # a female variant, f0 around 190 Hz
    "excited": "en-us+Annie",  # a bright female variant with a very wide pitch range
}

HONOURED = frozenset(
    {
        "emotion.label",
        "emotion.intensity",
        "emotion.valence",
        "emotion.arousal",
        "character.persona_id",
        "character.speech_rate",
        "character.pitch_shift",
        "character.expressivity",
    }
)


@dataclass(frozen=True, slots=True)
class EspeakParams:
    """What one synthesis call sets in espeak."""

    voice: str
    rate_wpm: int
    pitch: int
    range: int
    volume: int

    def as_dict(self) -> dict[str, str | int]:
        return {
            "voice": self.voice,
            "rate_wpm": self.rate_wpm,
            "pitch": self.pitch,
            "range": self.range,
            "volume": self.volume,
        }

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> EspeakParams | None:
        """Back from `ControlMapping.params`; None if they were not made by `map_controls`."""
        try:
            return cls(
                str(params["voice"]),
                int(params["rate_wpm"]),
                int(params["pitch"]),
                int(params["range"]),
                int(params["volume"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def settings(self) -> tuple[tuple[Parameter, int], ...]:
        """The `espeak_SetParameter` calls, in order."""
        return (
            (Parameter.RATE, self.rate_wpm),
            (Parameter.PITCH, self.pitch),
            (Parameter.RANGE, self.range),
            (Parameter.VOLUME, self.volume),
        )


def map_controls(controls: Controls, voices: Mapping[str, str], fallback_voice: str) -> ControlMapping:
    """Translate resolved controls into espeak parameters, saying what was applied and what was clamped."""
    params, downgraded = _derive(controls, voices, fallback_voice)
    overall = f"rate={params.rate_wpm} wpm pitch={params.pitch} range={params.range} volume={params.volume}"
    applied = [
        Applied("character.speech_rate", f"rate={params.rate_wpm} wpm"),
        Applied("character.pitch_shift", f"pitch={params.pitch} (espeak 0..99, 50 normal)"),
        Applied("character.expressivity", f"range={params.range} (espeak 0..99, 50 normal)"),
        *(Applied(f"emotion.{name}", overall) for name in ("label", "intensity", "valence", "arousal")),
    ]
    if controls.persona_id in voices:
        applied.insert(0, Applied("character.persona_id", f"voice={params.voice}"))
    return ControlMapping(controls, params=params.as_dict(), applied=tuple(applied), downgraded=tuple(downgraded))


def params_for(controls: Controls, voices: Mapping[str, str], fallback_voice: str) -> EspeakParams:
    """The espeak parameters alone, as `map_controls` would put them in `params`."""
    return _derive(controls, voices, fallback_voice)[0]


def _derive(controls: Controls, voices: Mapping[str, str], fallback_voice: str) -> tuple[EspeakParams, list[Downgrade]]:
    prosody = prosody_for(controls)
    downgraded: list[Downgrade] = []

    voice = voices.get(controls.persona_id)
    if voice is None:
        voice = fallback_voice
        reason = f"no espeak voice for persona {controls.persona_id!r}; used {voice}"
        downgraded.append(Downgrade("character.persona_id", reason))

    rate = _fit(
        RATE_NORMAL_WPM * prosody.rate, (RATE_MIN_WPM, RATE_MAX_WPM), "character.speech_rate", "{} wpm", downgraded
    )
    wanted_pitch = PITCH_NORMAL + PITCH_PER_SEMITONE * prosody.pitch_semitones
    pitch = _fit(wanted_pitch, PITCH_LIMITS, "character.pitch_shift", "pitch {}", downgraded)
    # espeak's range is in Hz around the base, so a shifted voice keeps its intonation only if the range
    # moves with the base; otherwise +6 semitones would flatten the contour and lift the peaks by less.
    wanted_range = RANGE_NORMAL * prosody.range * 2 ** (prosody.pitch_semitones / 12)
    pitch_range = _fit(wanted_range, RANGE_LIMITS, "character.expressivity", "range {}", downgraded)
    # Clamped without a report: the shared prosody asks for well under 2x (angry at full arousal is about 1.44x).
    volume = max(VOLUME_LIMITS[0], min(VOLUME_LIMITS[1], round(VOLUME_NORMAL * prosody.volume)))
    if controls.sources.get("motion_gain", "default") != "default":
        downgraded.append(Downgrade("character.motion_gain", "speech has no motion"))

    return EspeakParams(voice, rate, pitch, pitch_range, volume), downgraded


def _fit(wanted: float, limits: tuple[int, int], control: str, template: str, downgraded: list[Downgrade]) -> int:
    """Round and clamp to espeak's limits; a clamp is reported against `control`."""
    lo, hi = limits
    value = max(lo, min(hi, round(wanted)))
    if value != round(wanted):
        asked, allowed, used = template.format(round(wanted)), template.format(f"{lo}..{hi}"), template.format(value)
        downgraded.append(Downgrade(control, f"wanted {asked}; espeak allows {allowed}, used {used}"))
    return value
