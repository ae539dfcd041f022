"""Bench-only providers: an LLM and a TTS whose latency is exactly what a benchmark asks for.

The repo's own fakes (`scripted`, `tone_tts`) sleep *relative* to the previous
token and synthesize real tones, so their latency drifts with every sleep's
overshoot and includes their own CPU work. These two keep a schedule instead:

    bench_llm   token i arrives at call + first_byte_ms + i / tokens_per_s (both 0: all at once)
    bench_tts   the first chunk arrives at call + first_byte_ms; chunks are slices of a
                tone rendered once per process, so synthesis costs a memory copy
    bench_avatar the stub avatar's pre-encoded JPEGs on the frame grid, without its
                per-frame numpy (loudness from a few samples), so a frame costs a lookup

so "time to first audio minus what the providers took" is what the server added.
`register()` makes them known to the registry in the current process (the bench
server process calls it before building its runtime).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic.dataclasses import dataclass

from adapters import registry
from adapters.base import AvatarAdapter, AvatarInput, Capabilities, ControlMapping, LLMAdapter, LLMRequest, TTSAdapter
from adapters.local.stub_avatar import _frames as stub_frames
from adapters.media import AudioChunk, MarkKind, RenderSettings, SpeechMark, VideoEncoding, VideoFrame
from adapters.options import OPTIONS, AdapterOptions, GivenOptions

_TOKEN = re.compile(r"\s*\S+")
_WORD = re.compile(r"\S+")
DEFAULT_REPLY = "Hello! It is good to hear from you, and I am glad you asked. Here is a short answer for the bench."


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class BenchLLMOptions(AdapterOptions):
    reply: str = DEFAULT_REPLY
    first_byte_ms: float = 0.0
    tokens_per_s: float = 0.0


class BenchLLM(LLMAdapter):
    """A fixed reply on a fixed schedule. Options: reply, first_byte_ms, tokens_per_s."""

    Options = BenchLLMOptions
    options: BenchLLMOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self.tokens = tuple(_TOKEN.findall(self.options.reply))
        self._first_s = self.options.first_byte_ms / 1000
        rate = self.options.tokens_per_s
        self._interval_s = 1.0 / rate if rate > 0 else 0.0

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        if not self._first_s and not self._interval_s:
            for token in self.tokens:
                yield token
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, token in enumerate(self.tokens):
            delay = start + self._first_s + i * self._interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield token


@lru_cache(maxsize=4)
def _tone(rate: int, seconds: float = 120.0) -> bytes:
    """A speech-shaped tone (syllable-rate loudness), rendered once per rate."""
    t = np.arange(int(rate * seconds)) / rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
    wave = (np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t)) * envelope * 0.3
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class BenchTTSOptions(AdapterOptions):
    sample_rate_hz: int = 24000
    chunk_ms: float = 40.0
    ms_per_char: float = 65.0
    first_byte_ms: float = 0.0
    realtime_factor: float = 0.0


class BenchTTS(TTSAdapter):
    """Pre-rendered audio, `ms_per_char` of it per character. Options: sample_rate_hz, chunk_ms,
    ms_per_char, first_byte_ms, realtime_factor (1: chunks come at the pace of real time)."""

    Options = BenchTTSOptions
    options: BenchTTSOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._rate = self.options.sample_rate_hz
        self._chunk_bytes = 2 * max(1, int(self._rate * self.options.chunk_ms / 1000))
        self._ms_per_char = self.options.ms_per_char
        self._first_s = self.options.first_byte_ms / 1000
        self._realtime_factor = self.options.realtime_factor
        self._pcm = _tone(self._rate)

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True, speech_marks=True)

    def map_controls(self, controls: Any) -> ControlMapping:
        return ControlMapping(controls)

    async def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = min(len(self._pcm), 2 * int(len(text) * self._ms_per_char * self._rate / 1000))
        words = _WORD.findall(text)
        step_ms = total / 2 * 1000 / self._rate / max(1, len(words))
        marks = [SpeechMark(MarkKind.WORD, i * step_ms, w) for i, w in enumerate(words)]
        chunk_ms = self._chunk_bytes / 2 * 1000 / self._rate
        next_mark = 0
        for index, offset in enumerate(range(0, total, self._chunk_bytes)):
            due = start + self._first_s + index * chunk_ms / 1000 * self._realtime_factor
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = offset / 2 * 1000 / self._rate
            first = next_mark
            while next_mark < len(marks) and marks[next_mark].time_ms < t0 + chunk_ms:
                next_mark += 1
            yield AudioChunk(
                self._pcm[offset : min(offset + self._chunk_bytes, total)],
                self._rate,
                timestamp_ms=t0,
                marks=tuple(marks[first:next_mark]),
            )


def register() -> None:
    registry.register("bench_llm", BenchLLM)
    registry.register("bench_tts", BenchTTS)
    registry.register("bench_avatar", BenchAvatar)


class BenchAvatar(AvatarAdapter):
    """The stub avatar's pre-encoded frames, picked by the chunk's loudness without numpy.

    Frames are on the turn's clock like every avatar's (frame i at i x frame_ms,
    released once the audio reaches half a frame past it, all of the audio
    covered at the end), so drift is zero; each frame costs a lookup.
    """

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True)

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        frames = stub_frames(settings.width, settings.height)
        frame_ms, index, end_ms, level = settings.frame_ms, 0, 0.0, 0
        async for item in audio:
            chunk = item.chunk
            end_ms = max(end_ms, chunk.end_ms)
            level = min(len(frames) - 1, _loudness(chunk.pcm))
            while index * frame_ms <= end_ms - frame_ms / 2:
                yield self._frame(frames[level], index, frame_ms, settings)
                index += 1
        while index * frame_ms < end_ms - 1e-9:
            yield self._frame(frames[level], index, frame_ms, settings)
            index += 1

    @staticmethod
    def _frame(data: bytes, index: int, frame_ms: float, settings: RenderSettings) -> VideoFrame:
        t = index * frame_ms
        return VideoFrame(data, VideoEncoding.JPEG, settings.width, settings.height, index, t, t)


def _loudness(pcm: bytes) -> int:
    """0..5 from the high bytes of a few samples: enough to move the stub's mouth."""
    if len(pcm) < 64:
        return 0
    peak = max(abs(int.from_bytes(pcm[i : i + 2], "little", signed=True)) for i in range(0, 64, 8))
    return min(5, peak * 6 // 32768)
