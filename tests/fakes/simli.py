"""A fake Simli on 127.0.0.1: its REST API, its P2P signalling WebSocket and a real WebRTC peer sending video.

Written from Simli's docs and the `simli-ai` SDK's P2P transport:

- `POST /compose/token` (header `x-simli-api-key`, JSON `{faceId, handleSilence,
  maxSessionLength, maxIdleTime}`) answers `{"session_token"}`; a wrong key is a
  401 `{"detail": "Invalid API key"}`; `GET /compose/ice` answers the ICE
  servers (none here: loopback only);
- the WebSocket `/compose/webrtc/p2p?session_token=...` (a 401 at the handshake
  for an unknown token) takes the client's offer as JSON, answers with its own,
  then sends `START`; binary messages are PCM16 mono 16 kHz to play, `SKIP`
  clears what has not played, `DONE` ends the session; it sends `SPEAK` and
  `SILENT` as the face starts and stops speaking, and `CLOSING REASON: ...` then
  `STOP` when `maxIdleTime` passes with nothing to play.

The video is `tests.fakes.webrtc.SpeakingFace` (brightness follows the audio
level). The WebSocket is served on its own port (`ws_url`), the REST API on
another (`url`). Fault knobs: `session_status` (+ `retry_after`) for the REST
calls (the first `fault_times`), `drop_after_frames` (the socket and peer drop after that many speaking
frames), `error_after_frames` (an `ERROR:` message instead), `mute` (never a
speaking frame).
"""

from __future__ import annotations

import asyncio
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
from tests.fakes.webrtc import SpeakingFace

KEY = "simli_test_0123456789abcdefkey"
RATE_HZ = 16_000


@dataclass
class FakeSimli(FakeProvider):
    key: str = KEY
    split: int = 0
    session_status: int | None = None
    retry_after: str | None = None
    fault_times: int = 1_000_000  # how many token requests the status fault hits
    drop_after_frames: int | None = None
    error_after_frames: int | None = None
    mute: bool = False
    session_requests: int = 0
    session_bodies: list[dict[str, Any]] = field(default_factory=list)
    sessions_started: int = 0
    sessions_ended: int = 0  # signalling sockets closed, by either side
    interrupts: int = 0  # SKIPs
    audio_bytes: int = 0
    messages: list[str] = field(default_factory=list)
    server: FakeHTTPServer | None = None
    _tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ws: Server | None = None
    _peers: list[RTCPeerConnection] = field(default_factory=list)

    async def start(self) -> Self:
        await super().start()
        self._ws = await serve(self._session, "127.0.0.1", 0, process_request=self._check_token, max_size=None)
        return self

    async def aclose(self) -> None:
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        for pc in self._peers:
            await pc.close()
        await super().aclose()

    @property
    def ws_url(self) -> str:
        assert self._ws is not None
        port = next(iter(self._ws.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    # ---- REST ----------------------------------------------------------------------------------------------------

    async def _handle(self, request: Request, r: Responder) -> None:
        if request.headers.get("x-simli-api-key") != self.key:
            await r.json(401, {"detail": "Invalid API key"})
            return
        if request.method == "GET" and request.path == "/compose/ice":
            await r.json(200, [])
            return
        if request.method != "POST" or request.path != "/compose/token":
            await r.json(404, {"detail": "Not Found"})
            return
        number, self.session_requests = self.session_requests, self.session_requests + 1
        if self.session_status is not None and number < self.fault_times:
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            await r.json(self.session_status, {"detail": "Rate limit exceeded"}, headers)
            return
        body = request.json()
        if not isinstance(body, dict) or not body.get("faceId"):
            await r.json(422, {"detail": [{"loc": ["body", "faceId"], "msg": "Field required"}]})
            return
        self.session_bodies.append(body)
        token = secrets.token_hex(16)
        self._tokens[token] = body
        await r.json(200, {"session_token": token})

    # ---- signalling and media ------------------------------------------------------------------------------------

    def _check_token(self, connection: ServerConnection, request: WSRequest) -> WSResponse | None:
        parts = urlsplit(request.path)
        token = dict(parse_qsl(parts.query)).get("session_token", "")
        if parts.path != "/compose/webrtc/p2p" or token not in self._tokens:
            return WSResponse(401, "Unauthorized", Headers(), b"Invalid session token")
        return None

    async def _session(self, ws: ServerConnection) -> None:
        token = dict(parse_qsl(urlsplit(ws.request.path if ws.request else "").query))["session_token"]
        config = self._tokens.pop(token)  # a token opens one session
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._peers.append(pc)

        async def speaking(now: bool) -> None:
            with contextlib.suppress(Exception):
                await ws.send("SPEAK" if now else "SILENT")

        async def on_frame(spoke: bool) -> None:
            if not spoke:
                return
            n = face.speaking_frames
            if self.error_after_frames is not None and n == self.error_after_frames:
                await ws.send("ERROR: Internal server error")
                await ws.close()
            if self.drop_after_frames is not None and n == self.drop_after_frames:
                # No close frame: a dropped connection. The peer closes when the handler sees it (not here:
                # this runs inside the peer's own sender task, which closing it would wait for).
                ws.transport.abort()

        face = SpeakingFace(RATE_HZ, speaking, on_frame)
        face.muted = self.mute
        pc.addTrack(face)
        try:
            offer = json.loads(await ws.recv())
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            await pc.setLocalDescription(await pc.createAnswer())
            await ws.send(json.dumps({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}))
            await ws.send("START")
            self.sessions_started += 1
            await self._play(ws, face, float(config.get("maxIdleTime", 30)))
        finally:
            self.sessions_ended += 1
            await pc.close()

    async def _play(self, ws: ServerConnection, face: SpeakingFace, max_idle_s: float) -> None:
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), max_idle_s)
            except TimeoutError:
                if face.audio:
                    continue
                await ws.send("CLOSING REASON: maxIdleTime reached")
                await ws.send("STOP")
                await ws.close()
                return
            if isinstance(message, bytes):
                if message == b"DONE":
                    await ws.close()
                    return
                self.audio_bytes += len(message)
                face.audio += message
                continue
            self.messages.append(message)
            if message == "SKIP":
                self.interrupts += 1
                face.clear()
            elif message == "DONE":
                await ws.close()
                return
