"""A fake OpenAI Realtime API over WebSocket on 127.0.0.1, written from the Realtime event reference.

The handshake needs `Authorization: Bearer <key>` and `?model=`; a client that
sends `OpenAI-Beta: realtime=v1` gets the beta event names
(`response.audio.delta`, `response.audio_transcript.delta`), others the GA names
(`response.output_audio.delta`, `response.output_audio_transcript.delta`).

Client events handled: `session.update` (GA requires `session.type: realtime`),
`conversation.item.create`, `response.create` (one active response at a time),
`response.cancel` (answers `response.done` with status `cancelled`, or an error
`response_cancel_not_active`), `conversation.item.truncate` (checks the item and
that `audio_end_ms` is within the audio sent). A response is `response.created`,
`response.output_item.added`, `response.content_part.added`, interleaved
transcript and base64 PCM16 24 kHz audio deltas, the `.done` events and
`response.done`. Faults: a refused handshake, a dropped connection mid-response,
a malformed event, an error event, a response that never starts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes.openai import KEY, pcm_for


@dataclass
class RealtimeFaults:
    handshake_status: int | None = None
    drop_after_deltas: int | None = None
    malformed_after_deltas: int | None = None
    error_after_deltas: int | None = None
    error_code: str = "rate_limit_exceeded"
    hang: bool = False  # response.create is accepted and nothing comes back
    times: int = 1_000_000


@dataclass
class FakeRealtime:
    key: str = KEY
    reply: str = "Hello from the realtime fake, I am speaking now."
    delta_delay_s: float = 0.0
    faults: RealtimeFaults = field(default_factory=lambda: RealtimeFaults(times=0))
    received: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    responses: int = 0
    server: Server | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def start(self) -> FakeRealtime:
        self.server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check, max_size=2**24)
        return self

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def drop_connections(self) -> None:
        """Abort every open connection, as a network failure between turns would."""
        assert self.server is not None
        for connection in self.server.connections:
            connection.transport.abort()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]

    def _faulty(self, number: int) -> RealtimeFaults:
        return self.faults if number < self.faults.times else RealtimeFaults(times=0)

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        number = self.connections
        self.connections += 1
        faults = self._faulty(number)
        if faults.handshake_status:
            return _json_response(
                faults.handshake_status,
                {"error": {"type": "server_error", "code": None, "message": "injected handshake failure"}},
            )
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _json_response(
                401,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "message": "Incorrect API key provided.",
                    }
                },
            )
        if "model=" not in request.path:
            return _json_response(400, {"error": {"type": "invalid_request_error", "message": "model is required"}})
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        beta = ws.request.headers.get("OpenAI-Beta") == "realtime=v1"
        faults = self._faulty(self.connections - 1)
        state = _Session(ws, beta, faults)
        await state.send({"type": "session.created", "session": {"id": "sess_fake", "object": "realtime.session"}})
        try:
            async for message in ws:
                event = json.loads(message)
                self.received.append(event)
                await self._on(state, event)
        except ConnectionClosed:
            pass
        finally:
            if state.active is not None:
                state.active.cancel()

    async def _on(self, s: _Session, event: dict[str, Any]) -> None:
        kind = event.get("type")
        source = event.get("event_id")
        if kind == "session.update":
            session = event.get("session") or {}
            if not s.beta and session.get("type") != "realtime":
                await s.error(
                    "invalid_request_error",
                    "missing_required_parameter",
                    "Missing required parameter: 'session.type'.",
                    source,
                )
                return
            s.session.update(session)
            await s.send({"type": "session.updated", "session": s.session})
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {})
            item.setdefault("id", f"item_user_{next(self._ids)}")
            assistant = "text" if s.beta else "output_text"
            allowed = {"user": "input_text", "assistant": assistant, "system": "input_text"}
            content = item.get("content") or [{}]
            if item.get("type") != "message" or content[0].get("type") != allowed.get(item.get("role", "")):
                await s.error("invalid_request_error", "invalid_value", f"bad item {item}", source)
                return
            await s.send({"type": "conversation.item.created" if s.beta else "conversation.item.added", "item": item})
        elif kind == "response.create":
            if s.active is not None and not s.active.done():
                await s.error(
                    "invalid_request_error",
                    "conversation_already_has_active_response",
                    "Conversation already has an active response",
                    source,
                )
                return
            self.responses += 1
            s.active = asyncio.get_running_loop().create_task(self._respond(s, f"resp_{next(self._ids)}"))
        elif kind == "response.cancel":
            if s.active is None or s.active.done():
                await s.error(
                    "invalid_request_error",
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found",
                    source,
                )
                return
            s.active.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await s.active
            await s.send(
                {
                    "type": "response.done",
                    "response": {
                        "id": s.response_id,
                        "status": "cancelled",
                        "status_details": {"type": "cancelled", "reason": "client_cancelled"},
                    },
                }
            )
        elif kind == "conversation.item.truncate":
            item_id, end = event.get("item_id"), event.get("audio_end_ms")
            if item_id not in s.audio_ms:
                await s.error("invalid_request_error", "item_not_found", f"Item {item_id} not found", source)
            elif not isinstance(end, int) or end < 0 or end > s.audio_ms[item_id]:
                await s.error(
                    "invalid_request_error",
                    "invalid_value",
                    f"audio_end_ms {end} is beyond the audio sent ({s.audio_ms[item_id]:.0f} ms)",
                    source,
                )
            else:
                await s.send(
                    {
                        "type": "conversation.item.truncated",
                        "item_id": item_id,
                        "content_index": event.get("content_index", 0),
                        "audio_end_ms": end,
                    }
                )
        else:
            await s.error("invalid_request_error", "unknown_event", f"Invalid value: '{kind}'", source)

    async def _respond(self, s: _Session, rid: str) -> None:
        s.response_id = rid
        item_id = f"item_{next(self._ids)}"
        s.audio_ms[item_id] = 0.0
        if s.faults.hang:
            await asyncio.Event().wait()
        ids = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        await s.send(
            {
                "type": "response.created",
                "response": {"id": rid, "object": "realtime.response", "status": "in_progress"},
            }
        )
        await s.send(
            {
                "type": "response.output_item.added",
                "response_id": rid,
                "output_index": 0,
                "item": {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress"},
            }
        )
        await s.send({"type": "response.content_part.added", **ids, "part": {"type": "audio", "transcript": ""}})
        audio_kind = "response.audio.delta" if s.beta else "response.output_audio.delta"
        text_kind = "response.audio_transcript.delta" if s.beta else "response.output_audio_transcript.delta"
        deltas = 0
        for word in [w + " " for w in self.reply.split(" ")]:
            for event in (
                {"type": text_kind, **ids, "delta": word},
                {"type": audio_kind, **ids, "delta": base64.b64encode(pcm_for(word, 12.0)).decode()},
            ):
                if s.faults.drop_after_deltas == deltas:
                    s.ws.transport.abort()
                    return
                if s.faults.malformed_after_deltas == deltas:
                    await s.ws.send('{"type": "response.output_audio.delta", "delta": ')
                    return
                if s.faults.error_after_deltas == deltas:
                    await s.error(
                        "rate_limit_error" if "rate" in s.faults.error_code else "server_error",
                        s.faults.error_code,
                        "injected failure",
                        None,
                    )
                    return
                await s.send(event)
                if event["type"] == audio_kind:
                    s.audio_ms[item_id] += len(base64.b64decode(str(event["delta"]))) / 2 / 24
                deltas += 1
                if self.delta_delay_s:
                    await asyncio.sleep(self.delta_delay_s)
        await s.send({"type": "response.audio.done" if s.beta else "response.output_audio.done", **ids})
        await s.send(
            {
                "type": "response.audio_transcript.done" if s.beta else "response.output_audio_transcript.done",
                **ids,
                "transcript": self.reply,
            }
        )
        await s.send(
            {
                "type": "response.output_item.done",
                "response_id": rid,
                "output_index": 0,
                "item": {"id": item_id, "type": "message", "role": "assistant", "status": "completed"},
            }
        )
        await s.send(
            {"type": "response.done", "response": {"id": rid, "status": "completed", "usage": {"total_tokens": 42}}}
        )


@dataclass
class _Session:
    ws: ServerConnection
    beta: bool
    faults: RealtimeFaults
    session: dict[str, Any] = field(default_factory=dict)
    active: asyncio.Task[None] | None = None
    response_id: str = ""
    audio_ms: dict[str, float] = field(default_factory=dict)

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", f"event_{id(event)}")
        await self.ws.send(json.dumps(event))

    async def error(self, kind: str, code: str | None, message: str, source: str | None) -> None:
        await self.send(
            {
                "type": "error",
                "error": {"type": kind, "code": code, "message": message, "param": None, "event_id": source},
            }
        )


def _json_response(status: int, payload: dict[str, Any]) -> Response:
    body = json.dumps(payload).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status, HTTPStatus(status).phrase, headers, body)
