"""`anam_avatar`: Anam's photoreal face as the avatar stage with audio passthrough, one engine session per TTH session.

The protocol, as Anam's docs and its Python SDK (`anam`) use it:

1. `POST /v1/engine/session` (`Authorization: Bearer <key>`) with a persona
   config (`avatarId`, `enableAudioPassthrough: true`) returns the session id,
   the engine host and protocol, the signalling path and, in `clientConfig`, the
   ICE servers and the heartbeat interval;
2. a WebSocket to `<engine>/<signallingEndpoint>?session_id=...` carries JSON
   `{actionType, sessionId, payload}` messages: our `offer` (with a `session`
   data channel), the engine's `answer`, `sessionready`, `heartbeat` both ways,
   `warning`, `endsession`;
3. our speech goes in as `agentaudioinput` (base64 pcm_s16le, 16-24 kHz, with a
   sequence number), `agentaudioinputend` closes a reply; `{"message_type":
   "interrupt"}` on the data channel stops the persona speaking.

Anam sends no "speaking" signal for passthrough audio, so a turn's frame 0 is
the first frame after its copy of our audio turns audible on the returned audio
track (`adapters.webrtc`). Options:

    avatar_id: (or ANAM_AVATAR_ID)   the face; required
    connect: session_start           or first_turn: when the session's connection opens
    api_key_env: ANAM_API_KEY        the variable holding the key
    base_url: https://api.anam.ai    or ANAM_BASE_URL
    sample_rate_hz: 24000            the rate our speech is sent at (16000-24000)
    max_session_length_s: 600        Anam's maxSessionLengthSeconds
    connect_timeout_s: 15            session, signalling and sessionready (Anam documents 4-5 s, up to 10)
    frame_timeout_s: 2               a turn with no frame for this long fails (the router falls back)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import websockets
from pydantic import Field
from pydantic.dataclasses import dataclass
from websockets.asyncio.client import ClientConnection

from adapters.base import AvatarConnection, Mode, SessionAvatarAdapter
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.logs import log
from adapters.openai._http import (
    ProviderHTTP,
    api_key,
    base_url,
    error_from_status,
    redact,
    transport_error,
)
from adapters.options import OPTIONS, GivenOptions
from adapters.webrtc import ReceivingPeer, SessionProviderOptions, WebRTCConnection, require_aiortc


class AnamConnection(WebRTCConnection):
    """One Anam engine session: its signalling socket, heartbeat, data channel and peer connection."""

    def __init__(
        self,
        provider: str,
        session_id: str,
        socket: ClientConnection,
        peer: ReceivingPeer,
        channel: Any,
        rate_hz: int,
        frame_timeout_s: float,
        heartbeat_s: float,
        secrets: tuple[str, ...],
    ) -> None:
        super().__init__(provider, rate_hz, peer, frame_timeout_s)
        self.session_id = session_id
        self.socket = socket
        self.channel = channel
        self._secrets = secrets
        self._sequence = 0
        self._in_turn = False
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat_s = heartbeat_s
        peer.on_sound = self._sound
        # Its returned audio turns audible up to ~20 ms after the frame that starts the speech is seen (20 ms
        # packets), while the idle frame before that is seen a frame earlier: frame 0 is right to +-1 frame.
        self.onset_tolerance_s = 0.02

    def listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._heartbeat())]

    def _sound(self, at: float) -> None:
        if self._in_turn:
            self.started_speaking(at)

    def message(self, action: str, payload: Any) -> str:
        return json.dumps({"actionType": action, "sessionId": self.session_id, "payload": payload})

    async def _read(self) -> None:
        try:
            async for raw in self.socket:
                self.on_message(json.loads(raw))
        except (websockets.ConnectionClosed, ValueError):
            pass
        self.fail("signalling socket closed")

    def on_message(self, message: Mapping[str, Any]) -> None:
        action = str(message.get("actionType", "")).lower()
        payload = message.get("payload")
        if action == "endsession":
            reason = payload if isinstance(payload, str) else "ended by the engine"
            self.fail(f"session ended: {redact(reason, self._secrets)}", _category(reason))
        elif action == "warning":
            log.warning("anam warning", adapter=self.provider, warning=redact(str(payload), self._secrets))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self._signal(self.message("heartbeat", ""))

    async def _signal(self, data: str) -> None:
        try:
            await self.socket.send(data)
        except websockets.ConnectionClosed:
            self.fail("signalling socket closed")
            assert self.error is not None
            raise self.error from None

    async def send_audio(self, pcm: bytes) -> None:
        self._in_turn = True
        payload = {
            "audioData": base64.b64encode(pcm).decode("ascii"),
            "encoding": "pcm_s16le",
            "sampleRate": self.sample_rate_hz,
            "channels": 1,
            "sequenceNumber": self._sequence,
        }
        self._sequence += 1
        await self._signal(self.message("agentaudioinput", payload))

    async def end_audio(self) -> None:
        self._sequence = 0  # sequence numbers restart with each reply
        await self._signal(self.message("agentaudioinputend", {}))

    async def interrupt(self) -> None:
        self._in_turn = False
        self._sequence = 0
        if self.channel.readyState == "open":
            stamp = datetime.now(UTC).isoformat()
            self.channel.send(
                json.dumps({"message_type": "interrupt", "session_id": self.session_id, "timestamp": stamp})
            )

    async def aclose(self) -> None:
        if self.error is None:
            self.error = ProviderError(ErrorCategory.CONNECTIVITY, "connection closed", provider=self.provider)
            try:
                await asyncio.wait_for(self.socket.send(self.message("endsession", {})), 0.5)
            except (websockets.ConnectionClosed, TimeoutError):
                pass
        for task in self._tasks:
            task.cancel()
        await self.socket.close()
        await self.peer.aclose()


def _category(reason: str) -> ErrorCategory:
    text = reason.lower()
    if "limit" in text and ("concurrent" in text or "rate" in text):
        return ErrorCategory.RATE_LIMIT
    if "error" in text or "fail" in text:
        return ErrorCategory.SERVER
    return ErrorCategory.CONNECTIVITY  # a length or idle limit: the next turn opens a new session


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class AnamOptions(SessionProviderOptions):
    avatar_id: str = ""  # empty: $ANAM_AVATAR_ID
    sample_rate_hz: Annotated[int, Field(ge=16000, le=24000, description="Anam's range")] = 24000
    max_session_length_s: Annotated[int, Field(gt=0)] = 600
    connect_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    frame_timeout_s: Annotated[float, Field(gt=0)] = 2.0


class AnamAvatar(SessionAvatarAdapter):
    """Anam's face, lip-synced to our speech (audio passthrough), over WebRTC."""

    mode = Mode.API
    Options = AnamOptions
    options: AnamOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        require_aiortc(name)
        self.key = api_key(self.options, name, "ANAM_API_KEY")
        self.url = base_url(self.options, name, "https://api.anam.ai", "ANAM_BASE_URL")
        self.avatar_id = (self.options.avatar_id or os.environ.get("ANAM_AVATAR_ID", "")).strip()
        if not self.avatar_id:
            raise ConfigError(f"{name} needs a face: set options.avatar_id or the environment variable ANAM_AVATAR_ID")
        self.rate_hz = self.options.sample_rate_hz
        self.max_session_length_s = self.options.max_session_length_s
        self.connect_timeout_s = self.options.connect_timeout_s
        self.frame_timeout_s = self.options.frame_timeout_s
        self.secrets: tuple[str, ...] = (self.key,) if self.key else ()
        self._http = ProviderHTTP(name, self.url, {"Authorization": f"Bearer {self.key}"}, secrets=self.secrets)

    @property
    def model(self) -> str:
        return f"avatar {self.avatar_id}"

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def connect(self) -> AvatarConnection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await self._connect()
        except TimeoutError:
            raise ProviderError(
                ErrorCategory.TIMEOUT, f"session not ready within {self.connect_timeout_s:g} s", provider=self.name
            ) from None

    async def _connect(self) -> AnamConnection:
        body = {
            "clientLabel": "tth",
            "personaConfig": {
                "avatarId": self.avatar_id,
                "enableAudioPassthrough": True,
                "maxSessionLengthSeconds": self.max_session_length_s,
            },
            "sessionOptions": {"enableSessionReplay": False},
        }
        info = await self._http.request_json("POST", "/v1/engine/session", body)
        try:
            session_id = str(info["sessionId"])
            scheme = "wss" if info["engineProtocol"] == "https" else "ws"
            host = urlsplit(f"//{info['engineHost']}").netloc
            url = f"{scheme}://{host}{info['signallingEndpoint']}?session_id={session_id}"
            client = info.get("clientConfig") or {}
            ice = list(client.get("iceServers") or [])
            heartbeat_s = float(client.get("heartbeatIntervalSeconds") or 5)
        except (KeyError, TypeError, ValueError):
            raise ProviderError(
                ErrorCategory.SERVER, "malformed /v1/engine/session answer", provider=self.name
            ) from None
        peer = ReceivingPeer(ice)
        channel = peer.pc.createDataChannel("session", ordered=True)
        socket: ClientConnection | None = None
        try:
            offer = await peer.offer()
            socket = await self._open_socket(url)
            connection = AnamConnection(
                self.name,
                session_id,
                socket,
                peer,
                channel,
                self.rate_hz,
                self.frame_timeout_s,
                heartbeat_s,
                self.secrets,
            )
            await socket.send(connection.message("offer", {"connectionDescription": offer, "userUid": session_id}))
            await self._handshake(connection, socket, peer)
        except BaseException:
            if socket is not None:
                await socket.close()
            await peer.aclose()
            raise
        connection.listen()
        try:
            await connection.media_flowing()
        except BaseException:
            await connection.aclose()
            raise
        return connection

    async def _open_socket(self, url: str) -> ClientConnection:
        try:
            return await websockets.connect(url, max_size=None, close_timeout=2.0)
        except websockets.InvalidStatus as exc:
            response = exc.response
            raise error_from_status(
                response.status_code, bytes(response.body or b""), dict(response.headers), self.name, self.secrets
            ) from None
        except (OSError, websockets.InvalidHandshake) as exc:
            raise transport_error(exc, self.name, self.secrets) from None

    async def _handshake(self, connection: AnamConnection, socket: ClientConnection, peer: ReceivingPeer) -> None:
        """Read the answer, then everything up to sessionready; an endsession on the way fails the connect."""
        answered = False
        try:
            async for raw in socket:
                message = json.loads(raw)
                action = str(message.get("actionType", "")).lower()
                payload = message.get("payload")
                if action == "answer" and isinstance(payload, Mapping):
                    await peer.answer(str(payload["sdp"]), str(payload.get("type", "answer")))
                    answered = True
                elif action == "sessionready":
                    if not answered:
                        raise ProviderError(ErrorCategory.SERVER, "sessionready before an answer", provider=self.name)
                    return
                else:
                    connection.on_message(message)
                    if connection.error is not None:
                        raise connection.error
        except (ValueError, KeyError):
            raise ProviderError(ErrorCategory.SERVER, "malformed signalling message", provider=self.name) from None
        except websockets.ConnectionClosed:
            pass
        raise connection.error or ProviderError(
            ErrorCategory.CONNECTIVITY, "signalling socket closed before sessionready", provider=self.name
        )
