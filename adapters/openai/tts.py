"""`openai_tts`: `POST /v1/audio/speech` with `response_format: pcm`, streamed as it is made.

The response body is raw 24 kHz signed 16-bit little-endian mono PCM sent with
chunked transfer encoding; network reads need not end on a sample boundary, so
the odd byte waits for the next read (`PcmChunker`).

OpenAI TTS has no emotion parameter, so emotion is carried by
the voice (one per label) and the speed (speaking rate times an arousal term),
and, for models that accept them (gpt-4o-mini-tts; not tts-1 or tts-1-hd), by
`instructions` written from the emotion, its intensity, valence, arousal, the
persona and expressivity:

| label     | voice   |
|-----------|---------|
| neutral   | nova    |
| happy     | shimmer |
| sad       | onyx    |
| angry     | echo    |
| surprised | fable   |
| fearful   | alloy   |
| disgusted | echo    |

speed = speech_rate x (1 + 0.15 x arousal), clamped to the API's [0.25, 4.0].

Options: `model` (gpt-4o-mini-tts), `voices` (label -> voice, over the table),
`voice` (one voice for everything), `instructions` (auto | true | false),
`chunk_ms` (40), `sample_rate_hz` (24000; OpenAI-compatible servers may differ),
`base_url`, `api_key_env` (OPENAI_API_KEY), `api_key_required`, `timeout_s`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import Applied, Capabilities, ControlMapping, Downgrade, Mode, TTSAdapter
from adapters.controls import Controls, EmotionLabel
from adapters.media import AudioChunk
from adapters.openai._http import HTTPOptions, PcmChunker, ProviderHTTP, api_key, base_url
from adapters.openai.chat import OPENAI_URL
from adapters.options import OPTIONS, GivenOptions

VOICES: dict[EmotionLabel, str] = {
    EmotionLabel.NEUTRAL: "nova",
    EmotionLabel.HAPPY: "shimmer",
    EmotionLabel.SAD: "onyx",
    EmotionLabel.ANGRY: "echo",
    EmotionLabel.SURPRISED: "fable",
    EmotionLabel.FEARFUL: "alloy",
    EmotionLabel.DISGUSTED: "echo",
}
SPEED_RANGE = (0.25, 4.0)
_NO_INSTRUCTIONS = ("tts-1", "tts-1-hd")

_TONES: dict[EmotionLabel, str] = {
    EmotionLabel.NEUTRAL: "calm and even",
    EmotionLabel.HAPPY: "happy and warm, with a smile in the voice",
    EmotionLabel.SAD: "sad and subdued",
    EmotionLabel.ANGRY: "angry, firm and tense",
    EmotionLabel.SURPRISED: "surprised and astonished",
    EmotionLabel.FEARFUL: "fearful and anxious",
    EmotionLabel.DISGUSTED: "disgusted and repelled",
}


def speed_for(controls: Controls) -> tuple[float, float]:
    """(speed sent, speed asked): speech rate times 1 +- 15 % for arousal, clamped to [0.25, 4.0]."""
    asked = controls.speech_rate * (1.0 + 0.15 * controls.arousal)
    return round(min(max(asked, SPEED_RANGE[0]), SPEED_RANGE[1]), 2), asked


def instructions_for(controls: Controls) -> str:
    """Delivery instructions for models that take them, written from the controls."""
    degree = "slightly" if controls.intensity < 0.34 else "clearly" if controls.intensity < 0.67 else "very"
    parts = [f"Voice: {controls.persona_id} persona.", f"Tone: {degree} {_TONES[controls.label]}."]
    if controls.valence > 0.3:
        parts.append("Keep the feeling positive.")
    elif controls.valence < -0.3:
        parts.append("Let a negative feeling show.")
    if controls.arousal > 0.3:
        parts.append("Energetic and lively.")
    elif controls.arousal < -0.3:
        parts.append("Low energy, relaxed.")
    if controls.expressivity > 0.7:
        parts.append("Very expressive intonation.")
    elif controls.expressivity < 0.3:
        parts.append("Flat, restrained intonation.")
    if controls.pitch_shift > 0.3:
        parts.append("Speak in a higher register.")
    elif controls.pitch_shift < -0.3:
        parts.append("Speak in a lower register.")
    return " ".join(parts)


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class OpenAITTSOptions(HTTPOptions):
    model: str = "gpt-4o-mini-tts"
    voices: dict[EmotionLabel, str] = field(default_factory=dict)  # label -> voice, over the table
    voice: str | None = None  # one voice for everything
    instructions: bool | Literal["auto"] = "auto"  # auto: for the models that take them
    chunk_ms: Annotated[float, Field(gt=0)] = 40.0
    sample_rate_hz: Annotated[int, Field(gt=0)] = 24000


class OpenAITTS(TTSAdapter):
    """Streams PCM from OpenAI's speech endpoint."""

    mode = Mode.API
    Options = OpenAITTSOptions
    options: OpenAITTSOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._rate = self.options.sample_rate_hz
        self._chunk_ms = self.options.chunk_ms
        self._voices = {**VOICES, **self.options.voices}
        self._voice = self.options.voice
        setting = self.options.instructions
        self._instructions = setting is True or (setting == "auto" and self.model not in _NO_INSTRUCTIONS)
        self._key = api_key(self.options, name, "OPENAI_API_KEY")
        url = base_url(self.options, name, OPENAI_URL, "OPENAI_BASE_URL")
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._http = ProviderHTTP(name, url, headers, secrets=[self._key], timeout_s=self.options.timeout_s)

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    def capabilities(self) -> Capabilities:
        controls = {"emotion.label", "emotion.arousal", "character.speech_rate"}
        if self._instructions:
            controls |= {"emotion.intensity", "emotion.valence", "character.persona_id", "character.expressivity"}
        return Capabilities(streaming=True, controls=frozenset(controls), emotions=frozenset(EmotionLabel))

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def map_controls(self, controls: Controls) -> ControlMapping:
        voice = str(self._voice or self._voices[controls.label])
        speed, asked = speed_for(controls)
        params: dict[str, Any] = {"voice": voice, "speed": speed}
        applied = [
            Applied("emotion.label", f"voice {voice}" if not self._voice else "in instructions"),
            Applied("character.speech_rate", f"speed {speed}"),
            Applied("emotion.arousal", f"speed {speed}"),
        ]
        downgraded: list[Downgrade] = []
        if speed != round(asked, 2):
            downgraded.append(
                Downgrade("character.speech_rate", f"speed {asked:.2f} is outside [0.25, 4.0]; sent {speed}")
            )
        set_ = {n for n, s in controls.sources.items() if s != "default"}
        if self._instructions:
            params["instructions"] = instructions_for(controls)
            for field in ("emotion.intensity", "emotion.valence", "character.expressivity", "character.persona_id"):
                applied.append(Applied(field, "in instructions"))
        else:
            for name in ("intensity", "valence", "expressivity"):
                if name in set_:
                    downgraded.append(
                        Downgrade(
                            f"{'emotion' if name != 'expressivity' else 'character'}.{name}",
                            f"{self.model} takes no instructions; only voice and speed carry emotion",
                        )
                    )
        if "pitch_shift" in set_:
            reason = "OpenAI TTS has no pitch parameter"
            reason += "; a register is asked for in instructions, not guaranteed" if self._instructions else ""
            downgraded.append(Downgrade("character.pitch_shift", reason))
        if "motion_gain" in set_:
            downgraded.append(Downgrade("character.motion_gain", "speech has no motion"))
        return ControlMapping(controls, params, tuple(applied), tuple(downgraded))

    def body(self, text: str, mapping: ControlMapping) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": mapping.params["voice"],
            "response_format": "pcm",
            "speed": mapping.params["speed"],
        }
        if mapping.params.get("instructions"):
            body["instructions"] = mapping.params["instructions"]
        return body

    async def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        chunker = PcmChunker(self._rate, self._chunk_ms)
        async with self._http.post_stream("/audio/speech", self.body(text, mapping)) as response:
            async for raw in response.aiter_bytes():
                for chunk in chunker.feed(raw):
                    yield chunk
        for chunk in chunker.flush():
            yield chunk
