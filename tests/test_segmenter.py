"""Where the TTS may start, and inline hints lifted out of the LLM's text."""

from __future__ import annotations

import re

from adapters.controls import EmotionLabel
from tth_server.segmenter import Hint, HintParser, Segmenter


def _segments(text: str, **kwargs: object) -> list[str]:
    seg = Segmenter(**kwargs)  # type: ignore[arg-type]
    out = []
    for token in re.findall(r"\s*\S+", text):
        out += [s.text for s in seg.feed(token)]
    return out + [s.text for s in seg.flush()]


def test_first_segment_ends_at_a_long_enough_clause_later_ones_at_sentences() -> None:
    assert _segments("Well, hello there, my friend. How are you, today? Fine.") == [
        "Well, hello there,",
        "my friend.",
        "How are you, today?",
        "Fine.",
    ]


def test_a_sentence_end_is_decided_without_waiting_for_the_next_token() -> None:
    seg = Segmenter()
    assert [s.text for s in seg.feed("It works.")] == ["It works."]


def test_abbreviations_and_decimals_do_not_end_sentences() -> None:
    assert _segments("Dr. Smith paid 3.5 dollars, e.g. coins. Then he left.") == [
        "Dr. Smith paid 3.5 dollars,",
        "e.g. coins.",
        "Then he left.",
    ]


def test_quality_mode_cuts_only_at_sentences() -> None:
    assert _segments("Well, hello there, my friend. Bye.", sentences_only=True) == [
        "Well, hello there, my friend.",
        "Bye.",
    ]


def test_a_run_on_text_is_cut_before_it_grows_past_the_limit() -> None:
    pieces = _segments("word " * 100, max_chars=50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces) == ("word " * 100).strip()


def test_hint_tags_split_across_tokens_are_removed_and_reported() -> None:
    parser = HintParser()
    items = []
    for piece in ["[hap", "py] Hello", " there. [sad", " 0.8] Bye", " [x] y [angry]"]:
        items += list(parser.feed(piece))
    items += list(parser.flush())
    text = "".join(i for i in items if isinstance(i, str))
    hints = [i.patch for i in items if isinstance(i, Hint)]
    assert text == "Hello there. Bye [x] y "
    assert [(h.label, h.intensity) for h in hints] == [
        (EmotionLabel.HAPPY, None),
        (EmotionLabel.SAD, 0.8),
        (EmotionLabel.ANGRY, None),
    ]


def test_a_hint_applies_to_the_segment_it_falls_in_and_after() -> None:
    seg = Segmenter()
    out = list(seg.feed("Hello there, friend. "))
    from adapters.controls import ControlPatch

    seg.hint(ControlPatch(label=EmotionLabel.SAD))
    out += list(seg.feed("Goodbye now. "))
    out += list(seg.feed("Really."))
    assert [s.hint.label if s.hint else None for s in out] == [None, None, EmotionLabel.SAD, EmotionLabel.SAD]
