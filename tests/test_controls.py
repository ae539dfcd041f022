"""The field-by-field control merge, limits, and the prosody every speech engine shares."""

from __future__ import annotations

import math

import pytest

from adapters.controls import ControlError, ControlPatch, EmotionLabel, resolve
from adapters.prosody import prosody_for


def test_each_field_comes_from_the_highest_layer_that_sets_it() -> None:
    controls = resolve(
        [
            ("turn", ControlPatch(intensity=0.9)),
            ("pending", ControlPatch(label=EmotionLabel.SAD, intensity=0.2)),
            ("persona", ControlPatch(label=EmotionLabel.HAPPY, speech_rate=1.2)),
            ("llm_hint", ControlPatch(label=EmotionLabel.ANGRY, pitch_shift=0.5)),
        ]
    )
    assert (controls.label, controls.intensity, controls.speech_rate, controls.pitch_shift) == (
        EmotionLabel.SAD,
        0.9,
        1.2,
        0.5,
    )
    assert controls.sources["label"] == "pending" and controls.sources["intensity"] == "turn"
    assert controls.sources["pitch_shift"] == "llm_hint" and controls.sources["motion_gain"] == "default"
    assert controls.motion_gain == 1.0


def test_set_to_the_default_value_differs_from_not_set() -> None:
    controls = resolve([("turn", ControlPatch(speech_rate=1.0)), ("persona", ControlPatch(speech_rate=1.5))])
    assert controls.speech_rate == 1.0 and controls.sources["speech_rate"] == "turn"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (ControlPatch(intensity=1.5), "x.emotion.intensity must be in [0.0, 1.0], got 1.5"),
        (ControlPatch(speech_rate=0.1), "x.character.speech_rate must be in [0.25, 4.0]"),
        (ControlPatch(motion_gain=math.nan), "x.character.motion_gain must be in [0.0, 2.0], got nan"),
        (ControlPatch(valence=math.inf), "x.emotion.valence must be in [-1.0, 1.0]"),
    ],
)
def test_out_of_range_and_non_finite_values_name_the_field_and_limit(patch: ControlPatch, message: str) -> None:
    with pytest.raises(ControlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        patch.validated("x.")


def test_yaml_controls_with_unknown_keys_or_labels_are_refused() -> None:
    with pytest.raises(ControlError, match=r"p\.emotion\.mood is not a control"):
        ControlPatch.from_mapping({"emotion": {"mood": 1}}, "p")
    with pytest.raises(ControlError, match=r"p\.emotion\.label must be one of"):
        ControlPatch.from_mapping({"emotion": {"label": "bored"}}, "p")


def test_emotions_move_prosody_in_the_documented_directions() -> None:
    def p(label: EmotionLabel, intensity: float = 1.0):  # type: ignore[no-untyped-def]
        return prosody_for(resolve([("turn", ControlPatch(label=label, intensity=intensity))]))

    neutral, happy, sad = p(EmotionLabel.NEUTRAL), p(EmotionLabel.HAPPY), p(EmotionLabel.SAD)
    assert happy.pitch_semitones > neutral.pitch_semitones > sad.pitch_semitones
    assert happy.rate > neutral.rate > sad.rate and happy.range > neutral.range > sad.range
    assert p(EmotionLabel.ANGRY).volume > neutral.volume
    assert p(EmotionLabel.HAPPY, 0.0) == neutral  # intensity 0 is neutral
    assert neutral.rate == pytest.approx(1.0) and neutral.range == pytest.approx(1.0)
