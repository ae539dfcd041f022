"""A turn's speech as it is made: put on the turn's clock, handed to the outlet and to the face."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from adapters.base import AvatarInput, ControlMapping
from adapters.media import AudioChunk, SpeechMark
from tth_server.pipeline.outlet import Outlet
from tth_server.pipeline.turn import SpokenSegment, TurnRun


class Speech:
    """Where the voice of a turn (its TTS, or its realtime provider) puts each piece of audio it makes.

    Each piece is moved onto the turn's clock right after the audio made before
    it, handed to the outlet and to the face (`face`, the avatar's input), and the
    voice then waits until making more is due (`Pacer.ahead`).
    """

    def __init__(self, run: TurnRun, outlet: Outlet, face: asyncio.Queue[AvatarInput | None]) -> None:
        self._run = run
        self._outlet = outlet
        self._face = face
        self.made_ms = 0.0  # the end of the audio made so far, on the turn's clock

    async def add(self, piece: AudioChunk, spoken: SpokenSegment, face_mapping: ControlMapping) -> None:
        """Hand on a piece of `spoken`, which the face draws with `face_mapping`."""
        chunk = _on_clock(piece, self.made_ms)
        await self._outlet.audio(chunk, spoken)
        await self._face.put(AvatarInput(chunk, face_mapping))
        await self._run.pacer.ahead(chunk.timestamp_ms)
        self.made_ms = chunk.end_ms

    async def done(self) -> None:
        """The voice has made all it will: the face's input ends, and the outlet has one producer fewer."""
        await self._face.put(None)
        self._outlet.done()


def _on_clock(chunk: AudioChunk, at_ms: float) -> AudioChunk:
    """Move a chunk (stamped relative to its synthesis call) to `at_ms` on the turn's clock."""
    shift = at_ms - chunk.timestamp_ms
    marks = tuple(SpeechMark(m.kind, m.time_ms + shift, m.text) for m in chunk.marks)
    return replace(chunk, timestamp_ms=at_ms, marks=marks)
