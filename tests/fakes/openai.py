"""A fake OpenAI API on 127.0.0.1, written from OpenAI's API reference.

- `POST /v1/chat/completions` with `"stream": true`: `text/event-stream`, one
  `data: {chat.completion.chunk}` per event, the first carrying only the role,
  then content deltas, a chunk with `finish_reason`, with
  `stream_options.include_usage` a usage-only chunk whose `choices` is `[]`,
  and `data: [DONE]`. `: keep-alive` comments between events.
- `POST /v1/audio/speech` with `response_format: pcm`: raw 24 kHz s16le mono,
  chunked, in pieces that do not respect sample boundaries.
- Errors as OpenAI sends them: `{"error": {"message", "type", "param", "code"}}`,
  429 with `retry-after`; the 401 message echoes the key it was given, as some
  proxies do, so tests can prove the client redacts it.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import FakeHTTPServer, FakeProvider, Faults, Request, Responder, hang_forever

KEY = "sk-test-0123456789abcdefFAKE"
VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"}
RATE = 24000


def pcm_for(text: str, ms_per_char: float = 20.0) -> bytes:
    """A deterministic tone whose length follows the text."""
    n = int(RATE * len(text) * ms_per_char / 1000)
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * i / RATE))) for i in range(n))


def _error(status: int, message: str) -> dict[str, Any]:
    kind, code = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        429: ("requests", "rate_limit_exceeded"),
    }.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass
class FakeOpenAI(FakeProvider):
    key: str = KEY
    reply: str = "Hello there! It is lovely to hear from you. How can I help today?"
    split: int = 0
    crlf: bool = False
    token_delay_s: float = 0.0
    chat_faults: Faults = field(default_factory=lambda: Faults(times=0))
    speech_faults: Faults = field(default_factory=lambda: Faults(times=0))
    speech_piece: int = 4801  # bytes per chunk: odd, so pieces split samples
    speech_delay_s: float = 0.0
    chat_calls: int = 0
    speech_calls: int = 0
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    speech_bodies: list[dict[str, Any]] = field(default_factory=list)
    server: FakeHTTPServer | None = None

    @property
    def url(self) -> str:
        """OpenAI's base URLs end in /v1."""
        return f"{super().url}/v1"

    async def _handle(self, request: Request, r: Responder) -> None:
        given = request.headers.get("authorization", "")
        if given != f"Bearer {self.key}":
            provided = given.removeprefix("Bearer ")
            await r.json(401, _error(401, f"Incorrect API key provided: {provided}."))
            return
        if request.method == "POST" and request.path == "/v1/chat/completions":
            number, self.chat_calls = self.chat_calls, self.chat_calls + 1
            await self._chat(request, r, self.chat_faults if self.chat_faults.active(number) else Faults(times=0))
        elif request.method == "POST" and request.path == "/v1/audio/speech":
            number, self.speech_calls = self.speech_calls, self.speech_calls + 1
            await self._speech(request, r, self.speech_faults if self.speech_faults.active(number) else Faults(times=0))
        else:
            await r.json(404, _error(404, f"Unknown request URL: {request.method} {request.path}"))

    @staticmethod
    async def _refuse(r: Responder, faults: Faults) -> bool:
        if faults.hang:
            await hang_forever()
        if faults.status:
            headers = {"retry-after": faults.retry_after} if faults.retry_after else {}
            await r.json(faults.status, _error(faults.status, "injected failure"), headers)
            return True
        return False

    async def _chat(self, request: Request, r: Responder, faults: Faults) -> None:
        body = request.json()
        self.chat_bodies.append(body)
        messages = body.get("messages") or []
        if (
            not body.get("model")
            or not messages
            or messages[0].get("role") != "system"
            or body.get("stream") is not True
        ):
            await r.json(400, _error(400, "model, messages (system first) and stream: true are required"))
            return
        if await self._refuse(r, faults):
            return
        await r.head(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, chunked=True)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        tokens = [t + " " for t in self.reply.split(" ")]
        tokens[-1] = tokens[-1].rstrip()
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        ]
        events += [{**base, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in tokens]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage:
            for event in events:
                event["usage"] = None
            events.append(
                {
                    **base,
                    "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": len(tokens), "total_tokens": 9 + len(tokens)},
                }
            )
        eol = "\r\n" if self.crlf else "\n"
        await r.chunk(f": keep-alive{eol}{eol}".encode())
        for i, event in enumerate(events):
            if faults.drop_after == i:
                r.drop()
                return
            if faults.malformed_after == i:
                await r.chunk(f'data: {{"id": "chatcmpl-fake", "choices": [{eol}{eol}'.encode())
                await r.end()
                return
            if faults.error_event_after == i:
                payload = _error(500, "The server had an error while processing your request.")
                await r.chunk(f"data: {json.dumps(payload)}{eol}{eol}".encode())
                await r.end()
                return
            await r.chunk(f"data: {json.dumps(event, ensure_ascii=False)}{eol}{eol}".encode())
            if i % 3 == 0:
                await r.chunk(f": keep-alive{eol}{eol}".encode())
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
        if faults.drop_after is not None and faults.drop_after >= len(events):
            r.drop()
            return
        await r.chunk(f"data: [DONE]{eol}{eol}".encode())
        await r.end()

    async def _speech(self, request: Request, r: Responder, faults: Faults) -> None:
        body = request.json()
        self.speech_bodies.append(body)
        problems = []
        if body.get("response_format") != "pcm":
            problems.append("this fake serves response_format pcm only")
        if body.get("voice") not in VOICES:
            problems.append(f"voice {body.get('voice')!r} is not supported")
        if not 0.25 <= float(body.get("speed", 1.0)) <= 4.0:
            problems.append("speed must be in [0.25, 4.0]")
        if "instructions" in body and body.get("model") in ("tts-1", "tts-1-hd"):
            problems.append("instructions are not supported for this model")
        if not body.get("input"):
            problems.append("input is required")
        if problems:
            await r.json(400, _error(400, "; ".join(problems)))
            return
        if await self._refuse(r, faults):
            return
        await r.head(200, {"Content-Type": "audio/pcm"}, chunked=True)
        pcm = pcm_for(body["input"])
        for i, start in enumerate(range(0, len(pcm), self.speech_piece)):
            if faults.drop_after == i:
                r.drop()
                return
            await r.chunk(pcm[start : start + self.speech_piece])
            if self.speech_delay_s:
                await asyncio.sleep(self.speech_delay_s)
        await r.end()
