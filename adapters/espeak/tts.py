"""Real speech with no network and no key: a TTS adapter on espeak-ng.

Synthesis runs in a bounded pool of worker processes (`adapters.espeak.pool`), each
with its own libespeak-ng, because the library is global and not thread-safe. Audio
streams: each 60 ms buffer espeak makes is forwarded at once and re-cut into chunks
of `chunk_ms`, carrying word, sentence and phoneme marks (`adapters.espeak.timeline`).
How controls become espeak parameters is documented, with its table, in
`adapters.espeak.params`.

Options (profile YAML, all optional):

    voice: en-us        # the voice of the "neutral" persona and of unknown personas
    voices:             # persona_id -> espeak voice; merged over adapters.espeak.params.DEFAULT_VOICES
      pirate: en-gb-scotland+m7
    workers: 2          # worker processes, 1..8; each serves one call at a time
    chunk_ms: 40        # duration of each yielded chunk (the last may be shorter)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import field
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import Capabilities, ControlMapping, HealthStatus, TTSAdapter
from adapters.controls import Controls, EmotionLabel
from adapters.media import AudioChunk
from adapters.options import OPTIONS, AdapterOptions, GivenOptions

from . import params as espeak_params
from .pool import MAX_WORKERS, EspeakPool
from .timeline import Rechunker

# espeak-ng's fixed output rate; the workers confirm it when they start.
ESPEAK_RATE_HZ = 22050


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class EspeakOptions(AdapterOptions):
    voice: str = espeak_params.DEFAULT_VOICES["neutral"]
    voices: dict[str, str] = field(default_factory=dict)  # persona id -> espeak voice
    workers: Annotated[int, Field(strict=True, ge=1, le=MAX_WORKERS)] = 2
    chunk_ms: Annotated[int, Field(strict=True, ge=10, le=1000)] = 40


class EspeakTTS(TTSAdapter):
    """espeak-ng speech, streamed in fixed-length chunks with word and phoneme marks.

    Concurrent `synthesize` calls are safe: each runs alone in one worker process,
    and calls beyond the number of workers wait for a free one.
    """

    Options = EspeakOptions
    options: EspeakOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._voice = self.options.voice
        self._voices = {**espeak_params.DEFAULT_VOICES, "neutral": self._voice, **self.options.voices}
        self._workers = self.options.workers
        self._chunk_ms = self.options.chunk_ms
        self._pool: EspeakPool | None = None

    @property
    def sample_rate_hz(self) -> int:
        return self._pool.sample_rate_hz if self._pool is not None else ESPEAK_RATE_HZ

    @property
    def model(self) -> str:
        version = self._pool.version if self._pool is not None else ""
        return f"espeak-ng {version}".strip()

    @property
    def audio_synthesized_s(self) -> float:
        """Seconds of audio espeak has produced since start, for calls that ended (cancelled ones included)."""
        if self._pool is None or not self._pool.sample_rate_hz:
            return 0.0
        return self._pool.samples_synthesized / self._pool.sample_rate_hz

    async def start(self) -> None:
        """Start the worker processes; fails if a configured voice does not exist."""
        if self._pool is not None:
            return
        pool = EspeakPool(self._workers, voices=sorted({self._voice, *self._voices.values()}))
        await pool.start()
        self._pool = pool

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    async def health(self) -> HealthStatus:
        if self._pool is None:
            return HealthStatus(False, "not started")
        running = self._pool.running
        detail = f"espeak-ng {self._pool.version}, {running} of {self._pool.size} workers running"
        return HealthStatus(running > 0, detail)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True, controls=espeak_params.HONOURED, emotions=frozenset(EmotionLabel), speech_marks=True
        )

    def map_controls(self, controls: Controls) -> ControlMapping:
        return espeak_params.map_controls(controls, self._voices, self._voice)

    async def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        """Yield chunks of `chunk_ms` as espeak produces them; marks and times are relative to this call.

        Cancelling or closing the iterator stops synthesis in the worker within one buffer.
        """
        if self._pool is None:
            raise RuntimeError(f"{self.name}: start() the adapter before synthesize()")
        # A mapping made by another adapter carries no espeak parameters: derive ours from its controls.
        params = espeak_params.EspeakParams.from_dict(mapping.params) or espeak_params.params_for(
            mapping.controls, self._voices, self._voice
        )
        # espeak reads the text as a C string.
        text = text.replace("\0", " ")
        if not text.strip():
            return
        rechunker = Rechunker(text, self._pool.sample_rate_hz, self._chunk_ms)
        pieces = self._pool.synthesize(text, params.voice, params.settings())
        # aclosing: leaving this loop early must stop the worker now, not when the generator is collected.
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                for chunk in rechunker.feed(piece.pcm, piece.events):
                    yield chunk
        for chunk in rechunker.finish():
            yield chunk
