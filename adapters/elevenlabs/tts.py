"""`elevenlabs`: streaming text to speech, `POST /v1/text-to-speech/{voice_id}/stream`, PCM output.

The key goes in `xi-api-key`; `output_format=pcm_24000` (or pcm_16000, pcm_22050,
pcm_44100) as a query parameter makes the body raw signed 16-bit little-endian
mono PCM, sent with chunked transfer encoding as it is generated.

ElevenLabs has no emotion parameter; emotion and character shape the request's
`voice_settings`, overriding the voice's stored settings for this request only:

    drive            = intensity, or 0.3 x intensity for the neutral label
    stability        = 0.75 - 0.45 x drive - 0.25 x (expressivity - 0.5)   in [0.05, 1]
                       (lower is more varied and emotional)
    style            = drive x expressivity                                 in [0, 1]
                       (style exaggeration)
    similarity_boost = 0.8 - 0.2 x drive                                    in [0, 1]
    speed            = speech_rate x (1 + 0.15 x arousal), clamped to the documented [0.7, 1.2]

A clamped speed is reported as a downgrade. A label can also pick its own voice
(`emotion_voices`); without one the label only shapes the settings above.

Options: `voice_id` (21m00Tcm4TlvDq8ikWAM, a premade voice), `emotion_voices`
(label -> voice id), `model` (eleven_flash_v2_5), `sample_rate_hz` (24000),
`use_speaker_boost` (true), `chunk_ms` (40), `base_url`
(https://api.elevenlabs.io), `api_key_env` (ELEVENLABS_API_KEY), `timeout_s` (30).
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
from adapters.options import OPTIONS, GivenOptions

ELEVENLABS_URL = "https://api.elevenlabs.io"
DEFAULT_VOICE = "21m00Tcm4TlvDq8ikWAM"
SPEED_RANGE = (0.7, 1.2)
PCM_RATES = (16000, 22050, 24000, 44100)


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def voice_settings(controls: Controls, speaker_boost: bool = True) -> tuple[dict[str, Any], float]:
    """The request's voice_settings, and the speed that was asked before clamping."""
    drive = controls.intensity if controls.label is not EmotionLabel.NEUTRAL else 0.3 * controls.intensity
    asked = controls.speech_rate * (1.0 + 0.15 * controls.arousal)
    settings = {
        "stability": round(_clamp(0.75 - 0.45 * drive - 0.25 * (controls.expressivity - 0.5), 0.05, 1.0), 3),
        "similarity_boost": round(_clamp(0.8 - 0.2 * drive, 0.0, 1.0), 3),
        "style": round(_clamp(drive * controls.expressivity, 0.0, 1.0), 3),
        "use_speaker_boost": speaker_boost,
        "speed": round(_clamp(asked, *SPEED_RANGE), 3),
    }
    return settings, asked


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class ElevenLabsOptions(HTTPOptions):
    model: str = "eleven_flash_v2_5"
    api_key_required: Literal[True] = True
    sample_rate_hz: Literal[16000, 22050, 24000, 44100] = 24000  # PCM_RATES
    voice_id: str = DEFAULT_VOICE
    emotion_voices: dict[EmotionLabel, str] = field(default_factory=dict)  # label -> voice id
    use_speaker_boost: bool = True
    chunk_ms: Annotated[float, Field(gt=0)] = 40.0


class ElevenLabsTTS(TTSAdapter):
    """Streams PCM from ElevenLabs."""

    mode = Mode.API
    Options = ElevenLabsOptions
    options: ElevenLabsOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._rate = self.options.sample_rate_hz
        self._voice = self.options.voice_id
        self._emotion_voices = dict(self.options.emotion_voices)
        self._speaker_boost = self.options.use_speaker_boost
        self._chunk_ms = self.options.chunk_ms
        self._key = api_key(self.options, name, "ELEVENLABS_API_KEY")
        url = base_url(self.options, name, ELEVENLABS_URL, None)
        headers = {"xi-api-key": self._key or "", "accept": "audio/pcm"}
        self._http = ProviderHTTP(name, url, headers, secrets=[self._key], timeout_s=self.options.timeout_s)

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True,
            controls=frozenset(
                {"emotion.intensity", "emotion.arousal", "character.speech_rate", "character.expressivity"}
                | ({"emotion.label"} if self._emotion_voices else set())
            ),
            emotions=frozenset(self._emotion_voices),
        )

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def map_controls(self, controls: Controls) -> ControlMapping:
        settings, asked = voice_settings(controls, self._speaker_boost)
        voice = self._emotion_voices.get(controls.label, self._voice)
        detail = f"stability {settings['stability']}, style {settings['style']}"
        applied = [
            Applied("emotion.intensity", detail),
            Applied("character.expressivity", detail),
            Applied("character.speech_rate", f"speed {settings['speed']}"),
            Applied("emotion.arousal", f"speed {settings['speed']}"),
        ]
        downgraded = []
        if settings["speed"] != round(asked, 3):
            downgraded.append(
                Downgrade(
                    "character.speech_rate",
                    f"speed {asked:.2f} is outside ElevenLabs' [0.7, 1.2]; sent {settings['speed']}",
                )
            )
        if controls.label in self._emotion_voices:
            applied.append(Applied("emotion.label", f"voice {voice}"))
        elif controls.label is not EmotionLabel.NEUTRAL:
            downgraded.append(
                Downgrade(
                    "emotion.label",
                    "ElevenLabs has no emotion parameter; only its intensity shapes stability and style",
                )
            )
        set_ = {n for n, s in controls.sources.items() if s != "default"}
        for name, group, reason in (
            ("valence", "emotion", "ElevenLabs has no valence parameter"),
            ("pitch_shift", "character", "ElevenLabs has no pitch parameter"),
            ("motion_gain", "character", "speech has no motion"),
        ):
            if name in set_:
                downgraded.append(Downgrade(f"{group}.{name}", reason))
        return ControlMapping(
            controls, {"voice_id": voice, "voice_settings": settings}, tuple(applied), tuple(downgraded)
        )

    def body(self, text: str, mapping: ControlMapping) -> dict[str, Any]:
        return {"text": text, "model_id": self.model, "voice_settings": dict(mapping.params["voice_settings"])}

    async def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        chunker = PcmChunker(self._rate, self._chunk_ms)
        path = f"/v1/text-to-speech/{mapping.params['voice_id']}/stream"
        params = {"output_format": f"pcm_{self._rate}"}
        async with self._http.post_stream(path, self.body(text, mapping), params=params) as response:
            async for raw in response.aiter_bytes():
                for chunk in chunker.feed(raw):
                    yield chunk
        for chunk in chunker.flush():
            yield chunk
