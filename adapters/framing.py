"""Cut audio on a clock: PCM with marks into fixed-length chunks, and chunks into per-frame windows.

Local TTS engines (espeak-ng, Piper) hand over PCM in pieces of their own size with
speech marks on the call's clock; `MarkedChunker` re-cuts it into chunks of
`chunk_ms`, each carrying the marks whose time falls inside it.

Avatar adapters that draw a face from the audio ask `FrameClock` which frames
the audio received so far allows: frame i is shown at i * frame_ms and depicts
the audio window centred on that time, so it can be rendered as soon as the
audio up to half a frame after it has arrived. `flush()` yields the remaining
frames when the audio ends, so the frames cover all of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from adapters.media import BYTES_PER_SAMPLE, AudioChunk, RenderSettings, SpeechMark


class MarkedChunker:
    """Collects one synthesis call's PCM16 and marks and cuts them into chunks of `chunk_ms`, stamped from 0 ms."""

    def __init__(self, sample_rate_hz: int, chunk_ms: int) -> None:
        self._rate = sample_rate_hz
        self._chunk_bytes = max(1, round(sample_rate_hz * chunk_ms / 1000)) * BYTES_PER_SAMPLE
        self._pending = bytearray()
        self._marks: list[SpeechMark] = []
        self._received = 0
        self._emitted = 0

    @property
    def received_ms(self) -> float:
        """The end of the audio fed so far, on the call's clock."""
        return self._received * 1000.0 / self._rate

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def feed(self, pcm: bytes, marks: list[SpeechMark]) -> list[AudioChunk]:
        """Take a piece of audio and the marks that fall in it; return the chunks that are now complete."""
        self._marks.extend(marks)
        self._pending += pcm
        self._received += len(pcm) // BYTES_PER_SAMPLE
        chunks: list[AudioChunk] = []
        # Strictly more than one chunk: the last chunk is held back so the final marks have a home.
        while len(self._pending) > self._chunk_bytes:
            chunks.append(self._cut(self._chunk_bytes, final=False))
        return chunks

    def finish(self, marks: list[SpeechMark] | None = None) -> list[AudioChunk]:
        """The last, possibly shorter, chunk with `marks` and every mark not yet placed."""
        self._marks.extend(marks or ())
        if not self._pending:
            return []
        return [self._cut(len(self._pending), final=True)]

    def _cut(self, size: int, *, final: bool) -> AudioChunk:
        pcm = bytes(self._pending[:size])
        del self._pending[:size]
        start_ms = self._emitted * 1000.0 / self._rate
        self._emitted += size // BYTES_PER_SAMPLE
        end_ms = self._emitted * 1000.0 / self._rate
        if final:
            # Marks at the very end (the closing pause) sit on the last sample, not past it.
            marks = [m if m.time_ms <= end_ms else SpeechMark(m.kind, end_ms, m.text) for m in self._marks]
            self._marks = []
        else:
            marks = [m for m in self._marks if m.time_ms < end_ms]
            self._marks = [m for m in self._marks if m.time_ms >= end_ms]
        return AudioChunk(pcm, self._rate, timestamp_ms=start_ms, marks=tuple(marks))


@dataclass(frozen=True, slots=True)
class FrameWindow:
    """Frame `index`, shown at `timestamp_ms`, with the audio samples around that time."""

    index: int
    timestamp_ms: float
    samples: np.ndarray
    marks: tuple[SpeechMark, ...]


class FrameClock:
    """Buffers audio (gaps between chunks are silence) and releases frame windows."""

    def __init__(self, settings: RenderSettings) -> None:
        self._frame_ms = settings.frame_ms
        self._rate = 0
        self._buffer = np.zeros(0, dtype=np.int16)
        self._buffer_start_ms = 0.0
        self._end_ms = 0.0
        self._next = 0
        self._marks: list[SpeechMark] = []

    def push(self, chunk: AudioChunk) -> Iterator[FrameWindow]:
        if not self._rate:
            self._rate = chunk.sample_rate_hz
        samples = np.frombuffer(chunk.pcm, dtype="<i2")
        gap = round((chunk.timestamp_ms - self._end_ms) * self._rate / 1000)
        if gap > 0:
            samples = np.concatenate([np.zeros(gap, dtype=np.int16), samples])
        self._buffer = np.concatenate([self._buffer, samples])
        self._end_ms = max(self._end_ms, chunk.end_ms)
        self._marks.extend(chunk.marks)
        yield from self._release(self._end_ms - self._frame_ms / 2)

    def flush(self) -> Iterator[FrameWindow]:
        total = math.ceil(self._end_ms / self._frame_ms - 1e-9)
        yield from self._release(None, total)

    def _release(self, ready_until_ms: float | None, total: int | None = None) -> Iterator[FrameWindow]:
        half = self._frame_ms / 2
        while True:
            t = self._next * self._frame_ms
            if total is not None and self._next >= total:
                break
            if ready_until_ms is not None and t > ready_until_ms:
                break
            yield FrameWindow(self._next, t, self._window(t - half, t + half), self._take_marks(t + half))
            self._next += 1
        self._trim(self._next * self._frame_ms - half)

    def _window(self, start_ms: float, end_ms: float) -> np.ndarray:
        if not self._rate:
            return np.zeros(0, dtype=np.int16)
        a = max(0, int((start_ms - self._buffer_start_ms) * self._rate / 1000))
        b = max(a, int((end_ms - self._buffer_start_ms) * self._rate / 1000))
        return self._buffer[a:b]

    def _take_marks(self, until_ms: float) -> tuple[SpeechMark, ...]:
        taken = tuple(m for m in self._marks if m.time_ms < until_ms)
        if taken:
            self._marks = [m for m in self._marks if m.time_ms >= until_ms]
        return taken

    def _trim(self, keep_from_ms: float) -> None:
        if not self._rate or keep_from_ms <= self._buffer_start_ms:
            return
        drop = int((keep_from_ms - self._buffer_start_ms) * self._rate / 1000)
        self._buffer = self._buffer[drop:]
        self._buffer_start_ms += drop * 1000 / self._rate
