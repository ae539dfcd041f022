"""WebRTC plumbing shared by the provider avatars (Simli, Anam): the peer, received frames, the turn's clock.

A provider avatar takes our speech in and sends lip-synced video back over a
WebRTC peer connection. What every such provider needs on our side is here:

- `require_aiortc()`: the optional dependency, or a start-time error with the
  exact install command;
- `ReceivingPeer`: an offering `RTCPeerConnection` that only receives (audio and
  video), whose remote video frames land in a queue stamped with their arrival
  time and whose remote audio is read and dropped (unread, aiortc would queue it
  without bound);
- `WebRTCConnection`: the per-turn part of `AvatarConnection`. Our PCM is
  resampled to the provider's rate and handed to the subclass as it arrives; the
  provider's frames from the moment it says it started speaking this turn are
  placed on the turn's clock by the provider's own video timestamps (RTP pts),
  decoded and re-encoded as our JPEG at the session's size, until they cover the
  audio sent.

Sync: we keep our own audio (it is on the wire before the provider has seen it,
so time to first audio stays ours) and place the provider's frames on our audio
clock by the provider's own timing: frame k of a turn depicts the audio
(pts_k - pts_0) after the turn's first sample, where frame 0 is the first frame
after the provider's "speaking" signal. Each frame's drift is its slot on our
frame grid minus that position; the pipeline's drift controller reports it.
"""

from __future__ import annotations

import asyncio
import io
import math
from abc import abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic.dataclasses import dataclass as options_dataclass

from adapters.base import AvatarConnection, AvatarInput, ConnectMode
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.media import RenderSettings, VideoEncoding, VideoFrame
from adapters.openai._http import ProviderOptions
from adapters.options import OPTIONS
from adapters.resample import Resampler


@options_dataclass(frozen=True, config=OPTIONS, kw_only=True)
class SessionProviderOptions(ProviderOptions):
    """The options every provider avatar takes, beside the provider's own."""

    connect: ConnectMode = "session_start"  # or first_turn: when a session's connection opens


INSTALL = 'pip install "tth[webrtc]"'
_PREFETCH = 4  # packets aiortc's RTCRtpReceiver holds in its audio jitter buffer (JitterBuffer(prefetch=4))
_AUDIBLE = 100  # PCM16 peak above which the provider's returned audio counts as speech (opus leaves noise)


def require_aiortc(adapter: str) -> None:
    """Raise ConfigError with the install command when aiortc is missing."""
    try:
        import aiortc  # noqa: F401
    except ImportError:
        raise ConfigError(f"{adapter} needs the WebRTC extra: {INSTALL}") from None


@dataclass(frozen=True, slots=True)
class Received:
    """A decoded provider frame, when it arrived, and its position on the provider's video clock (seconds)."""

    frame: Any  # av.VideoFrame
    arrived: float
    pts_s: float


