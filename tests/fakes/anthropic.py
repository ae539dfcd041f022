"""A fake Anthropic Messages API on 127.0.0.1, written from Anthropic's streaming documentation.

`POST /v1/messages` with `"stream": true` answers with named SSE events:
`message_start`, `content_block_start`, `ping`, `content_block_delta`
(`text_delta`) ..., `content_block_stop`, `message_delta`, `message_stop`.
It checks `x-api-key`, `anthropic-version`, the required `max_tokens` and that
messages start with the user and alternate. Errors use Anthropic's shape,
`{"type": "error", "error": {"type", "message"}}`, over HTTP (401, 429 with
`retry-after`, 500, 529) or as an `event: error` after a 200 (`overloaded_error`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import FakeHTTPServer, FakeProvider, Faults, Request, Responder, hang_forever

KEY = "sk-ant-test-0123456789FAKE"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _TYPES.get(status, "api_error"), "message": message}}


@dataclass
class FakeAnthropic(FakeProvider):
    key: str = KEY
    reply: str = "Hi! I am Claude, speaking through a fake. Nice to meet you."
    split: int = 0
    faults: Faults = field(default_factory=lambda: Faults(times=0))
    calls: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    server: FakeHTTPServer | None = None

    async def _handle(self, request: Request, r: Responder) -> None:
        if request.path != "/v1/messages" or request.method != "POST":
            await r.json(404, _error(404, "Not found"))
            return
        if request.headers.get("x-api-key") != self.key:
            await r.json(401, _error(401, "invalid x-api-key"))
            return
        if not request.headers.get("anthropic-version"):
            await r.json(400, _error(400, "anthropic-version: header is required"))
            return
        body = request.json()
        self.bodies.append(body)
        problem = _check(body)
        if problem:
            await r.json(400, _error(400, problem))
            return
        number, self.calls = self.calls, self.calls + 1
        faults = self.faults if self.faults.active(number) else Faults(times=0)
        if faults.hang:
            await hang_forever()
        if faults.status:
            headers = {"retry-after": faults.retry_after} if faults.retry_after else {}
            await r.json(faults.status, _error(faults.status, "injected failure"), headers)
            return
        await r.head(200, {"Content-Type": "text/event-stream"}, chunked=True)
        for i, (name, data) in enumerate(self._events(body)):
            if faults.drop_after == i:
                r.drop()
                return
            if faults.malformed_after == i:
                await r.chunk(b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta\n\n')
                await r.end()
                return
            if faults.error_event_after == i:
                name, data = "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                await r.chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                await r.end()
                return
            await r.chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await r.end()

    def _events(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body["model"],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        words = [w + " " for w in self.reply.split(" ")]
        words[-1] = words[-1].rstrip()
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            ("ping", {"type": "ping"}),
        ]
        for word in words:
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                )
            )
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": len(words)},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return events


def _check(body: dict[str, Any]) -> str:
    if not body.get("model") or not isinstance(body.get("max_tokens"), int):
        return "model and max_tokens are required"
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    for a, b in itertools.pairwise(messages):
        if a["role"] == b["role"]:
            return 'messages: roles must alternate between "user" and "assistant"'
    if body.get("stream") is not True:
        return "this fake serves stream: true only"
    return ""
