"""A fake Anam on 127.0.0.1: its session API, its signalling WebSocket and a real WebRTC peer (audio passthrough).

Written from Anam's docs and the `anam` SDK:

- `POST /v1/engine/session` (`Authorization: Bearer <key>`; a wrong key is a 401
  `{"error", "message"}`) with `personaConfig.enableAudioPassthrough` answers
  `{sessionId, engineHost, engineProtocol, signallingEndpoint, clientConfig:
  {iceServers, heartbeatIntervalSeconds}}` (no ICE servers: loopback only);
- the signalling WebSocket (`?session_id=`; 401 for an unknown one) takes JSON
  `{actionType, sessionId, payload}`: `offer` (answered with `answer`, then
  `sessionready`), `agentaudioinput` (base64 pcm_s16le at `sampleRate`),
  `agentaudioinputend`, `heartbeat`, `endsession`;
- the `session` data channel takes `{"message_type": "interrupt"}`.

Video is `SpeakingFace` (brightness follows the audio level) and the audio track
sends back what the face played (`PlayedAudio`). Fault knobs: `session_status`
(+ `retry_after`, for the first `fault_times`), `drop_after_frames`,
`error_after_frames` (an `endsession` with an error reason), `mute`, `end_after_s`
(the engine ends the session that long after it is ready, as at
`maxSessionLengthSeconds`, with a length-limit reason).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request as WSRequest
from websockets.http11 import Response as WSResponse

from tests.fakes.http import FakeHTTPServer, FakeProvider, Request, Responder
from tests.fakes.webrtc import PlayedAudio, SpeakingFace

KEY = "anam_test_0123456789abcdefkey"


@dataclass
class FakeAnam(FakeProvider):
    key: str = KEY
    split: int = 0
    session_status: int | None = None
    retry_after: str | None = None
    fault_times: int = 1_000_000  # how many session requests the status fault hits
    drop_after_frames: int | None = None
    error_after_frames: int | None = None
    mute: bool = False
    end_after_s: float | None = None
    session_requests: int = 0
    session_bodies: list[dict[str, Any]] = field(default_factory=list)
    sessions_started: int = 0
    sessions_ended: int = 0  # signalling sockets closed, by either side
    interrupts: int = 0
    audio_bytes: int = 0
    audio_rates: set[int] = field(default_factory=set)
    ends: int = 0
    heartbeats: int = 0
    server: FakeHTTPServer | None = None
    _sessions: set[str] = field(default_factory=set)
    _ws: Server | None = None

    async def start(self) -> Self:
        await super().start()
        self._ws = await serve(self._session, "127.0.0.1", 0, process_request=self._check, max_size=None)
        return self

    async def aclose(self) -> None:
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        await super().aclose()

    @property
    def engine_host(self) -> str:
        assert self._ws is not None
        return f"127.0.0.1:{next(iter(self._ws.sockets)).getsockname()[1]}"

    async def _handle(self, request: Request, r: Responder) -> None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            await r.json(401, {"error": "Unauthorized", "message": "Invalid API key"})
            return
        if request.method != "POST" or request.path != "/v1/engine/session":
            await r.json(404, {"error": "Not Found", "message": request.path})
            return
        number, self.session_requests = self.session_requests, self.session_requests + 1
        if self.session_status is not None and number < self.fault_times:
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            await r.json(self.session_status, {"error": "Rate limited", "message": "Too many requests"}, headers)
            return
        body = request.json()
        persona = body.get("personaConfig") if isinstance(body, dict) else None
        if not isinstance(persona, dict) or not persona.get("avatarId"):
            await r.json(400, {"error": "Bad Request", "message": "personaConfig.avatarId is required"})
            return
        self.session_bodies.append(body)
        session_id = secrets.token_hex(8)
        self._sessions.add(session_id)
        await r.json(
            200,
            {
                "sessionId": session_id,
                "engineHost": self.engine_host,
                "engineProtocol": "http",
                "signallingEndpoint": "/ws",
                "clientConfig": {"iceServers": [], "heartbeatIntervalSeconds": 1, "maxWsReconnectionAttempts": 5},
            },
        )

    def _check(self, connection: ServerConnection, request: WSRequest) -> WSResponse | None:
        parts = urlsplit(request.path)
        if parts.path != "/ws" or dict(parse_qsl(parts.query)).get("session_id") not in self._sessions:
            return WSResponse(401, "Unauthorized", Headers(), b"Invalid session")
        return None

    async def _session(self, ws: ServerConnection) -> None:
        session_id = dict(parse_qsl(urlsplit(ws.request.path if ws.request else "").query))["session_id"]
        self._sessions.discard(session_id)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        def send(action: str, payload: Any) -> str:
            return json.dumps({"actionType": action, "sessionId": session_id, "payload": payload})

        async def speaking(now: bool) -> None:
            """Anam has no speaking signal for passthrough audio."""

        async def on_frame(spoke: bool) -> None:
            n = face.speaking_frames
            if spoke and self.error_after_frames is not None and n == self.error_after_frames:
                with contextlib.suppress(Exception):
                    await ws.send(send("endsession", "error: the engine failed"))
            if spoke and self.drop_after_frames is not None and n == self.drop_after_frames:
                ws.transport.abort()  # the peer closes when the handler sees it, not from inside its own sender

        async def end_later(delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            await ws.send(send("endsession", "max session length reached"))
            await ws.close()

        ender: asyncio.Task[None] | None = None
        face = SpeakingFace(24000, speaking, on_frame)
        face.muted = self.mute
        pc.addTrack(face)
        pc.addTrack(PlayedAudio(face))

        @pc.on("datachannel")
        def channel(dc: Any) -> None:
            @dc.on("message")
            def message(raw: str) -> None:
                if json.loads(raw).get("message_type") == "interrupt":
                    self.interrupts += 1
                    face.clear()
                    face.played.clear()

        try:
            async for raw in ws:
                message = json.loads(raw)
                action, payload = message["actionType"], message.get("payload")
                if action == "offer":
                    offer = payload["connectionDescription"]
                    await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
                    await pc.setLocalDescription(await pc.createAnswer())
                    local = pc.localDescription
                    await ws.send(send("answer", {"sdp": local.sdp, "type": local.type}))
                    await ws.send(send("sessionready", {}))
                    self.sessions_started += 1
                    if self.end_after_s is not None:
                        ender = asyncio.get_running_loop().create_task(end_later(self.end_after_s))
                elif action == "agentaudioinput":
                    pcm = base64.b64decode(payload["audioData"])
                    self.audio_rates.add(int(payload["sampleRate"]))
                    self.audio_bytes += len(pcm)
                    face.audio += pcm
                elif action == "agentaudioinputend":
                    self.ends += 1
                elif action == "heartbeat":
                    self.heartbeats += 1
                elif action == "endsession":
                    return
        finally:
            if ender is not None:
                ender.cancel()
            self.sessions_ended += 1
            await pc.close()
