"""Turns espeak's buffers and events into steady `AudioChunk`s carrying `SpeechMark`s.

espeak hands over 60 ms buffers with the events that fall inside them. Callers want
chunks of a fixed duration (the avatar renders against them), with each mark in the
chunk whose time range contains it, and word marks named by the words of the input.

Two details of espeak's events shape this module:
- `audio_position` is truncated to whole ms, so an event at the very start of a
  buffer can read up to 1 ms earlier than the buffer; it is moved to the buffer's start.
- Word events do not always match the input's words: "42" gives two events, "don't"
  a 3-character word, "3:30" two. Each event is therefore named by the whitespace-
  separated token of the input that contains it (edge punctuation stripped), and a
  token is marked once, in order. espeak also folds short unstressed words into a
  neighbour ("I am a" can give events for "I" and "a" only): a token skipped that
  way still gets its mark, timed evenly between the word events around it, so the
  word marks always spell out the whole input.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence

from adapters.framing import MarkedChunker
from adapters.media import AudioChunk, MarkKind, SpeechMark

from .binding import Event, EventType

_TOKEN = re.compile(r"\S+")
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")
# A sentence runs to its first terminator that is followed by whitespace, or to the end.
_SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s|$)|$)", re.DOTALL)


def _word_text(token: str) -> str:
    """A word mark's text: the token without edge punctuation ("dog," is "dog", "don't" stays)."""
    # A token that is all punctuation ("&", "—") keeps its own text; espeak may still speak it.
    return _EDGE_PUNCTUATION.sub("", token) or token


class _Spans:
    """Non-overlapping spans of a text, looked up by espeak's 1-based character positions."""

    def __init__(self, matches: Iterable[re.Match[str]]) -> None:
        spans = [(m.start(), m.end(), m.group()) for m in matches]
        self._starts = [s for s, _, _ in spans]
        self._ends = [e for _, e, _ in spans]
        self._texts = [t for _, _, t in spans]
        self._next = 0

    def take(self, position: int) -> list[str]:
        """The spans skipped since the last hit, then the span at `position`; empty when already taken."""
        offset = position - 1
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0 or offset >= self._ends[i]:
            i += 1  # between spans: the event belongs to the span that follows
        if i < self._next or i >= len(self._texts):
            return []
        taken = self._texts[self._next : i + 1]
        self._next = i + 1
        return taken

    def rest(self) -> list[str]:
        """The spans never hit."""
        taken, self._next = self._texts[self._next :], len(self._texts)
        return taken


class Rechunker:
    """Collects espeak's output for one call and cuts it into chunks of `chunk_ms`."""

    def __init__(self, text: str, sample_rate_hz: int, chunk_ms: int) -> None:
        self._chunks = MarkedChunker(sample_rate_hz, chunk_ms)
        self._words = _Spans(_TOKEN.finditer(text))
        self._sentences = _Spans(_SENTENCE.finditer(text))
        self._last_word_ms = 0.0

    def feed(self, pcm: bytes, events: Sequence[Event]) -> list[AudioChunk]:
        """Take one espeak buffer; return the chunks that are now complete."""
        buffer_start_ms = self._chunks.received_ms
        marks = [m for event in events for m in self._mark(event, max(float(event.audio_ms), buffer_start_ms))]
        return self._chunks.feed(pcm, marks)

    def finish(self) -> list[AudioChunk]:
        """The last, possibly shorter, chunk with every mark not yet placed."""
        if not self._chunks.pending:
            return []
        return self._chunks.finish(self._words_before(self._words.rest(), self._chunks.received_ms))

    def _mark(self, event: Event, time_ms: float) -> list[SpeechMark]:
        if event.kind is EventType.WORD:
            taken = self._words.take(event.text_position)
            if not taken:
                return []
            *skipped, hit = taken
            marks = self._words_before(skipped, time_ms)
            self._last_word_ms = time_ms
            return [*marks, SpeechMark(MarkKind.WORD, time_ms, _word_text(hit))]
        if event.kind is EventType.SENTENCE:
            return [SpeechMark(MarkKind.SENTENCE, time_ms, s) for s in self._sentences.take(event.text_position)[-1:]]
        if event.kind is EventType.PHONEME and event.phoneme:
            return [SpeechMark(MarkKind.PHONEME, time_ms, event.phoneme)]
        return []

    def _words_before(self, tokens: list[str], until_ms: float) -> list[SpeechMark]:
        """Marks for words espeak gave no event of, spaced evenly after the last word mark."""
        step = (until_ms - self._last_word_ms) / (len(tokens) + 1)
        return [
            SpeechMark(MarkKind.WORD, self._last_word_ms + step * (n + 1), _word_text(token))
            for n, token in enumerate(tokens)
        ]
