"""A deterministic speech-like tone synthesizer: PCM with correct durations, no network.

Not speech: each word becomes a voiced tone (a few harmonics under an envelope)
whose length follows the word's syllables and the speaking rate, with pauses
between words and longer ones at punctuation. Pitch, pitch movement, rate and
volume follow the controls through `adapters.prosody`, so emotions and
personas give measurably different audio, and word marks are exact. It stands in
for a TTS in tests and benchmarks; the `local` profile uses espeak-ng.

Options: `sample_rate_hz` (24000), `chunk_ms` (40), `realtime_factor` (0: as fast
as possible; 1: chunks come at the pace of real time), `voices` (persona id to
base pitch in Hz), and the knobs of `adapters.local.knobs`.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import field
from typing import Annotated, Any

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import Applied, Capabilities, ControlMapping, Downgrade, TTSAdapter
from adapters.controls import Controls, EmotionLabel
from adapters.local.knobs import KnobOptions, Knobs
from adapters.media import AudioChunk, MarkKind, SpeechMark
from adapters.options import OPTIONS, GivenOptions
from adapters.prosody import prosody_for

_WORD = re.compile(r"\S+")
_VOWELS = re.compile(r"[aeiouy]+", re.IGNORECASE)
_DEFAULT_VOICES = {"neutral": 120.0, "professional": 105.0, "casual": 140.0, "excited": 190.0}
BASE_WPM = 175.0


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class ToneOptions(KnobOptions):
    sample_rate_hz: Annotated[int, Field(gt=0)] = 24000
    chunk_ms: Annotated[float, Field(gt=0)] = 40.0
    realtime_factor: Annotated[float, Field(ge=0, description="0 means as fast as possible")] = 0.0
    voices: dict[str, float] = field(default_factory=dict)  # persona id -> base pitch in Hz


class ToneTTS(TTSAdapter):
    """Speech-shaped tones with exact word marks."""

    Options = ToneOptions
    options: ToneOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._rate = self.options.sample_rate_hz
        self._chunk_samples = max(1, int(self._rate * self.options.chunk_ms / 1000))
        self._realtime_factor = self.options.realtime_factor
        self._voices = {**_DEFAULT_VOICES, **self.options.voices}
        self._knobs = Knobs.from_options(self.options)

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True,
            controls=frozenset(
                {
                    "emotion.label",
                    "emotion.intensity",
                    "emotion.valence",
                    "emotion.arousal",
                    "character.persona_id",
                    "character.speech_rate",
                    "character.pitch_shift",
                    "character.expressivity",
                }
            ),
            emotions=frozenset(EmotionLabel),
            speech_marks=True,
        )

    def map_controls(self, controls: Controls) -> ControlMapping:
        p = prosody_for(controls)
        base_hz = self._voices.get(controls.persona_id, _DEFAULT_VOICES["neutral"])
        params = {
            "wpm": round(BASE_WPM * p.rate, 1),
            "pitch_hz": round(base_hz * 2 ** (p.pitch_semitones / 12), 1),
            "range": round(p.range, 3),
            "volume": round(min(p.volume, 1.6), 3),
        }
        detail = f"wpm={params['wpm']} pitch={params['pitch_hz']}Hz range=x{params['range']} volume=x{params['volume']}"
        applied = tuple(Applied(field, detail) for field in sorted(self.capabilities().controls))
        downgraded = (
            (Downgrade("character.motion_gain", "speech has no motion"),)
            if (controls.sources.get("motion_gain", "default") != "default")
            else ()
        )
        return ControlMapping(controls, params, applied, downgraded)

    async def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        """Chunks as the words are rendered, one word at a time: the first chunk is out after the first
        word, and no sentence holds the event loop for the whole of its rendering."""
        pace = self._chunk_samples / self._rate * self._realtime_factor
        pending = np.zeros(0, dtype="<i2")
        marks: list[SpeechMark] = []
        start, index = 0, 0  # first sample of `pending`, chunks sent
        for samples, mark in self._words(text, mapping.params):
            if mark is not None:
                marks.append(mark)
            pending = np.concatenate([pending, samples])
            while len(pending) >= self._chunk_samples or (mark is None and len(pending)):
                await self._knobs.before(index, self.name)
                if index and pace:
                    await asyncio.sleep(pace)
                n = min(self._chunk_samples, len(pending))
                t0, t1 = start * 1000 / self._rate, (start + n) * 1000 / self._rate
                yield AudioChunk(pending[:n].tobytes(), self._rate, timestamp_ms=t0, marks=tuple(_take(marks, t1)))
                pending, start, index = pending[n:], start + n, index + 1

    def _words(self, text: str, params: Mapping[str, Any]) -> Iterator[tuple[np.ndarray, SpeechMark | None]]:
        """Each word's PCM (its tone, then the pause after it) with its mark; a last (rest, None) ends it."""
        rate = self._rate
        syllable_s = 60.0 / float(params["wpm"]) / 1.5
        f0, rng, volume = float(params["pitch_hz"]), float(params["range"]), float(params["volume"])
        cursor = 0
        for i, word in enumerate(_WORD.findall(text)):
            mark = SpeechMark(MarkKind.WORD, cursor * 1000 / rate, word.strip(".,;:!?\"'()"))
            syllables = max(1, len(_VOWELS.findall(word)))
            n = int(rate * syllable_s * syllables)
            t = np.arange(n) / rate
            # Pitch glides within the word; the glide's depth follows the range.
            glide = f0 * (1 + 0.08 * rng * math.sin(i * 1.7) + 0.06 * rng * np.sin(2 * np.pi * 2.5 * t))
            phase = 2 * np.pi * np.cumsum(glide) / rate
            voiced = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
            envelope = np.sin(np.pi * np.clip(t / max(t[-1], 1e-6), 0, 1)) ** 0.6 if n else t
            pause_s = 0.35 if word[-1] in ".!?" else 0.18 if word[-1] in ",;:" else 0.05
            gap = int(rate * pause_s * BASE_WPM / float(params["wpm"]))
            tone = (np.clip(voiced * envelope * 0.25 * volume, -1, 1) * 32767).astype("<i2")
            yield np.concatenate([tone, np.zeros(gap, dtype="<i2")]), mark
            cursor += n + gap
        # The last chunk may be short; a text with no words is one chunk of silence.
        yield np.zeros(0 if cursor else self._chunk_samples, dtype="<i2"), None


def _take(marks: list[SpeechMark], until_ms: float) -> list[SpeechMark]:
    """Remove and return the marks before `until_ms`."""
    taken = [m for m in marks if m.time_ms < until_ms]
    marks[:] = [m for m in marks if m.time_ms >= until_ms]
    return taken
