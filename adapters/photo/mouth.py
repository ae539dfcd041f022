"""The inside of an open mouth, painted into a warped portrait between its moved inner lip lines.

Warping alone smears lip pixels across the gap when the jaw drops, which is what made
open vowels look cut out. The gap is instead painted as a mouth seen from the front:
a dark cavity that is darkest at its centre and a little warmer at the lips (the inner
lip line is a soft shadow, not an outline), upper teeth hanging from the upper lip and
receding into shadow towards the corners, a tongue filling the bottom when the jaw is
down or the sound calls for it, and a narrow line of lower teeth when wide open.
Everything is drawn in a small patch around the mouth, with an anti-aliased edge.
"""

from __future__ import annotations

import cv2
import numpy as np

from adapters.photo.pose import FacePose

SUPERSAMPLE = 4
"""Lines and polygons are drawn at 1/4-pixel precision (OpenCV's `shift`)."""

_CAVITY = np.array([22, 20, 58], np.float32)  # BGR: a dark warm red-brown
_TEETH = np.array([206, 218, 226], np.float32)
_TONGUE = np.array([92, 86, 170], np.float32)


def _curve(points: np.ndarray, samples: int = 12) -> np.ndarray:
    """A smooth curve through `points` (Catmull-Rom), so the opening has no corners."""
    padded = np.concatenate([points[:1], points, points[-1:]])
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        for t in np.linspace(0, 1, samples, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(
                0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (3 * p1 - p0 - 3 * p2 + p3) * t3)
            )
    out.append(points[-1])
    return np.array(out, np.float32)


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * SUPERSAMPLE).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
    return mask.astype(np.float32) / 255


def paint_mouth(image: np.ndarray, points: np.ndarray, pose: FacePose, base: np.ndarray) -> None:
    """Paint the mouth's inside into `image` (BGR, in place) between the moved inner lip lines."""
    upper = _curve(points[[60, 61, 62, 63, 64]])
    lower = _curve(points[[64, 65, 66, 67, 60]])
    gap = float(np.max(np.interp(upper[:, 0], lower[::-1, 0], lower[::-1, 1]) - upper[:, 1]))
    if gap < 1.0:
        return
    polygon = np.concatenate([upper, lower])
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int) + 3
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    local = polygon - np.array([x0, y0], np.float32)
    upper_l, lower_l = upper - np.array([x0, y0]), lower - np.array([x0, y0])
    shape = (y1 - y0, x1 - x0)
    alpha = cv2.GaussianBlur(_fill(shape, local), (0, 0), 0.6)
    inside = (alpha > 0.5).astype(np.uint8)
    # Distance from the lips: the cavity darkens inwards, so the inner lip line reads as a shadow.
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    depth = np.clip(depth / max(1.5, gap * 0.35), 0, 1)[..., None]
    lip_tint = base[y0:y1, x0:x1].astype(np.float32) * 0.35
    paint = (lip_tint * (1 - depth) + _CAVITY * depth) * (0.8 + 0.2 * (1 - depth))

    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    mouth_w = float(upper[-1, 0] - upper[0, 0]) or 1.0
    centre_x = float((upper[0, 0] + upper[-1, 0]) / 2 - x0)
    # Teeth and tongue recede into shadow towards the corners.
    lateral = np.clip(1 - (np.abs(xs - centre_x) / (mouth_w / 2)) ** 2 * 0.75, 0.15, 1)[..., None]
    order_u = np.argsort(upper_l[:, 0])
    upper_y = np.interp(xs, upper_l[order_u, 0], upper_l[order_u, 1])
    order_l = np.argsort(lower_l[:, 0])
    lower_y = np.interp(xs, lower_l[order_l, 0], lower_l[order_l, 1])
    local_gap = np.maximum(0.0, lower_y - upper_y)

    if pose.open > 0.45 or pose.tongue > 0:
        # The tongue lies on the floor of the mouth: its top is a soft arch, higher in the middle.
        show = max(pose.tongue, min(1.0, (pose.open - 0.45) * 2.5))
        arch = lower_y - local_gap * (0.38 + 0.12 * (lateral[..., 0] - 0.5)) * show
        tongue = smoothstep((ys - arch) / 1.5) * show
        shade = np.clip(0.55 + 0.45 * (ys - arch) / np.maximum(1, local_gap * 0.5), 0.55, 1.0)[..., None]
        colour = _TONGUE * shade * lateral
        paint = paint * (1 - tongue[..., None]) + colour * tongue[..., None]
    if pose.open > 0.55:
        lower_teeth = smoothstep((ys - (lower_y - local_gap * 0.1)) / 1.0) * (pose.open - 0.55) * 1.5
        paint = paint * (1 - lower_teeth[..., None]) + _TEETH * 0.8 * lateral * lower_teeth[..., None]
    teeth_amount = max(pose.teeth, pose.bite)
    if teeth_amount > 0:
        tooth_h = min(0.55 * gap, 0.13 * mouth_w) * teeth_amount if not pose.bite else gap
        teeth = smoothstep((upper_y + tooth_h - ys) / 1.2)
        # Upper teeth are a touch darker just under the lip, where the lip shades them.
        under_lip = np.clip((ys - upper_y) / 2.0, 0.7, 1.0)[..., None]
        paint = paint * (1 - teeth[..., None]) + _TEETH * lateral * under_lip * teeth[..., None]
    region = image[y0:y1, x0:x1].astype(np.float32)
    a = alpha[..., None]
    image[y0:y1, x0:x1] = np.clip(region * (1 - a) + paint * a, 0, 255).astype(np.uint8)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth S between."""
    x = np.clip(x, 0.0, 1.0)
    out: np.ndarray = x * x * (3 - 2 * x)
    return out
