"""Keyword arguments to control messages: `say(text, emotion="happy", intensity=0.7)` -> `TurnControl`.

The messages themselves are the generated ones (`tth_client.v1.controls_pb2`).
Every value is checked here, before anything is sent, against the same rules the
server applies: names against the generated enums, numbers against the range
table the server imports too (`_limits.CONTROL_RANGES`), so no rule is written
down twice. What only the server knows (its persona ids, its text limit) it
refuses itself, and the SDK raises that refusal as the same exception.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, Unpack

from tth_client._exceptions import InvalidArgumentError, InvalidControlError
from tth_client._limits import CONTROL_RANGES, out_of_range, range_text
from tth_client.v1 import controls_pb2 as cpb

__all__ = [
    "MAX_REQUEST_ID_CHARS",
    "Controls",
    "EmotionName",
    "LatencyName",
    "check_request_id",
    "check_text",
    "render_options",
    "turn_control",
]

MAX_REQUEST_ID_CHARS = 64
"""The longest `request_id` the server accepts on a text, control update or interrupt."""

EmotionName = Literal["neutral", "happy", "sad", "angry", "surprised", "fearful", "disgusted"]
LatencyName = Literal["low", "balanced", "quality"]
_EMOTION_NUMBERS = ("intensity", "valence", "arousal")  # the rest of the numeric controls are the character's


class Controls(TypedDict, total=False):
    """Controls as keyword arguments; an absent key means "not set here", so a lower layer decides.

    Ranges (`tth_client._limits.CONTROL_RANGES`, checked before sending): intensity [0, 1];
    valence, arousal, pitch_shift [-1, 1]; speech_rate [0.25, 4]; expressivity [0, 1]; motion_gain [0, 2].
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


def check_request_id(request_id: str) -> str:
    """`request_id`, or InvalidArgumentError when it is longer than the server accepts."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgumentError(
            f"request_id is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}",
            field="request_id",
            hint="use a shorter id",
        )
    return request_id


def check_text(text: str) -> str:
    """`text`, or InvalidArgumentError when it is empty or only whitespace (the server would refuse it)."""
    if not text.strip():
        raise InvalidArgumentError("text must not be empty", field="text", hint="send some text")
    return text


def _number(name: str, value: float) -> float:
    """`value` as a float, or InvalidControlError naming control `name` and its range."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidControlError(
            f"{name} must be a number in {range_text(name)}, got {value!r}",
            field=name,
            hint=f"use a value in {range_text(name)}",
        ) from None


def _check(msg: cpb.TurnControl) -> cpb.TurnControl:
    """`msg`, or InvalidControlError for its first value the server would refuse (the same rules, the same table)."""
    for name in CONTROL_RANGES:
        group: Any = msg.emotion if name in _EMOTION_NUMBERS else msg.character
        if group.HasField(name) and (problem := out_of_range(name, getattr(group, name))) is not None:
            raise InvalidControlError(f"{name} {problem}", field=name, hint=f"use a value in {range_text(name)}")
    if msg.character.HasField("persona_id") and not msg.character.persona_id:
        raise InvalidControlError("persona must not be empty when set", field="persona", hint="name a persona id")
    return msg


def _enum(wrapper: Any, prefix: str, value: str | int, what: str) -> int:
    """The generated enum's number for a lowercase name ("happy") or a number passed through."""
    if isinstance(value, int):
        return value
    try:
        return int(wrapper.Value(f"{prefix}{value.strip().upper()}"))
    except ValueError:
        allowed = [n.removeprefix(prefix).lower() for n in wrapper.keys() if not n.endswith("_UNSPECIFIED")]
        raise InvalidControlError(
            f"{what} {value!r} is not known",
            field="emotion" if what == "emotion" else "latency_mode",
            hint=f"use one of: {', '.join(allowed)}",
        ) from None


def turn_control(base: cpb.TurnControl | None = None, **controls: Unpack[Controls]) -> cpb.TurnControl:
    """A `TurnControl` with the given fields set (on a copy of `base`, when given)."""
    unknown = sorted(set(controls) - set(Controls.__annotations__))
    if unknown:
        raise InvalidControlError(
            f"{unknown[0]!r} is not a control", field=unknown[0], hint=f"use one of {sorted(Controls.__annotations__)}"
        )
    msg = cpb.TurnControl()
    if base is not None:
        msg.CopyFrom(base)
    if "emotion" in controls:
        msg.emotion.label = cpb.EmotionLabel.ValueType(
            _enum(cpb.EmotionLabel, "EMOTION_LABEL_", controls["emotion"], "emotion")
        )
    for name in _EMOTION_NUMBERS:
        if name in controls:
            setattr(msg.emotion, name, _number(name, controls[name]))  # type: ignore[literal-required]
    if "persona" in controls:
        msg.character.persona_id = controls["persona"]
    for name in ("speech_rate", "pitch_shift", "expressivity", "motion_gain"):
        if name in controls:
            setattr(msg.character, name, _number(name, controls[name]))  # type: ignore[literal-required]
    return _check(msg)


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
