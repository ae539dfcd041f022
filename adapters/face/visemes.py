"""Mouth shapes, and which one each phoneme or loudness level calls for.

A mouth shape (a viseme) is a handful of numbers the renderer draws from: how far
the lips part, how wide and how round the mouth is, how much of the teeth and
tongue show. Phoneme marks name phonemes in espeak's ASCII mnemonics (`p`, `'aI`,
`@L`, `dZ`, `_:` ...; stress marks and length marks come attached), and some
providers send IPA instead, so both spellings map here. Without phonemes the
avatar falls back to loudness, and `ENVELOPE_SHAPES` are the mouth shapes for its
levels, from closed to wide open.

The set is deliberately small (it multiplies the renderer's atlas): the classic
Preston Blair groups plus the vowels that look different on a face.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MouthShape:
    """What a mouth looks like, in units the renderer scales to the face."""

    open: float = 0.0
    """Gap between the lips, 0 (closed) to 1 (jaw fully dropped)."""
    width: float = 1.0
    """Mouth width relative to a relaxed mouth."""
    round: float = 0.0
    """0 for a lens-shaped opening, 1 for a round one (O, U)."""
    teeth: float = 0.0
    """How much of the upper teeth shows in the opening, 0 to 1."""
    tongue: bool = False
    """The tongue shows at the bottom of the opening."""
    press: float = 0.0
    """Lips pressed together and thinned (p, b, m), 0 to 1."""
    bite: bool = False
    """Lower lip tucked under the upper teeth (f, v)."""


REST = "rest"

VISEMES: dict[str, MouthShape] = {
    REST: MouthShape(),
    "mbp": MouthShape(width=0.95, press=1.0),
    "fv": MouthShape(open=0.14, teeth=1.0, bite=True),
    "th": MouthShape(open=0.2, teeth=0.6, tongue=True),
    "dnt": MouthShape(open=0.26, teeth=0.5),
    "sz": MouthShape(open=0.12, width=1.1, teeth=1.0),
    "sh": MouthShape(open=0.22, width=0.8, round=0.6, teeth=1.0),
    "kg": MouthShape(open=0.36, width=0.95, teeth=0.3),
    "r": MouthShape(open=0.22, width=0.8, round=0.5, teeth=0.2),
    "aa": MouthShape(open=0.9, width=1.05, teeth=0.3, tongue=True),
    "er": MouthShape(open=0.45, teeth=0.2),
    "e": MouthShape(open=0.5, width=1.12, teeth=0.5),
    "i": MouthShape(open=0.3, width=1.18, teeth=0.7),
    "o": MouthShape(open=0.65, width=0.72, round=1.0),
    "u": MouthShape(open=0.3, width=0.56, round=1.0),
}

ENVELOPE_LEVELS = 6
"""Loudness is quantized into this many mouth openings; level 0 is the closed mouth."""

ENVELOPE_SHAPES: dict[str, MouthShape] = {
    f"env{level}": (VISEMES[REST] if level == 0 else MouthShape(open=0.9 * level / (ENVELOPE_LEVELS - 1), teeth=0.35))
    for level in range(ENVELOPE_LEVELS)
}

MOUTH_SHAPES: dict[str, MouthShape] = {**VISEMES, **ENVELOPE_SHAPES}
"""Every shape the renderer may be asked for, by name."""


def envelope_shape(level: int) -> str:
    """The name of the mouth shape for loudness level `level` (clamped)."""
    return f"env{max(0, min(ENVELOPE_LEVELS - 1, level))}"


# espeak-ng's ASCII mnemonics (see espeak-ng's docs/phonemes.md and phsource/ph_english).
_ESPEAK: dict[str, tuple[str, ...]] = {
    REST: ("_", "_:", "_!", "_^_", "||", "|"),
    "mbp": ("p", "b", "m", "m-"),
    "fv": ("f", "v"),
    "th": ("T", "D"),
    "dnt": ("t", "d", "n", "l", "t#", "d#", "n-", "l-", "L", "@L"),
    "sz": ("s", "z"),
    "sh": ("S", "Z", "tS", "dZ"),
    "kg": ("k", "g", "N", "x", "h", "?", "q"),
    "r": ("r", "r-", "R", "3", "3:", "@r"),
    "aa": ("a", "a#", "a2", "aa", "A", "A:", "A@", "aI", "aI@", "aU", "aU@", "V"),
    "er": ("@", "@2", "@5"),
    "e": ("E", "e", "e@", "eI", "E2", "E:"),
    "i": ("i", "i:", "I", "I#", "I2", "i@", "I@", "j"),
    "o": ("O", "O:", "O2", "O@", "0", "OI", "o", "o@", "oU"),
    "u": ("u", "u:", "U", "U@", "u@", "w", "y"),
}

# The same sounds in IPA, for providers that send IPA. These letters look like Latin ones on
# purpose (that is what IPA is), hence the confusable-character lint is off for them.
_IPA: dict[str, tuple[str, ...]] = {
    "mbp": ("ɱ",),
    "th": ("θ", "ð"),
    "dnt": ("ɾ", "ɫ", "ɬ"),
    "sh": ("ʃ", "ʒ", "tʃ", "dʒ", "ʧ", "ʤ", "ɕ", "ʑ", "ç"),
    "kg": ("ŋ", "ɡ", "ʔ", "χ", "ɣ", "ɦ"),  # noqa: RUF001
    "r": ("ɹ", "ɚ", "ɝ", "ɜ", "ʁ", "ɻ"),
    "aa": ("æ", "ɑ", "ʌ", "ɐ", "ä"),  # noqa: RUF001
    "er": ("ə", "ɘ", "ɵ"),
    "e": ("ɛ",),
    "i": ("ɪ", "ɨ"),  # noqa: RUF001
    "o": ("ɔ", "ɒ", "ø", "œ", "ɔɪ"),
    "u": ("ʊ", "ʉ", "ɯ", "ʍ", "ʏ"),  # noqa: RUF001
}

PHONEME_VISEMES: dict[str, str] = {
    phoneme: viseme for table in (_ESPEAK, _IPA) for viseme, group in table.items() for phoneme in group
}

# Stress and syllable marks that espeak prefixes and IPA interleaves; they don't change the mouth.
_STRESS = str.maketrans("", "", "',%=ˈˌ")
# Length and variant suffixes (the last is IPA's length mark), tried off one at a time.
_SUFFIXES = ":#-0123456789;\u02d0"


def viseme_for(phoneme: str) -> str | None:
    """The viseme for a phoneme mnemonic, or None if the symbol means nothing to a mouth.

    Tries the symbol as given, then without stress marks, then with length and
    variant suffixes removed, then its first character (the leading sound of a
    diphthong or affricate decides the mouth at its start).
    """
    if phoneme in PHONEME_VISEMES:
        return PHONEME_VISEMES[phoneme]
    bare = phoneme.translate(_STRESS).strip()
    while bare:
        if bare in PHONEME_VISEMES:
            return PHONEME_VISEMES[bare]
        if bare[-1] not in _SUFFIXES:
            break
        bare = bare[:-1]
    if bare and bare[0] in PHONEME_VISEMES:
        return PHONEME_VISEMES[bare[0]]
    return None
