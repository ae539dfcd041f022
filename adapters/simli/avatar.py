"""`simli_avatar`: Simli's photoreal face as the avatar stage, one peer-to-peer WebRTC session per TTH session.

The protocol, as Simli's docs and its Python SDK (`simli-ai`, P2P transport) use it:

1. `POST /compose/token` (header `x-simli-api-key`) with the face and the session
   limits returns a `session_token`; `GET /compose/ice` returns the ICE servers;
2. a WebSocket to `/compose/webrtc/p2p?session_token=...` carries our SDP offer
   (JSON `{"sdp", "type"}`) and Simli's answer back, then `START` once it plays;
3. our speech goes in as binary messages of PCM16 mono 16 kHz (at most 6000 bytes
   each); `SKIP` drops what it has not played yet, `DONE` ends the session;
4. Simli says `SPEAK` when the face starts speaking the audio and `SILENT` when it
   stops; `ERROR: ...` (and `RATE LIMIT ...`) and `CLOSING REASON: ...` then `STOP`
   end the session (its `maxIdleTime` and `maxSessionLength` included).

Video (and Simli's copy of the audio) comes back on the peer connection. The
session opens when the TTH session starts (or on its first turn, `connect:
first_turn`) and is kept; one that Simli ended is reopened on the next turn.
Frames are placed on the turn's clock from `SPEAK` on by their own timestamps
(`adapters.webrtc`).

Options:

    face_id: (or SIMLI_FACE_ID)      the face to use; required
    connect: session_start           or first_turn: when the session's connection opens
    api_key_env: SIMLI_API_KEY       the variable holding the key (never put the key in YAML)
    base_url: https://api.simli.ai   or SIMLI_BASE_URL; the WebSocket is the same host (ws/wss)
    ws_url: (from base_url)          the signalling host, where it is not the API's (a proxy, the tests' fake)
    max_session_length_s: 600        Simli's maxSessionLength
    max_idle_time_s: 30              Simli's maxIdleTime (an idle session it ended is reopened)
    connect_timeout_s: 10            from the token request to START
    frame_timeout_s: 2               a turn with no frame for this long fails (the router falls back)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlencode

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

SAMPLE_RATE_HZ = 16_000
_MAX_MESSAGE_BYTES = 6000  # what the SDK sends at most per WebSocket message
_SILENT_WAIT_S = 0.5  # how long a turn waits for the last one's SILENT (one or two frames, as a rule)


def _category(message: str) -> ErrorCategory:
    """How Simli's in-socket error text classifies."""
    text = message.lower()
    if "rate" in text and "limit" in text:
        return ErrorCategory.RATE_LIMIT
    if "api key" in text or "unauthorized" in text or "session token" in text:
        return ErrorCategory.AUTH
    if "face" in text and ("not found" in text or "invalid" in text):
        return ErrorCategory.INVALID_REQUEST
    return ErrorCategory.SERVER


def _seconds(value: Any) -> int | float:
    """A limit in seconds as Simli takes it: whole seconds as an integer."""
    seconds = float(value)
    if seconds <= 0:
        raise ValueError(f"a Simli time limit must be > 0 s, got {value!r}")
    return int(seconds) if seconds.is_integer() else seconds


