"""Emotion and character controls: the domain types, their limits, and the merge.

A `ControlPatch` is one layer of controls in which any field may be unset (None).
`resolve` merges layers field by field, highest priority first, into `Controls`,
where every field has a value and remembers which layer decided it. The layers,
from highest to lowest: the turn's own controls, the session's pending update,
the session's defaults, the persona's defaults, the LLM's inline hints, and the
built-in defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from tth_client._limits import CONTROL_RANGES, out_of_range


class EmotionLabel(StrEnum):
    """The seven discrete emotions a turn can ask for (`EmotionLabel` in controls.proto)."""

    NEUTRAL = "neutral"
    HAPPY = "happy"
    SAD = "sad"
    ANGRY = "angry"
    SURPRISED = "surprised"
    FEARFUL = "fearful"
    DISGUSTED = "disgusted"


# Dotted public name of each control field, as the proto and the reports spell it.
PUBLIC_NAMES: dict[str, str] = {
    "label": "emotion.label",
    "intensity": "emotion.intensity",
    "valence": "emotion.valence",
    "arousal": "emotion.arousal",
    "persona_id": "character.persona_id",
    "speech_rate": "character.speech_rate",
    "pitch_shift": "character.pitch_shift",
    "expressivity": "character.expressivity",
    "motion_gain": "character.motion_gain",
}

# Inclusive limits of each numeric control: one table, shared with the SDK, which checks before sending.
RANGES = CONTROL_RANGES


class ControlError(ValueError):
    """A control value is out of its range or unknown; the message names field and limit."""


@dataclass(frozen=True, slots=True)
class ControlPatch:
    """One layer of controls; None means "not set in this layer"."""

    label: EmotionLabel | None = None
    intensity: float | None = None
    valence: float | None = None
    arousal: float | None = None
    persona_id: str | None = None
    speech_rate: float | None = None
    pitch_shift: float | None = None
    expressivity: float | None = None
    motion_gain: float | None = None

    def over(self, lower: ControlPatch) -> ControlPatch:
        """This layer on top of `lower`: each field set here wins."""
        return ControlPatch(**{f: _first(getattr(self, f), getattr(lower, f)) for f in PUBLIC_NAMES})

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in PUBLIC_NAMES)

    def validated(self, prefix: str = "") -> ControlPatch:
        """Return self, or raise ControlError naming the first bad field and its limit."""
        for name in RANGES:
            value = getattr(self, name)
            if value is not None and (problem := out_of_range(name, value)) is not None:
                raise ControlError(f"{prefix}{PUBLIC_NAMES[name]} {problem}")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> ControlPatch:
        """Build a patch from YAML-style data: {emotion: {label, ...}, character: {...}}."""
        flat: dict[str, Any] = {}
        for group in ("emotion", "character"):
            section = data.get(group) or {}
            if not isinstance(section, Mapping):
                raise ControlError(f"{where}.{group} must be a mapping")
            for key, value in section.items():
                name = key
                if PUBLIC_NAMES.get(name) != f"{group}.{key}":
                    allowed = sorted(k.split(".")[1] for k in PUBLIC_NAMES.values() if k.startswith(group))
                    raise ControlError(f"{where}.{group}.{key} is not a control; allowed: {allowed}")
                flat[name] = value
        unknown = set(data) - {"emotion", "character"}
        if unknown:
            raise ControlError(f"{where} has unknown keys {sorted(unknown)}; allowed: ['character', 'emotion']")
        if "label" in flat:
            try:
                flat["label"] = EmotionLabel(flat["label"])
            except ValueError:
                raise ControlError(
                    f"{where}.emotion.label must be one of {[e.value for e in EmotionLabel]}, got {flat['label']!r}"
                ) from None
        for name in RANGES:
            if name in flat:
                flat[name] = float(flat[name])
        return cls(**flat).validated(f"{where}.")


@dataclass(frozen=True, slots=True)
class Controls:
    """Fully resolved controls for a turn or a segment of it."""

    label: EmotionLabel = EmotionLabel.NEUTRAL
    intensity: float = 0.5
    valence: float = 0.0
    arousal: float = 0.0
    persona_id: str = "neutral"
    speech_rate: float = 1.0
    pitch_shift: float = 0.0
    expressivity: float = 0.6
    motion_gain: float = 1.0
    # Which layer decided each field, by field name ("turn", "persona", "default" ...).
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def value_text(self, name: str) -> str:
        value = getattr(self, name)
        return value if isinstance(value, str) else f"{value:g}"


DEFAULTS = Controls()


def resolve(layers: Iterable[tuple[str, ControlPatch]]) -> Controls:
    """Merge named layers (highest priority first) over the built-in defaults."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer_name, patch in layers:
        for name in PUBLIC_NAMES:
            value = getattr(patch, name)
            if value is not None and name not in values:
                values[name] = value
                sources[name] = layer_name
    for f in fields(Controls):
        if f.name in PUBLIC_NAMES and f.name not in values:
            sources[f.name] = "default"
    return replace(DEFAULTS, **values, sources=sources)


def _first(a: Any, b: Any) -> Any:
    return a if a is not None else b