class ReceivingPeer:
    """A receive-only offering peer: video frames into `frames`, audio read and dropped."""

    def __init__(self, ice_servers: Sequence[dict[str, Any]]) -> None:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        servers = [RTCIceServer(**server) for server in ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        self.frames: asyncio.Queue[Received] = asyncio.Queue(maxsize=250)  # 10 s at 25 fps
        self._tasks: list[asyncio.Task[None]] = []
        self.on_failed: Callable[[str], None] = lambda why: None  # the connection using it sets this
        self.on_sound: Callable[[float], None] | None = None  # called with the arrival of audible provider audio
        self.pc.on("track", self._track)
        self.pc.on("connectionstatechange", self._state)

    async def offer(self) -> dict[str, str]:
        """The local offer, once ICE gathering is complete (aiortc gathers before it returns)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        description = self.pc.localDescription
        return {"sdp": description.sdp, "type": description.type}

    async def answer(self, sdp: str, kind: str = "answer") -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))

    def _track(self, track: Any) -> None:
        reader = self._read_video if track.kind == "video" else self._drain
        self._tasks.append(asyncio.get_running_loop().create_task(reader(track)))

    async def _state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.on_failed(f"WebRTC connection {self.pc.connectionState}")

    async def _read_video(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        loop = asyncio.get_running_loop()
        last_pts: float | None = None
        try:
            while True:
                frame = await track.recv()
                pts_s = float(frame.pts * frame.time_base) if frame.pts is not None else loop.time()
                # aiortc's video jitter buffer lets a frame out when the next one's first packet comes: it
                # arrived about one frame interval before we see it.
                interval = pts_s - last_pts if last_pts is not None and 0 < pts_s - last_pts < 0.2 else 0.0
                last_pts = pts_s
                if self.frames.full():  # nobody is reading (between turns): the oldest goes
                    self.frames.get_nowait()
                self.frames.put_nowait(Received(frame, loop.time() - interval, pts_s))
        except MediaStreamError:
            self.on_failed("the provider's video track ended")

    async def _drain(self, track: Any) -> None:
        """Read the provider's audio (its copy of ours); note when it is audible, for a provider that has no
        "speaking" signal of its own."""
        import numpy as np
        from aiortc.mediastreams import MediaStreamError

        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                if self.on_sound is not None and np.abs(frame.to_ndarray()).max(initial=0) > _AUDIBLE:
                    # aiortc's audio jitter buffer holds _PREFETCH packets back before it lets one out: the
                    # sound reached us that long before we see it (video frames are not held so).
                    held_s = _PREFETCH * frame.samples / frame.sample_rate
                    self.on_sound(loop.time() - held_s)
        except MediaStreamError:
            return

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


def to_jpeg(frame: Any, settings: RenderSettings, quality: int = 80) -> bytes:
    """A provider frame scaled to the session's size, as our JPEG."""
    image = frame.to_image(width=settings.width, height=settings.height)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class WebRTCConnection(AvatarConnection):
    """The per-turn half of a provider avatar over WebRTC; subclasses speak the provider's signalling.

    Subclasses call `started_speaking()` when the provider says it began playing
    this turn's audio and `fail()` when the connection breaks, and implement
    `send_audio`, `end_audio`, `interrupt` and `aclose`.
    """

    def __init__(self, provider: str, sample_rate_hz: int, peer: ReceivingPeer, frame_timeout_s: float) -> None:
        self.provider = provider
        self.sample_rate_hz = sample_rate_hz
        self.peer = peer
        self.frame_timeout_s = frame_timeout_s
        self.error: ProviderError | None = None
        self.onset_tolerance_s = 0.0  # frames this long before the speaking signal may already be speaking
        self._speaking_at: float | None = None
        self._changed = asyncio.Event()
        peer.on_failed = self.fail

    @property
    def closed(self) -> bool:
        return self.error is not None

    def fail(self, message: str, category: ErrorCategory = ErrorCategory.CONNECTIVITY, **kw: Any) -> None:
        """The connection is broken: the running turn raises this, the next turn reconnects."""
        if self.error is None:
            self.error = ProviderError(category, message, provider=self.provider, **kw)
        self._changed.set()

    def started_speaking(self, at: float) -> None:
        if self._speaking_at is None:
            self._speaking_at = at
            self._changed.set()

    async def media_flowing(self) -> None:
        """Wait for the first frame of the idle face: until then, speech sent in would play to nobody."""
        await self.peer.frames.put(await self._next())

    @abstractmethod
    async def send_audio(self, pcm: bytes) -> None:
        """Send PCM16 mono at `sample_rate_hz` to the provider."""

    @abstractmethod
    async def end_audio(self) -> None:
        """Tell the provider this turn's audio is complete."""

    async def before_turn(self) -> None:
        """Wait, briefly, until the provider can mark this turn's start apart from the last one's (default: no wait)."""

    async def speak(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        if self.error is not None:
            raise self.error
        await self.before_turn()
        self._speaking_at = None
        while not self.peer.frames.empty():  # frames of the idle face before this turn
            self.peer.frames.get_nowait()
        sent_ms: list[float] = [0.0]  # how much audio went in; final once the sender is done
        sender = asyncio.get_running_loop().create_task(self._feed(audio, sent_ms))
        try:
            async for frame in self._frames(settings, sender, sent_ms):
                yield frame
        finally:
            sender.cancel()
            await asyncio.wait([sender])

    async def _feed(self, audio: AsyncIterator[AvatarInput], sent_ms: list[float]) -> None:
        resampler: Resampler | None = None
        async for item in audio:
            chunk = item.chunk
            if chunk.sample_rate_hz != self.sample_rate_hz:
                resampler = resampler or Resampler(chunk.sample_rate_hz, self.sample_rate_hz)
                chunk = resampler.feed(chunk)
            await self.send_audio(chunk.pcm)
            sent_ms[0] += chunk.duration_ms
        if resampler is not None and (tail := resampler.flush()).samples:  # what the filter still held
            await self.send_audio(tail.pcm)
            sent_ms[0] += tail.duration_ms
        await self.end_audio()

    async def _frames(
        self, settings: RenderSettings, sender: asyncio.Task[None], sent_ms: list[float]
    ) -> AsyncIterator[VideoFrame]:
        frame_ms = settings.frame_ms
        first_pts: float | None = None
        next_slot = 0
        waiting: deque[Received] = deque(maxlen=50)  # frames read before the provider's speaking signal came
        while True:
            if waiting and self._speaking_at is not None:
                received = waiting.popleft()
            else:
                received = await self._next()
                if self._speaking_at is None or waiting:
                    waiting.append(received)  # the signal may come after the frame that starts the speech
                    continue
            if first_pts is None:
                onset = self._speaking_at
                assert onset is not None  # frames wait in `waiting` until it is known
                if received.arrived < onset - self.onset_tolerance_s:
                    continue  # the idle face before the provider started on this turn
                first_pts = received.pts_s
            source_ms = (received.pts_s - first_pts) * 1000
            slot = math.floor(source_ms / frame_ms + 0.5)
            if sender.done() and slot * frame_ms >= sent_ms[0]:
                return  # frames cover all the audio
            if slot < next_slot:
                continue  # a provider faster than our fps: its extra frame falls in a slot already shown
            data = to_jpeg(received.frame, settings)
            yield VideoFrame(
                data, VideoEncoding.JPEG, settings.width, settings.height, slot, slot * frame_ms, source_ms
            )
            next_slot = slot + 1

    async def _next(self) -> Received:
        """The next received frame; the connection's error, or a timeout when the provider stops sending."""
        frames = self.peer.frames
        while True:
            if self.error is not None:
                raise self.error
            if not frames.empty():
                return frames.get_nowait()
            self._changed.clear()
            getter = asyncio.ensure_future(frames.get())
            changed = asyncio.ensure_future(self._changed.wait())
            done, _ = await asyncio.wait({getter, changed}, timeout=self.frame_timeout_s, return_when="FIRST_COMPLETED")
            changed.cancel()
            if getter in done:
                return getter.result()
            getter.cancel()
            if not done:
                raise ProviderError(
                    ErrorCategory.TIMEOUT, f"no frame for {self.frame_timeout_s:g} s", provider=self.provider
                )