class SimliConnection(WebRTCConnection):
    """One Simli session: its signalling socket and its peer connection."""

    def __init__(
        self,
        provider: str,
        socket: ClientConnection,
        peer: ReceivingPeer,
        frame_timeout_s: float,
        secrets: tuple[str, ...],
    ) -> None:
        super().__init__(provider, SAMPLE_RATE_HZ, peer, frame_timeout_s)
        self.socket = socket
        self._secrets = secrets
        self._closing_reason = ""
        self._reader: asyncio.Task[None] | None = None
        self._silent = asyncio.Event()  # between SILENT (or START) and SPEAK
        self._silent.set()

    def listen(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.socket:
                text = message.decode(errors="replace") if isinstance(message, bytes) else message
                self.on_message(text.strip())
        except websockets.ConnectionClosed:
            pass
        why = f"session ended: {self._closing_reason}" if self._closing_reason else "signalling socket closed"
        self.fail(why)

    def on_message(self, text: str) -> None:
        head = text.upper()
        if head.startswith("SPEAK"):
            self._silent.clear()
            self.started_speaking(asyncio.get_running_loop().time())
        elif head.startswith("SILENT"):
            self._silent.set()
        elif head.startswith(("ERROR", "RATE")):
            detail = redact(text.partition(":")[2].strip() or text, self._secrets)
            self.fail(f"Simli error: {detail}", _category(text))
        elif head.startswith(("CLOSING REASON", "STOP REASON")):
            self._closing_reason = text.partition(":")[2].strip()
            log.info("simli is ending the session", adapter=self.provider, reason=self._closing_reason)
        elif head.startswith("STOP"):
            self.fail(f"session ended: {self._closing_reason or 'STOP'}")

    async def _signal(self, data: str | bytes) -> None:
        try:
            await self.socket.send(data)
        except websockets.ConnectionClosed:
            self.fail("signalling socket closed")
            assert self.error is not None
            raise self.error from None

    async def before_turn(self) -> None:
        """A turn right after one that was cut (SKIP) or had just ended waits for SILENT, at most 0.5 s.

        Simli says SPEAK when the face goes from silent to speaking: audio sent while
        it still plays (or has just dropped) the last turn's would get no SPEAK of
        its own, and the turn would never find its first frame.
        """
        if not self._silent.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._silent.wait(), _SILENT_WAIT_S)

    async def send_audio(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), _MAX_MESSAGE_BYTES):
            await self._signal(pcm[i : i + _MAX_MESSAGE_BYTES])

    async def end_audio(self) -> None:
        """Simli has no end-of-reply message: it plays what it has and goes silent."""

    async def interrupt(self) -> None:
        try:
            await asyncio.wait_for(self._signal("SKIP"), 1.0)
        except (ProviderError, TimeoutError) as exc:
            log.warning("simli SKIP failed", adapter=self.provider, error=str(exc))

    async def aclose(self) -> None:
        if self.error is None:
            self.error = ProviderError(ErrorCategory.CONNECTIVITY, "connection closed", provider=self.provider)
        try:
            await asyncio.wait_for(self.socket.send(b"DONE"), 0.5)
        except (websockets.ConnectionClosed, TimeoutError):
            pass
        await self.socket.close()
        if self._reader is not None:
            self._reader.cancel()
        await self.peer.aclose()


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class SimliOptions(SessionProviderOptions):
    ws_url: str = ""  # empty: the base URL's, as ws:// or wss://
    face_id: str = ""  # empty: $SIMLI_FACE_ID
    max_session_length_s: Annotated[float, Field(gt=0)] = 600
    max_idle_time_s: Annotated[float, Field(gt=0)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    frame_timeout_s: Annotated[float, Field(gt=0)] = 2.0


class SimliAvatar(SessionAvatarAdapter):
    """Simli's face, lip-synced to our speech, over peer-to-peer WebRTC."""

    mode = Mode.API
    Options = SimliOptions
    options: SimliOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        require_aiortc(name)
        self.key = api_key(self.options, name, "SIMLI_API_KEY")
        self.url = base_url(self.options, name, "https://api.simli.ai", "SIMLI_BASE_URL")
        self.ws_url = (self.options.ws_url or "ws" + self.url.removeprefix("http")).rstrip("/")
        self.face_id = (self.options.face_id or os.environ.get("SIMLI_FACE_ID", "")).strip()
        if not self.face_id:
            raise ConfigError(f"{name} needs a face: set options.face_id or the environment variable SIMLI_FACE_ID")
        self.max_session_length_s = _seconds(self.options.max_session_length_s)
        self.max_idle_time_s = _seconds(self.options.max_idle_time_s)
        self.connect_timeout_s = self.options.connect_timeout_s
        self.frame_timeout_s = self.options.frame_timeout_s
        self.secrets: tuple[str, ...] = (self.key,) if self.key else ()
        self._http = ProviderHTTP(name, self.url, {"x-simli-api-key": self.key or ""}, secrets=self.secrets)

    @property
    def model(self) -> str:
        return f"face {self.face_id}"

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
                ErrorCategory.TIMEOUT, f"session not started within {self.connect_timeout_s:g} s", provider=self.name
            ) from None

    async def _connect(self) -> SimliConnection:
        body = {
            "faceId": self.face_id,
            "handleSilence": True,
            "maxSessionLength": self.max_session_length_s,
            "maxIdleTime": self.max_idle_time_s,
        }
        token, ice = await asyncio.gather(
            self._http.request_json("POST", "/compose/token", body), self._http.request_json("GET", "/compose/ice")
        )
        if not isinstance(token, Mapping) or not isinstance(token.get("session_token"), str):
            raise ProviderError(ErrorCategory.SERVER, "malformed /compose/token answer", provider=self.name)
        session_token = token["session_token"]
        secrets = (*self.secrets, session_token)
        peer = ReceivingPeer(ice if isinstance(ice, list) else [])
        socket: ClientConnection | None = None
        try:
            offer = await peer.offer()
            query = urlencode({"enableSFU": "False", "session_token": session_token})
            socket = await self._open_socket(f"{self.ws_url}/compose/webrtc/p2p?{query}", secrets)
            connection = SimliConnection(self.name, socket, peer, self.frame_timeout_s, secrets)
            await socket.send(json.dumps(offer))
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

    async def _open_socket(self, url: str, secrets: tuple[str, ...]) -> ClientConnection:
        try:
            return await websockets.connect(url, max_size=None)
        except websockets.InvalidStatus as exc:
            response = exc.response
            raise error_from_status(
                response.status_code, bytes(response.body or b""), dict(response.headers), self.name, secrets
            ) from None
        except (OSError, websockets.InvalidHandshake) as exc:
            raise transport_error(exc, self.name, secrets) from None

    async def _handshake(self, connection: SimliConnection, socket: ClientConnection, peer: ReceivingPeer) -> None:
        """Read the answer, then everything up to START; an error on the way fails the connect."""
        answered = False
        try:
            async for message in socket:
                text = (message.decode(errors="replace") if isinstance(message, bytes) else message).strip()
                if not answered and text.startswith("{"):
                    description = json.loads(text)
                    await peer.answer(str(description["sdp"]), str(description.get("type", "answer")))
                    answered = True
                elif text.upper().startswith("START"):
                    if not answered:
                        raise ProviderError(ErrorCategory.SERVER, "START before an SDP answer", provider=self.name)
                    return
                else:
                    connection.on_message(text)
                    if connection.error is not None:
                        raise connection.error
        except (ValueError, KeyError):
            raise ProviderError(ErrorCategory.SERVER, "malformed SDP answer", provider=self.name) from None
        except websockets.ConnectionClosed:
            pass
        raise connection.error or ProviderError(
            ErrorCategory.CONNECTIVITY, "signalling socket closed before START", provider=self.name
        )
