"""Split the LLM's streamed text into TTS segments, and lift inline emotion hints out of it.

`HintParser` removes tags like "[happy]" or "[sad 0.8]" from the stream (even
when a tag is split across tokens) and reports them as hints. `Segmenter`
decides where the TTS may start: at the end of a sentence, or, for the first
segment, at the end of a clause once it is long enough, so time to first audio
is one clause, not one reply. It never needs the next token to decide, except
after a digit or an abbreviation ("3." may become "3.5"; "Dr." is not an end).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from adapters.controls import ControlPatch, EmotionLabel

_TAG = re.compile(r"\[(neutral|happy|sad|angry|surprised|fearful|disgusted)(?:[ :=]([01](?:\.\d+)?))?\]\s*", re.I)
_MAX_TAG = 24
_ABBREVIATIONS = frozenset("mr mrs ms dr st prof sr jr vs etc e.g i.e a.m p.m no fig approx".split())
_SENTENCE_END = ".!?…\n"
_CLAUSE_END = ",;:—"


@dataclass(frozen=True, slots=True)
class Hint:
    """An inline control hint from the LLM."""

    patch: ControlPatch


class HintParser:
    """Feeds on text pieces; yields clean text and hints in order."""

    def __init__(self) -> None:
        self._held = ""
        self._after_tag = False  # whitespace right after a tag belongs to the tag

    def feed(self, piece: str) -> Iterator[str | Hint]:
        text = self._held + piece
        self._held = ""
        while text:
            if self._after_tag:
                text = text.lstrip()
                if not text:
                    return
                self._after_tag = False
            start = text.find("[")
            if start < 0:
                yield text
                return
            if start:
                yield text[:start]
                text = text[start:]
            match = _TAG.match(text)
            if match:
                intensity = float(match.group(2)) if match.group(2) else None
                yield Hint(ControlPatch(label=EmotionLabel(match.group(1).lower()), intensity=intensity))
                text = text[match.end() :]
                self._after_tag = True
                continue
            if "]" not in text and len(text) < _MAX_TAG:
                self._held = text  # maybe a tag still arriving
                return
            yield text[0]  # not a tag: the bracket is text
            text = text[1:]

    def flush(self) -> Iterator[str]:
        if self._held:
            yield self._held
            self._held = ""


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of text for the TTS, and the hint in force when it started, if any."""

    text: str
    hint: ControlPatch | None = None


class Segmenter:
    """Accumulates clean text; yields segments at sentence (or first clause) ends."""

    def __init__(self, first_clause_min_chars: int = 12, max_chars: int = 240, sentences_only: bool = False) -> None:
        self._first_clause_min = first_clause_min_chars
        self._max_chars = max_chars
        self._sentences_only = sentences_only
        self._buffer = ""
        self._hint: ControlPatch | None = None
        self._emitted = 0

    def hint(self, patch: ControlPatch) -> None:
        """A hint applies to the segment being accumulated and those after it."""
        self._hint = patch if self._hint is None else patch.over(self._hint)

    def feed(self, text: str) -> Iterator[Segment]:
        self._buffer += text
        while True:
            cut = self._boundary()
            if cut is None:
                return
            segment, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if segment:
                yield self._emit(segment)

    def flush(self) -> Iterator[Segment]:
        segment, self._buffer = self._buffer.strip(), ""
        if segment:
            yield self._emit(segment)

    def _emit(self, text: str) -> Segment:
        self._emitted += 1
        return Segment(text, self._hint)

    def _boundary(self) -> int | None:
        buf = self._buffer
        first = self._emitted == 0
        for i, ch in enumerate(buf):
            if ch in _SENTENCE_END and self._sentence_ends_at(buf, i):
                return i + 1
            if ch in _CLAUSE_END and first and not self._sentences_only and i + 1 >= self._first_clause_min:
                if i + 1 == len(buf) or buf[i + 1].isspace():
                    return i + 1
        if len(buf) > self._max_chars:
            space = buf.rfind(" ", 0, self._max_chars)
            return space if space > 0 else self._max_chars
        return None

    @staticmethod
    def _sentence_ends_at(buf: str, i: int) -> bool:
        nxt = buf[i + 1] if i + 1 < len(buf) else ""
        if nxt and not (nxt.isspace() or nxt in "\"')]" or nxt in _SENTENCE_END):
            return False  # "3.5", "e.g.x", "..."
        if buf[i] == ".":
            word = buf[:i].rsplit(None, 1)[-1].lower() if buf[:i].strip() else ""
            if not nxt and (word[-1:].isdigit() or word.strip("(\"'") in _ABBREVIATIONS):
                return False  # wait for the next token to decide
            if word.strip("(\"'") in _ABBREVIATIONS:
                return False
        if nxt and nxt in _SENTENCE_END:
            return False  # let "?!" or "..." finish first
        return True
