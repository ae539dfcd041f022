"""The LLM's system prompt: persona, emotion and character in words.

The LLM cannot hear parameters, so the controls that shape what is said (the
persona's style, the emotion, the pace) are written into its system prompt, and
the prompt asks for inline emotion hints the pipeline lifts out of the text.
"""

from __future__ import annotations

from adapters.base import Applied
from adapters.controls import Controls, EmotionLabel
from tth_server.personas import Persona

_HINT_RULE = (
    "You may start a sentence with one emotion tag in square brackets, one of [neutral], [happy], [sad], "
    "[angry], [surprised], [fearful] or [disgusted], when the feeling of the reply changes; the tag is not read aloud."
)


def _degree(intensity: float) -> str:
    return "slightly" if intensity < 0.34 else "clearly" if intensity < 0.67 else "strongly"


def system_prompt(persona: Persona, controls: Controls, *, hints: bool = True) -> tuple[str, tuple[Applied, ...]]:
    """The system prompt for a turn, and the controls it expresses.

    `hints=False` leaves out the inline emotion tags, for a model that speaks its
    own text (a realtime provider would read the tags aloud).
    """
    parts = [f"You are {persona.name}, speaking aloud as a talking face in a live conversation."]
    if persona.style:
        parts.append(persona.style)
    applied = [Applied("character.persona_id", f"persona {persona.id}")]
    if controls.label is not EmotionLabel.NEUTRAL:
        parts.append(
            f"Sound {_degree(controls.intensity)} {controls.label.value} (intensity {controls.intensity:.1f})."
        )
        applied += [Applied("emotion.label", "in system prompt"), Applied("emotion.intensity", "in system prompt")]
    if controls.speech_rate < 0.85:
        parts.append("Use short, calm sentences.")
        applied.append(Applied("character.speech_rate", "calm sentences"))
    elif controls.speech_rate > 1.2:
        parts.append("Be brisk and energetic.")
        applied.append(Applied("character.speech_rate", "brisk sentences"))
    if controls.expressivity > 0.7:
        parts.append("Be expressive and emotionally engaged.")
        applied.append(Applied("character.expressivity", "expressive wording"))
    elif controls.expressivity < 0.3:
        parts.append("Keep an even, understated tone.")
        applied.append(Applied("character.expressivity", "understated wording"))
    parts.append("Reply in plain spoken sentences, no lists or markdown, usually two to four sentences.")
    if hints:
        parts.append(_HINT_RULE)
    return " ".join(parts), tuple(applied)
