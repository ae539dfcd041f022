"""The limits of the numeric controls, in the one table that the server and the SDK both check.

The server validates every request against `CONTROL_RANGES` (`adapters.controls`
imports it from here); the SDK checks the same table before it sends anything, so
`say(intensity=5)` raises at the call that made the mistake instead of coming back
as a refusal later. The CLI's `--help` and its fixes quote it too. This module
imports nothing from either side, so both can import it without pulling in the other.
"""

from __future__ import annotations

import math

__all__ = ["CONTROL_RANGES", "out_of_range", "range_text"]

# Inclusive limits of each numeric control, keyed by its field name in `TurnControl`
# (and by the SDK's keyword of the same name).
CONTROL_RANGES: dict[str, tuple[float, float]] = {
    "intensity": (0.0, 1.0),
    "valence": (-1.0, 1.0),
    "arousal": (-1.0, 1.0),
    "speech_rate": (0.25, 4.0),
    "pitch_shift": (-1.0, 1.0),
    "expressivity": (0.0, 1.0),
    "motion_gain": (0.0, 2.0),
}


def range_text(name: str) -> str:
    """The range of control `name` as a person writes it: "[0.25, 4]"."""
    lo, hi = CONTROL_RANGES[name]
    return f"[{lo:g}, {hi:g}]"


def out_of_range(name: str, value: float) -> str | None:
    """`"must be in [lo, hi], got value"` when `value` is outside control `name`'s range or not finite; else None."""
    lo, hi = CONTROL_RANGES[name]
    if math.isfinite(value) and lo <= value <= hi:
        return None
    return f"must be in [{lo}, {hi}], got {value}"
