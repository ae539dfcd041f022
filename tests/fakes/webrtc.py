"""WebRTC for the fake provider avatars: loopback-only ICE, and a face whose brightness follows the audio it plays.

Loopback only: the fakes hand out no ICE servers (aiortc then asks no STUN
server) and `loopback_ice()` makes aioice gather exactly one host candidate,
127.0.0.1, which it leaves out by default (RFC 8445 excludes loopback). Nothing
then leaves 127.0.0.0/8. It patches aioice's address lookup for the process, so
it is for tests and benchmarks only.

`SpeakingFace` is the fake provider's video: a 160x120 pattern at 25 fps with a
bar that moves every frame; while it plays audio its brightness follows the
level of the 40 ms it plays in that frame, so a test can check that the lips
(brightness) follow the speech, and it calls back when it starts and stops
speaking (the provider's SPEAK and SILENT).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Awaitable, Callable, Iterator

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack

WIDTH, HEIGHT, FPS = 160, 120, 25
IDLE_LEVEL = 20  # the brightness of a silent face
_CLOCK = 90_000


@contextlib.contextmanager
def loopback_ice() -> Iterator[None]:
    """While inside, aioice gathers only 127.0.0.1 as its host candidate."""
    original = aioice.ice.get_host_addresses

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


def brightness(level: float) -> int:
    """The face's brightness for an audio RMS level (PCM16 units)."""
    return int(IDLE_LEVEL + 200 * min(1.0, level / 6000))


def mean_brightness(rgb: np.ndarray) -> float:
    """What a test reads back from a decoded frame (the moving bar is excluded by taking the median)."""
    return float(np.median(rgb))


class SpeakingFace(MediaStreamTrack):
    """Video that plays the PCM put in `audio` (16-bit mono at `rate_hz`) 40 ms per frame."""

    kind = "video"

    def __init__(
        self,
        rate_hz: int,
        on_speaking: Callable[[bool], Awaitable[None]],
        on_frame: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.rate_hz = rate_hz
        self.audio = bytearray()
        self.muted = False  # never show a speaking frame (the first-frame fault)
        self._on_speaking = on_speaking
        self._on_frame = on_frame
        self._speaking = False
        self._n = 0
        self._start: float | None = None
        self.speaking_frames = 0
        self.played = bytearray()  # what it has played, for a provider that sends its copy of the audio back

    @property
    def speaking(self) -> bool:
        """The last frame sent showed speech."""
        return self._speaking

    def clear(self) -> None:
        """SKIP / interrupt: drop what has not played."""
        self.audio.clear()

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._n / FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        take = self.rate_hz * 2 // FPS
        level: float | None = None
        if self.audio and not self.muted:
            piece = bytes(self.audio[:take])
            del self.audio[:take]
            self.played += piece
            samples = np.frombuffer(piece[: len(piece) // 2 * 2], dtype="<i2").astype(np.float64)
            level = float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0
        speaking = level is not None
        if speaking != self._speaking:
            self._speaking = speaking
            await self._on_speaking(speaking)  # before the frame: the client sees SPEAK first
        if speaking:
            self.speaking_frames += 1
        pixels = np.full((HEIGHT, WIDTH, 3), brightness(level or 0.0), dtype=np.uint8)
        bar = (self._n * 4) % WIDTH
        pixels[:, bar : bar + 6] = 255 - pixels[0, 0, 0]  # the pattern moves: frames are never all alike
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = self._n * (_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, _CLOCK)
        self._n += 1
        if self._on_frame is not None:
            await self._on_frame(speaking)
        return frame


class PlayedAudio(MediaStreamTrack):
    """The provider's copy of the audio its face plays (`SpeakingFace.played`), 20 ms a frame, silence between."""

    kind = "audio"

    def __init__(self, face: SpeakingFace) -> None:
        super().__init__()
        self.face = face
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._n * 0.02 - time.monotonic()))
        rate = self.face.rate_hz
        size = rate // 50 * 2
        piece = bytes(self.face.played[:size]).ljust(size, b"\0")
        del self.face.played[:size]
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(piece, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        frame.pts = self._n * (rate // 50)
        frame.time_base = fractions.Fraction(1, rate)
        self._n += 1
        return frame
