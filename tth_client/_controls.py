"""Keyword arguments to control messages: `say(text, emotion="happy", intensity=0.7)` -> `TurnControl`.

The messages themselves are the generated ones (`tth_client.v1.controls_pb2`).
Ranges are checked by the server, which names the field and its limit; the SDK
checks only what it must translate (emotion and latency names), against the
generated enums, so no rule is written down twice.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, Unpack

from tth_client._exceptions import InvalidControlError
from tth_client.v1 import controls_pb2 as cpb

__all__ = ["Controls", "EmotionName", "LatencyName", "render_options", "turn_control"]

EmotionName = Literal["neutral", "happy", "sad", "angry", "surprised", "fearful", "disgusted"]
LatencyName = Literal["low", "balanced", "quality"]


class Controls(TypedDict, total=False):
    """Controls as keyword arguments; an absent key means "not set here", so a lower layer decides.

    Ranges (the server enforces them): intensity [0, 1]; valence, arousal, pitch_shift [-1, 1];
    speech_rate [0.25, 4]; expressivity [0, 1]; motion_gain [0, 2].
    """

    emotion: EmotionName | int
    """An emotion name, or a generated `EmotionLabel` value."""
    intensity: float
    valence: float
    arousal: float
    persona: str
    """A persona id from the server's catalogue (see `Client.list_models()`)."""
    speech_rate: float
    pitch_shift: float
    expressivity: float
    motion_gain: float


def _enum(wrapper: Any, prefix: str, value: str | int, what: str) -> int:
    """The generated enum's number for a lowercase name ("happy") or a number passed through."""
    if isinstance(value, int):
        return value
    try:
        return int(wrapper.Value(f"{prefix}{value.strip().upper()}"))
    except ValueError:
        allowed = [n.removeprefix(prefix).lower() for n in wrapper.keys() if not n.endswith("_UNSPECIFIED")]
        raise InvalidControlError(
            f"{what} {value!r} is not known", code="INVALID_ARGUMENT", hint=f"use one of: {', '.join(allowed)}"
        ) from None


def turn_control(base: cpb.TurnControl | None = None, **controls: Unpack[Controls]) -> cpb.TurnControl:
    """A `TurnControl` with the given fields set (on a copy of `base`, when given)."""
    msg = cpb.TurnControl()
    if base is not None:
        msg.CopyFrom(base)
    if "emotion" in controls:
        msg.emotion.label = cpb.EmotionLabel.ValueType(
            _enum(cpb.EmotionLabel, "EMOTION_LABEL_", controls["emotion"], "emotion")
        )
    for name in ("intensity", "valence", "arousal"):
        if name in controls:
            setattr(msg.emotion, name, float(controls[name]))
    if "persona" in controls:
        msg.character.persona_id = controls["persona"]
    for name in ("speech_rate", "pitch_shift", "expressivity", "motion_gain"):
        if name in controls:
            setattr(msg.character, name, float(controls[name]))  # type: ignore[literal-required]
    return msg


def render_options(
    *,
    fps: int | None = None,
    width: int | None = None,
    height: int | None = None,
    latency_mode: LatencyName | int | None = None,
) -> cpb.RenderOptions:
    """A `RenderOptions` with the given fields set; None leaves a field to the server's default."""
    msg = cpb.RenderOptions()
    if fps is not None:
        msg.fps = fps
    if width is not None:
        msg.width = width
    if height is not None:
        msg.height = height
    if latency_mode is not None:
        msg.latency_mode = cpb.LatencyMode.ValueType(
            _enum(cpb.LatencyMode, "LATENCY_MODE_", latency_mode, "latency mode")
        )
    return msg
