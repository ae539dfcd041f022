"""What the face looks like: each persona's character, and each emotion's expression.

A `Look` is a persona's appearance (skin, hair colour and style, eye colour, face
shape, clothes, background, glasses). Defaults exist for the four built-in
personas; the adapter's `personas` option adds or overrides looks, field by field,
on top of the neutral one:

    personas:
      narrator: {skin: "#8d5524", hair: "#1a1414", hair_style: curly, face_shape: round}

An `Expression` is the set of offsets an emotion applies to brows, lids, mouth
corners and cheeks at a given amplitude. Amplitude is quantized into a few
buckets so the renderer pre-draws a face per bucket, not per float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from adapters.controls import EmotionLabel

Rgb = tuple[int, int, int]

HAIR_STYLES = ("short", "side_part", "long", "curly", "bun", "spiky", "bald")
FACE_SHAPES = ("oval", "round", "square", "heart", "long")


@dataclass(frozen=True, slots=True)
class Look:
    """A persona's appearance."""

    skin: Rgb = (224, 172, 138)
    hair: Rgb = (92, 62, 42)
    hair_style: str = "short"
    eyes: Rgb = (104, 70, 42)
    face_shape: str = "oval"
    shirt: Rgb = (112, 124, 140)
    background: Rgb = (206, 214, 226)
    glasses: bool = False


DEFAULT_LOOKS: dict[str, Look] = {
    "neutral": Look(),
    "professional": Look(
        skin=(243, 206, 176),
        hair=(44, 34, 32),
        hair_style="bun",
        eyes=(68, 108, 150),
        face_shape="heart",
        shirt=(34, 46, 80),
        background=(228, 228, 222),
        glasses=True,
    ),
    "casual": Look(
        skin=(141, 85, 46),
        hair=(28, 22, 22),
        hair_style="curly",
        eyes=(62, 40, 26),
        face_shape="round",
        shirt=(38, 150, 138),
        background=(242, 222, 190),
    ),
    "excited": Look(
        skin=(236, 188, 140),
        hair=(216, 78, 44),
        hair_style="spiky",
        eyes=(58, 140, 84),
        face_shape="square",
        shirt=(246, 190, 40),
        background=(198, 228, 250),
    ),
}


def parse_looks(option: Any) -> dict[str, Look]:
    """The default looks overlaid with the `personas` option; raises ValueError naming the bad field."""
    looks = dict(DEFAULT_LOOKS)
    if option is None:
        return looks
    if not isinstance(option, Mapping):
        raise ValueError("face avatar option 'personas' must map persona ids to looks")
    names = {f.name for f in fields(Look)}
    for persona_id, spec in option.items():
        where = f"face avatar option personas.{persona_id}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where} must be a mapping of {sorted(names)}")
        unknown = set(spec) - names
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
        base = looks.get(str(persona_id), DEFAULT_LOOKS["neutral"])
        looks[str(persona_id)] = replace(base, **{k: _field(where, k, v) for k, v in spec.items()})
    return looks


def _field(where: str, key: str, value: Any) -> Any:
    if key == "hair_style":
        return _choice(where, key, value, HAIR_STYLES)
    if key == "face_shape":
        return _choice(where, key, value, FACE_SHAPES)
    if key == "glasses":
        return bool(value)
    return parse_colour(value, f"{where}.{key}")


