"""The baseline transport for target 6: the seeds' WebSocket stream, JSON events with base64 media.

    python -m bench.ws_baseline [--server uvicorn|websockets] [--profile mock] [--overrides JSON] [--deflate]
    # prints "READY <port> <pid>"

Minimal on purpose, and in the style of seed 000 (`WS /v1/sessions/{id}/stream`):
one WebSocket per session; the client sends `{"type": "user_text", "text": ...}`
or `{"type": "interrupt"}`; the server sends each event as a Pydantic model
dumped with `model_dump_json()`, bytes as base64, named after the seeds' events
(`TextDeltaEvent`, `AudioChunkEvent`, `VideoFrameEvent`, `TurnCompleteEvent`,
`ErrorEvent`) but carrying every field the matching `ConverseResponse` carries
(session and turn ids, seq, speech marks, sample rate, turn metrics): the same
events, so the comparison is of encodings, not of content. Behind it runs *the
same* TTH runtime as the gRPC server (same profile, adapters, pipeline, pacing,
session and outbox), so the two servers produce the same events and differ only
in how they put them on the wire. Pydantic's Rust
serializer is the cheapest way to produce this JSON (about 6 us for a 4 KB
frame, against 15 us for json.dumps plus base64.b64encode), so the baseline is
not made slower than it need be. No per-message compression unless `--deflate`
(uvicorn negotiates permessage-deflate by default; the table reports both).

Two servers: `uvicorn` (the default) runs the route as seed 000 deploys it, on
uvicorn[standard] with uvloop; `websockets` serves it with the websockets
library alone on asyncio's own loop, for the record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, Literal

import uvicorn
import websockets
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from adapters.controls import ControlPatch
from adapters.media import RenderRequest
from tth_server.config import load_config
from tth_server.events import (
    AudioOut,
    ErrorOut,
    Event,
    InterruptReason,
    MediaBatch,
    TextOut,
    TurnCompleted,
    TurnInterrupted,
    TurnMetrics,
    VideoOut,
)
from tth_server.logs import configure
from tth_server.runtime import Runtime


class _Event(BaseModel):
    """The seeds' event style (a `type` tag and flat fields), carrying what a ConverseResponse carries."""

    model_config = ConfigDict(ser_json_bytes="base64")
    session_id: str
    turn_id: str = ""
    seq: int


class SessionStartedEvent(_Event):
    type: Literal["session_started"] = "session_started"
    sample_rate_hz: int
    width: int
    height: int
    fps: int
    persona_id: str
    persona_name: str


class TextDeltaEvent(_Event):
    type: Literal["text_delta"] = "text_delta"
    token: str


class SpeechMarkModel(BaseModel):
    type: str
    timestamp_ms: float
    text: str


class AudioChunkEvent(_Event):
    type: Literal["audio_chunk"] = "audio_chunk"
    data: bytes
    sample_rate_hz: int
    timestamp_ms: float
    duration_ms: float
    marks: list[SpeechMarkModel] = []


class VideoFrameEvent(_Event):
    type: Literal["video_frame"] = "video_frame"
    data: bytes
    content_type: str
    width: int
    height: int
    frame_index: int
    timestamp_ms: float
    drift_ms: float


class TurnCompleteEvent(_Event):
    type: Literal["turn_complete"] = "turn_complete"
    metrics: dict[str, Any]
    text: str


class TurnInterruptedEvent(_Event):
    type: Literal["turn_stopped"] = "turn_stopped"
    spoken_text: str
    played_ms: float
    reason: str
    metrics: dict[str, Any]


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: str
    message: str
    retryable: bool
    retry_after_ms: int


def _metrics(m: TurnMetrics) -> dict[str, Any]:
    out = asdict(m)
    out["stages"] = [{**s, "stage": str(s["stage"])} for s in out["stages"]]
    return out


def to_json(event: Event, session_id: str, seq: int) -> str | None:
    """The JSON for an event, with the same fields as its ConverseResponse; None for events not sent here."""
    ids: dict[str, Any] = {"session_id": session_id, "turn_id": getattr(event, "turn_id", ""), "seq": seq}
    if isinstance(event, VideoOut):
        f = event.frame
        return VideoFrameEvent(
            **ids,
            data=f.data,
            content_type=f.encoding.value,
            width=f.width,
            height=f.height,
            frame_index=f.frame_index,
            timestamp_ms=f.timestamp_ms,
            drift_ms=f.drift_ms,
        ).model_dump_json()
    if isinstance(event, AudioOut):
        c = event.chunk
        marks = [SpeechMarkModel(type=m.kind.value, timestamp_ms=m.time_ms, text=m.text) for m in c.marks]
        return AudioChunkEvent(
            **ids,
            data=c.pcm,
            sample_rate_hz=c.sample_rate_hz,
            timestamp_ms=c.timestamp_ms,
            duration_ms=c.duration_ms,
            marks=marks,
        ).model_dump_json()
    if isinstance(event, TextOut):
        return TextDeltaEvent(**ids, token=event.text).model_dump_json()
    if isinstance(event, TurnCompleted):
        return TurnCompleteEvent(**ids, metrics=_metrics(event.metrics), text=event.text).model_dump_json()
    if isinstance(event, TurnInterrupted):
        return TurnInterruptedEvent(
            **ids,
            spoken_text=event.spoken_text,
            played_ms=event.played_ms,
            reason=event.reason.value,
            metrics=_metrics(event.metrics),
        ).model_dump_json()
    if isinstance(event, ErrorOut):
        return ErrorEvent(
            **ids,
            code=event.code.value,
            message=event.message,
            retryable=event.retryable,
            retry_after_ms=event.retry_after_ms,
        ).model_dump_json()
    return None


