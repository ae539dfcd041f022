"""`openai_realtime`: the OpenAI Realtime API over WebSocket, as one combined LLM+TTS stage.

One WebSocket per TTH session (`open`), speaking the Realtime event protocol:

1. Connect to `wss://api.openai.com/v1/realtime?model=...` with the key as a
   Bearer token (the beta interface also sends `OpenAI-Beta: realtime=v1`).
2. `session.update`: instructions (the TTH system prompt), voice, speed, PCM16
   24 kHz output, no server VAD (turns are driven by text, not microphone audio).
3. Per turn, `conversation.item.create` (the user's text) and `response.create`.
   The server streams `response.output_audio.delta` (base64 PCM) and
   `response.output_audio_transcript.delta` (the words being spoken; the beta
   names are `response.audio.delta` and `response.audio_transcript.delta`) and
   ends with `response.done`.
4. On interrupt, `response.cancel`; then `conversation.item.truncate` with
   `audio_end_ms`, so the server's copy of the reply keeps only what was heard.

The voice can change only until the session first speaks, so emotion picks the
voice of the first reply; afterwards emotion rides in the instructions. Events
of a cancelled response that arrive late are recognised and skipped. A
conversation opened fresh (for example after a reconnect) is seeded with the
turn's history as text items.

Voices per label (the OpenAI TTS adapter's table, with the voices the Realtime API lacks
replaced: nova -> coral, onyx -> ballad, fable -> verse): neutral coral, happy
shimmer, sad ballad, angry echo, surprised verse, fearful alloy, disgusted echo.
speed = speech_rate x (1 + 0.15 x arousal), clamped to the API's [0.25, 1.5].

Options: `model` (gpt-realtime), `api` (ga | beta; beta when the model name says
"preview"), `url` (else derived from $OPENAI_BASE_URL), `voices`, `voice`,
`chunk_ms` (40), `api_key_env` (OPENAI_API_KEY), `connect_timeout_s` (10).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from adapters.base import (
    Applied,
    Capabilities,
    ControlMapping,
    Downgrade,
    LLMRequest,
    Mode,
    RealtimeAdapter,
    RealtimeConversation,
)
from adapters.controls import Controls, EmotionLabel
from adapters.errors import ErrorCategory, ProviderError
from adapters.logs import log
from adapters.media import AudioChunk
from adapters.openai._http import (
    PcmChunker,
    ProviderOptions,
    api_key,
    base_url,
    error_from_payload,
    error_from_status,
    redact,
)
from adapters.openai.chat import OPENAI_URL
from adapters.options import OPTIONS, GivenOptions

VOICES: dict[EmotionLabel, str] = {
    EmotionLabel.NEUTRAL: "coral",
    EmotionLabel.HAPPY: "shimmer",
    EmotionLabel.SAD: "ballad",
    EmotionLabel.ANGRY: "echo",
    EmotionLabel.SURPRISED: "verse",
    EmotionLabel.FEARFUL: "alloy",
    EmotionLabel.DISGUSTED: "echo",
}
SPEED_RANGE = (0.25, 1.5)
SAMPLE_RATE_HZ = 24000

_AUDIO_DELTA = {"response.output_audio.delta", "response.audio.delta"}
_TEXT_DELTA = {
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
}
# Errors caused by our own best-effort cancels and truncates, which may race the server.
_IGNORED_CODES = {"response_cancel_not_active"}
_OWN_EVENTS = ("tth_cancel_", "tth_truncate_")


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class RealtimeOptions(ProviderOptions):
    model: str = "gpt-realtime"
    api: Literal["ga", "beta"] | None = None  # None: beta when the model name says "preview"
    api_key_required: Literal[True] = True
    url: str = ""  # empty: derived from base_url or $OPENAI_BASE_URL
    voices: dict[EmotionLabel, str] = field(default_factory=dict)  # label -> voice, over the table
    voice: str | None = None  # one voice for everything
    chunk_ms: Annotated[float, Field(gt=0)] = 40.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0


def realtime_url(options: RealtimeOptions, adapter: str) -> str:
    if options.url:
        return options.url
    http = base_url(options, adapter, OPENAI_URL, "OPENAI_BASE_URL")
    return "ws" + http.removeprefix("http") + "/realtime"


class OpenAIRealtime(RealtimeAdapter):
    """Opens one Realtime conversation per TTH session."""

    mode = Mode.API
    Options = RealtimeOptions
    options: RealtimeOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self.api = self.options.api or ("beta" if "preview" in self.model else "ga")
        self._key = api_key(self.options, name, "OPENAI_API_KEY")
        self._url = realtime_url(self.options, name)
        self._voices = {**VOICES, **self.options.voices}
        self._voice = self.options.voice
        self._chunk_ms = self.options.chunk_ms
        self._connect_timeout_s = self.options.connect_timeout_s

    @property
    def sample_rate_hz(self) -> int:
        return SAMPLE_RATE_HZ

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True,
            controls=frozenset(
                {
                    "emotion.label",
                    "emotion.intensity",
                    "emotion.arousal",
                    "character.speech_rate",
                    "character.persona_id",
                }
            ),
            emotions=frozenset(EmotionLabel),
        )

    def map_controls(self, controls: Controls) -> ControlMapping:
        voice = str(self._voice or self._voices[controls.label])
        asked = controls.speech_rate * (1.0 + 0.15 * controls.arousal)
        speed = round(min(max(asked, SPEED_RANGE[0]), SPEED_RANGE[1]), 2)
        applied = (
            Applied("emotion.label", f"voice {voice} (fixed once the session has spoken) and instructions"),
            Applied("character.speech_rate", f"speed {speed}"),
            Applied("emotion.arousal", f"speed {speed}"),
        )
        downgraded = []
        if speed != round(asked, 2):
            downgraded.append(
                Downgrade("character.speech_rate", f"speed {asked:.2f} is outside [0.25, 1.5]; sent {speed}")
            )
        set_ = {n for n, s in controls.sources.items() if s != "default"}
        if "pitch_shift" in set_:
            downgraded.append(Downgrade("character.pitch_shift", "the Realtime API has no pitch parameter"))
        if "valence" in set_:
            downgraded.append(Downgrade("emotion.valence", "the Realtime API has no valence parameter"))
        if "motion_gain" in set_:
            downgraded.append(Downgrade("character.motion_gain", "speech has no motion"))
        return ControlMapping(controls, {"voice": voice, "speed": speed}, applied, tuple(downgraded))

    async def open(self, system_prompt: str, mapping: ControlMapping) -> OpenAIRealtimeConversation:
        headers = {"Authorization": f"Bearer {self._key}"}
        if self.api == "beta":
            headers["OpenAI-Beta"] = "realtime=v1"
        url = f"{self._url}?model={self.model}"
        try:
            ws = await connect(url, additional_headers=headers, open_timeout=self._connect_timeout_s, max_size=2**24)
        except InvalidStatus as exc:
            response = exc.response
            raise error_from_status(
                response.status_code, bytes(response.body or b""), response.headers, self.name, [self._key]
            ) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            detail = redact(str(exc) or type(exc).__name__, [self._key])
            raise ProviderError(ErrorCategory.CONNECTIVITY, f"cannot connect: {detail}", provider=self.name) from None
        conversation = OpenAIRealtimeConversation(self, ws)
        await conversation.configure(system_prompt, mapping)
        return conversation

    def session_config(self, instructions: str, voice: str | None, speed: float) -> dict[str, Any]:
        """The `session` object of a session.update, in the GA or beta shape."""
        if self.api == "beta":
            beta: dict[str, Any] = {
                "modalities": ["text", "audio"],
                "instructions": instructions,
                "output_audio_format": "pcm16",
                "turn_detection": None,
                "speed": speed,
            }
            if voice:
                beta["voice"] = voice
            return beta
        output: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}, "speed": speed}
        if voice:
            output["voice"] = voice
        return {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": instructions,
            "audio": {"output": output, "input": {"turn_detection": None}},
        }

    def secrets(self) -> list[str | None]:
        return [self._key]

    def chunker(self) -> PcmChunker:
        return PcmChunker(SAMPLE_RATE_HZ, self._chunk_ms)


class OpenAIRealtimeConversation(RealtimeConversation):
    """One WebSocket session. `respond` may be cancelled at any point: the response is cancelled too."""

    def __init__(self, adapter: OpenAIRealtime, ws: ClientConnection) -> None:
        self._adapter = adapter
        self._ws = ws
        self._events: asyncio.Queue[dict[str, Any] | ProviderError] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._instructions: str | None = None
        self._voice: str | None = None
        self._speed: float | None = None
        self._spoke = False
        self._fresh = True
        self._requested = 0  # response.create sent
        self._created = 0  # response.created seen
        self._stale: set[str] = set()
        self._item_id: str | None = None
        self._item_audio_ms = 0.0
        self.closed = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        provider = self._adapter.name
        try:
            async for message in self._ws:
                try:
                    event = json.loads(message)
                except ValueError:
                    self._events.put_nowait(
                        ProviderError(ErrorCategory.SERVER, "malformed event: not JSON", provider=provider)
                    )
                    continue
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    self._events.put_nowait(
                        ProviderError(ErrorCategory.SERVER, "malformed event: no type", provider=provider)
                    )
                    continue
                self._events.put_nowait(event)
            reason = "the server closed the connection"
        except ConnectionClosed as exc:
            reason = f"connection dropped (code {exc.rcvd.code if exc.rcvd else 1006})"
        self.closed = True
        self._events.put_nowait(ProviderError(ErrorCategory.CONNECTIVITY, reason, provider=provider))

    async def _send(self, event: dict[str, Any]) -> None:
        try:
            await self._ws.send(json.dumps(event))
        except (ConnectionClosed, OSError) as exc:
            self.closed = True
            raise ProviderError(
                ErrorCategory.CONNECTIVITY,
                f"connection lost while sending: {type(exc).__name__}",
                provider=self._adapter.name,
            ) from None

    async def _next(self) -> dict[str, Any]:
        item = await self._events.get()
        if isinstance(item, ProviderError):
            if self.closed:
                self._events.put_nowait(item)  # every later call learns the connection is gone
            raise item
        return item

    async def configure(self, instructions: str, mapping: ControlMapping) -> None:
        """Send a session.update when instructions, speed or (before the first audio) voice changed."""
        voice, speed = str(mapping.params["voice"]), float(mapping.params["speed"])
        new_voice = voice if not self._spoke and voice != self._voice else None
        if instructions == self._instructions and speed == self._speed and new_voice is None:
            return
        session = self._adapter.session_config(instructions, new_voice, speed)
        await self._send({"type": "session.update", "session": session})
        self._instructions, self._speed = instructions, speed
        if new_voice:
            self._voice = new_voice

    async def _seed(self, request: LLMRequest) -> None:
        assistant_kind = "text" if self._adapter.api == "beta" else "output_text"
        for message in request.history:
            kind = "input_text" if message.role == "user" else assistant_kind
            item = {"type": "message", "role": message.role, "content": [{"type": kind, "text": message.text}]}
            await self._send({"type": "conversation.item.create", "item": item})

    async def respond(self, request: LLMRequest, mapping: ControlMapping) -> AsyncIterator[str | AudioChunk]:
        if self.closed:
            raise ProviderError(ErrorCategory.CONNECTIVITY, "the connection is closed", provider=self._adapter.name)
        await self.configure(request.system_prompt, mapping)
        if self._fresh:
            self._fresh = False
            await self._seed(request)
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": request.user_text}]}
        await self._send({"type": "conversation.item.create", "item": item})
        await self._send({"type": "response.create"})
        self._requested += 1
        mine = self._requested
        response_id: str | None = None
        finished = False
        chunker = self._adapter.chunker()
        try:
            while True:
                event = await self._next()
                kind = event["type"]
                rid = _response_id(event)
                if kind == "error":
                    if self._ignorable(event):
                        continue
                    raise error_from_payload(event, self._adapter.name, self._adapter.secrets())
                if kind == "response.created":
                    self._created += 1
                    if self._created < mine:  # created for a response we already cancelled
                        if rid:
                            self._stale.add(rid)
                        continue
                    response_id = rid
                    self._item_id, self._item_audio_ms = None, 0.0
                    continue
                if response_id is None or (rid is not None and rid != response_id) or (rid in self._stale):
                    continue
                if kind in _AUDIO_DELTA:
                    self._item_id = event.get("item_id") or self._item_id
                    for chunk in chunker.feed(_audio(event, self._adapter.name)):
                        self._spoke = True
                        self._item_audio_ms = chunk.end_ms
                        yield chunk
                elif kind in _TEXT_DELTA:
                    delta = event.get("delta")
                    if isinstance(delta, str) and delta:
                        yield delta
                elif kind == "response.done":
                    for chunk in chunker.flush():
                        self._item_audio_ms = chunk.end_ms
                        yield chunk
                    finished = True
                    self._finish(event)
                    return
        finally:
            if not finished:
                await self._cancel(response_id)

    def _finish(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        status = response.get("status")
        if status == "failed":
            details = response.get("status_details") or {}
            raise error_from_payload(details.get("error") or details, self._adapter.name, self._adapter.secrets())
        if status not in ("completed", None):
            log.info("realtime response ended", adapter=self._adapter.name, status=status)

    def _ignorable(self, event: dict[str, Any]) -> bool:
        error = event.get("error") or {}
        source = str(error.get("event_id") or "")
        if error.get("code") in _IGNORED_CODES or source.startswith(_OWN_EVENTS):
            log.info("realtime error ignored", adapter=self._adapter.name, code=error.get("code"), event_id=source)
            return True
        return False

    async def _cancel(self, response_id: str | None) -> None:
        """Best effort: cancel the response the caller stopped reading, and forget its late events."""
        if response_id:
            self._stale.add(response_id)
        if self.closed:
            return
        event: dict[str, Any] = {"type": "response.cancel", "event_id": f"tth_cancel_{next(self._ids)}"}
        if response_id:
            event["response_id"] = response_id
        try:
            await asyncio.wait_for(self._ws.send(json.dumps(event)), 1.0)
        except (ConnectionClosed, OSError, TimeoutError):
            self.closed = True

    async def truncate(self, played_ms: float) -> None:
        if self._item_id is None or self.closed:
            return
        end_ms = int(max(0.0, min(played_ms, self._item_audio_ms)))
        await self._send(
            {
                "type": "conversation.item.truncate",
                "event_id": f"tth_truncate_{next(self._ids)}",
                "item_id": self._item_id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            }
        )

    async def aclose(self) -> None:
        self.closed = True
        self._reader.cancel()
        try:
            await asyncio.wait_for(self._ws.close(), 2.0)
        except (OSError, TimeoutError, WebSocketException):
            pass
        await asyncio.wait([self._reader])


def _response_id(event: Mapping[str, Any]) -> str | None:
    rid = event.get("response_id")
    if rid is None and isinstance(event.get("response"), Mapping):
        rid = event["response"].get("id")
    return str(rid) if rid else None


def _audio(event: Mapping[str, Any], provider: str) -> bytes:
    delta = event.get("delta")
    if not isinstance(delta, str):
        raise ProviderError(ErrorCategory.SERVER, "malformed audio delta: no data", provider=provider)
    try:
        return base64.b64decode(delta, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderError(ErrorCategory.SERVER, "malformed audio delta: not base64", provider=provider) from None
