"""A stub avatar: frames on the audio clock whose mouth bar follows the audio's loudness.

Cheap by construction: a handful of JPEGs (one per mouth level) are encoded once
per frame size, and each frame is a lookup, so it serves load tests with
hundreds of sessions. The `local` profile's face lives in `adapters.face`.

Options: the knobs of `adapters.local.knobs`.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from adapters.base import AvatarAdapter, AvatarInput, Capabilities
from adapters.framing import FrameClock
from adapters.local.knobs import KnobOptions, Knobs
from adapters.media import RenderSettings, VideoEncoding, VideoFrame
from adapters.options import GivenOptions

LEVELS = 6
_FULL_SCALE_RMS = 6000.0


@lru_cache(maxsize=8)
def _frames(width: int, height: int) -> tuple[bytes, ...]:
    out = []
    for level in range(LEVELS):
        img = Image.new("RGB", (width, height), (40, 44, 52))
        draw = ImageDraw.Draw(img)
        draw.ellipse((width * 0.2, height * 0.1, width * 0.8, height * 0.9), fill=(224, 188, 160))
        mouth_h = height * 0.02 + height * 0.12 * level / (LEVELS - 1)
        cy = height * 0.68
        draw.rectangle((width * 0.38, cy - mouth_h / 2, width * 0.62, cy + mouth_h / 2), fill=(90, 20, 30))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=70)
        out.append(buf.getvalue())
    return tuple(out)


class StubAvatar(AvatarAdapter):
    """Pre-encoded frames picked by audio loudness."""

    Options = KnobOptions
    options: KnobOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._knobs = Knobs.from_options(self.options)

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True)

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        frames = _frames(settings.width, settings.height)
        clock = FrameClock(settings)
        index = 0
        async for item in audio:
            for window in clock.push(item.chunk):
                await self._knobs.before(index, self.name)
                yield self._frame(frames, window, settings)
                index += 1
        for window in clock.flush():
            await self._knobs.before(index, self.name)
            yield self._frame(frames, window, settings)
            index += 1

    @staticmethod
    def _frame(frames: tuple[bytes, ...], window: Any, settings: RenderSettings) -> VideoFrame:
        rms = float(np.sqrt(np.mean(np.square(window.samples, dtype=np.float64)))) if len(window.samples) else 0.0
        level = min(LEVELS - 1, int(rms / _FULL_SCALE_RMS * (LEVELS - 1) + 0.5))
        return VideoFrame(
            frames[level],
            VideoEncoding.JPEG,
            settings.width,
            settings.height,
            window.index,
            window.timestamp_ms,
            window.timestamp_ms,
        )
