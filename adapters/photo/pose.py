"""A frame's movements of the face: what the photo face's animation decides and its rig draws."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FacePose:
    """One frame's movements, in units of the face (see `Rig.warp_fields` for what each moves)."""

    open: float = 0.0
    width: float = 1.0
    teeth: float = 0.0
    tongue: float = 0.0
    press: float = 0.0
    bite: float = 0.0
    corners: float = 0.0
    cheeks: float = 0.0
    brow_raise: float = 0.0
    brow_inner: float = 0.0
    lids: float = 0.0
    """Upper lids lowered: 0 open, 1 closed, negative wider than the portrait."""
    lower_lids: float = 0.0
    sneer: float = 0.0
    sway_px: float = 0.0
    nod_px: float = 0.0
    roll_deg: float = 0.0