async def _session(runtime: Runtime, send: Callable[[str], Awaitable[None]], received: AsyncIterator[str]) -> None:
    session = runtime.new_session("", ControlPatch(), RenderRequest(), "config")
    attachment = await runtime.sessions.open(session)

    event, r = session.started_event(), session.render
    started = SessionStartedEvent(
        session_id=session.id,
        seq=attachment.started_seq,
        sample_rate_hz=event.sample_rate_hz,
        width=r.width,
        height=r.height,
        fps=r.fps,
        persona_id=event.persona_id,
        persona_name=event.persona_name,
    )
    await send(started.model_dump_json())

    async def send_loop() -> None:
        while (item := await session.next_event(attachment)) is not None:  # one event at a time: no batches
            assert not isinstance(item[1], MediaBatch)
            text = to_json(item[1], session.id, item[0])
            if text is not None:
                await send(text)

    sender = asyncio.get_running_loop().create_task(send_loop())
    try:
        async for raw in received:
            message = json.loads(raw)
            if message.get("type") == "user_text":
                await session.say(str(message["text"]), ControlPatch())
            elif message.get("type") == "interrupt":
                await session.interrupt(InterruptReason.CLIENT)
        await session.drain()
        session.outbox.close()
        await sender
    finally:
        sender.cancel()
        await runtime.sessions.end(session)


async def _serve_websockets(runtime: Runtime, deflate: bool) -> None:
    """The baseline on the `websockets` library alone: the cheapest WebSocket server there is for Python."""

    async def handler(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await _session(runtime, ws.send, ws)

    async with websockets.serve(
        handler, "127.0.0.1", 0, compression="deflate" if deflate else None, max_size=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"READY {port} {os.getpid()}", flush=True)
        await asyncio.Future()


def _serve_uvicorn(profile: str, overrides: dict[str, Any], deflate: bool) -> None:
    """The baseline as seed 000 writes it: a WebSocket route sending `model_dump_json()` per event, on
    uvicorn with its `standard` extras (uvloop, httptools, websockets), as `uvicorn app:app` runs it. The
    seed's route is FastAPI's, which is Starlette's WebSocket with dependency injection at connect time;
    per message they are the same code, so the app here is Starlette's (FastAPI would also bring in
    opentelemetry-api, which would switch TTH's own tracing on in this environment)."""
    runtime: Runtime | None = None

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nonlocal runtime
        runtime = await _runtime(profile, overrides)
        yield

    async def session_stream(ws: WebSocket) -> None:
        assert runtime is not None
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect):
            await _session(runtime, ws.send_text, ws.iter_text())

    app = Starlette(routes=[WebSocketRoute("/v1/sessions/stream", session_stream)], lifespan=lifespan)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", ws_per_message_deflate=deflate, ws_max_size=1 << 30)
    _ReadyServer(config).run(sockets=[sock])


class _ReadyServer(uvicorn.Server):
    """Says READY once it listens. uvicorn runs the lifespan first and only then listens on the socket:
    a READY printed from the lifespan let the first client connect to a port that refused it (the wire
    benchmark's proxy then closed the client's connection: "did not receive a valid HTTP response")."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit and sockets:
            print(f"READY {sockets[0].getsockname()[1]} {os.getpid()}", flush=True)


async def _runtime(profile: str, overrides: dict[str, Any]) -> Runtime:
    config = load_config(profile, overrides=overrides or None)
    configure(config.log)
    runtime = Runtime(config)
    await runtime.start()
    return runtime


async def _main_websockets(profile: str, overrides: dict[str, Any], deflate: bool) -> None:
    await _serve_websockets(await _runtime(profile, overrides), deflate)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mock")
    parser.add_argument("--overrides", default="")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--server", choices=("uvicorn", "websockets"), default="uvicorn")
    parser.add_argument("--bench-fakes", action="store_true", help="register the bench adapters")
    args = parser.parse_args()
    if args.bench_fakes:
        from bench import fakes

        fakes.register()
    with contextlib.suppress(KeyboardInterrupt):
        overrides = json.loads(args.overrides) if args.overrides else {}
        if args.server == "uvicorn":
            _serve_uvicorn(args.profile, overrides, args.deflate)
        else:
            asyncio.run(_main_websockets(args.profile, overrides, args.deflate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