def _choice(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{where}.{key} must be one of {list(allowed)}, got {value!r}")
    return str(value)


def parse_colour(value: Any, where: str) -> Rgb:
    """A colour from "#rrggbb" or [r, g, b] (0-255)."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))
        except ValueError:
            pass
    if isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(f"{where} must be a colour like '#a0522d' or [160, 82, 45], got {value!r}")


@dataclass(frozen=True, slots=True)
class Expression:
    """Offsets from the neutral face; lengths are fractions of the face's size."""

    brow_raise: float = 0.0
    """Both brows up (+) or down (-)."""
    brow_inner: float = 0.0
    """Inner brow ends up (+, sad and fearful) or down (-, angry) relative to the outer ends."""
    eye_open: float = 0.0
    """Eye opening scaled by 1 + this (wide eyes +, narrowed -)."""
    lid_inner: float = 0.0
    """Upper lid lowered at the inner corner, 0 to 1 (an angry glare)."""
    lid_outer: float = 0.0
    """Upper lid lowered at the outer corner, 0 to 1 (sad, drooping)."""
    lower_lid: float = 0.0
    """Lower lid raised, 0 to 1 (smiling eyes, disgust)."""
    corners: float = 0.0
    """Mouth corners up (+, smile) or down (-)."""
    mouth_width: float = 0.0
    """Mouth width scaled by 1 + this."""
    mouth_open: float = 0.0
    """Added to every mouth shape's opening (a dropped jaw)."""
    teeth: float = 0.0
    """Added to every mouth shape's visible teeth."""
    press: float = 0.0
    """Lips pressed thin."""
    sneer: float = 0.0
    """Upper lip raised on one side (disgust)."""
    pout: float = 0.0
    """Lower lip pushed out and down (sad)."""
    cheeks: float = 0.0
    """Cheeks raised and flushed (happy)."""
    nose_wrinkle: float = 0.0
    """Wrinkles across the bridge of the nose (disgust)."""

    def scaled(self, amplitude: float) -> Expression:
        return Expression(**{f.name: getattr(self, f.name) * amplitude for f in fields(Expression)})


# Each emotion at full amplitude (FACS-inspired: AU1+4 sad brows, AU4+7 angry, AU1+2+5+26
# surprise, AU1+2+4+5+20 fear, AU9+10 disgust, AU6+12 happiness).
EXPRESSIONS: dict[EmotionLabel, Expression] = {
    EmotionLabel.NEUTRAL: Expression(),
    EmotionLabel.HAPPY: Expression(
        brow_raise=0.008, eye_open=-0.12, lower_lid=0.45, corners=0.034, mouth_width=0.14, teeth=0.4, cheeks=1.0
    ),
    EmotionLabel.SAD: Expression(
        brow_raise=-0.004, brow_inner=0.03, eye_open=-0.1, lid_outer=0.45, corners=-0.028, mouth_width=-0.06, pout=1.0
    ),
    EmotionLabel.ANGRY: Expression(
        brow_raise=-0.018,
        brow_inner=-0.026,
        eye_open=-0.12,
        lid_inner=0.45,
        corners=-0.014,
        mouth_width=-0.1,
        press=0.8,
    ),
    EmotionLabel.SURPRISED: Expression(
        brow_raise=0.04, brow_inner=0.004, eye_open=0.38, mouth_width=-0.16, mouth_open=0.35
    ),
    EmotionLabel.FEARFUL: Expression(
        brow_raise=0.026,
        brow_inner=0.022,
        eye_open=0.3,
        corners=-0.012,
        mouth_width=0.2,
        mouth_open=0.16,
        teeth=0.5,
    ),
    EmotionLabel.DISGUSTED: Expression(
        brow_raise=-0.012,
        brow_inner=-0.012,
        eye_open=-0.22,
        lower_lid=0.4,
        corners=-0.016,
        mouth_width=-0.04,
        sneer=1.0,
        nose_wrinkle=1.0,
    ),
}

AMPLITUDE_BUCKETS = 4
"""Expression amplitude is drawn in this many steps above zero (0.25, 0.5, 0.75, 1)."""

NOMINAL_EXPRESSIVITY = 0.6
"""The default expressivity control; at it, amplitude equals intensity."""


def expression_bucket(label: EmotionLabel, intensity: float, expressivity: float) -> tuple[EmotionLabel, int]:
    """The (emotion, amplitude step) the face is drawn with; neutral and zero amplitude share one face."""
    amplitude = intensity * expressivity / NOMINAL_EXPRESSIVITY
    step = max(0, min(AMPLITUDE_BUCKETS, round(amplitude * AMPLITUDE_BUCKETS)))
    if label is EmotionLabel.NEUTRAL or step == 0:
        return (EmotionLabel.NEUTRAL, 0)
    return (label, step)


def expression_for(label: EmotionLabel, step: int) -> Expression:
    return EXPRESSIONS[label].scaled(step / AMPLITUDE_BUCKETS)
