"""Drawing the face with Pillow: a static body, a bare head, and eye and mouth patches.

Everything is drawn once per (look, expression, size) at 2-3x and box-filtered
down, which is the anti-aliasing. The head is drawn bare (no eyes, no mouth) on a
transparent layer; eyes and mouth are drawn onto crops of that bare head and
kept as small patches, so any eyes-and-mouth combination is two array copies
into the bare head, with no drawing. Head motion moves the head layer over the
static body (neck, shoulders, background): a shift is a paste offset, and a tilt
uses the bare head rotated once per angle with the small patches rotated and
laid over it, so no frame rotates a whole image.

Geometry is in face units: fractions of the face square's side, x to the right,
y down, with the head centred at (0.5, 0.45).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from adapters.face.looks import Expression, Look, Rgb
from adapters.face.visemes import MOUTH_SHAPES, MouthShape

Point = tuple[float, float]
Box = tuple[int, int, int, int]

HEAD_CX, HEAD_CY = 0.5, 0.45
HEAD_A, HEAD_B = 0.215, 0.285
ZOOM = 1.18
"""The layout below is drawn this much larger about the head's centre, to fill the frame."""
EYE_DX, EYE_Y, EYE_W, EYE_H = 0.088, 0.45, 0.044, 0.027
MOUTH_Y, MOUTH_W, MOUTH_OPEN = 0.625, 0.072, 0.085
PIVOT = (0.5, 0.70)
"""The head tilts about the top of the neck."""
# Regions the eye and mouth drawings stay inside (x0, y0, x1, y1), disjoint from each other.
EYE_BOX = (0.335, 0.395, 0.665, 0.505)
MOUTH_BOX = (0.34, 0.555, 0.66, 0.75)

# (superellipse exponent, width scale, height scale, chin taper)
_FACE_SHAPES: dict[str, tuple[float, float, float, float]] = {
    "oval": (2.0, 1.0, 1.0, 0.18),
    "round": (2.15, 1.08, 0.93, 0.06),
    "square": (2.9, 1.02, 0.96, 0.12),
    "heart": (2.2, 1.03, 1.0, 0.38),
    "long": (2.1, 0.92, 1.07, 0.15),
}

_WHITE: Rgb = (248, 247, 242)
MOUTH_INTERIOR: Rgb = (64, 18, 30)
"""The open mouth's dark interior; tests measure how open a mouth is by counting it."""
_TONGUE: Rgb = (206, 98, 108)
_LASH: Rgb = (38, 28, 28)


class EyeState(StrEnum):
    OPEN = "open"
    HALF = "half"
    CLOSED = "closed"


def mix(a: Rgb, b: Rgb, t: float) -> Rgb:
    """`a` moved a fraction `t` of the way to `b`."""
    t = max(0.0, min(1.0, t))
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _shade(c: Rgb, t: float) -> Rgb:
    return mix(c, (0, 0, 0), t)


@dataclass(frozen=True, slots=True)
class Canvas:
    """Maps face units to pixels of an image `scale` times the output size."""

    width: int
    height: int
    scale: int

    @property
    def side(self) -> float:
        return float(min(self.width, self.height) * self.scale)

    def px(self, x: float, y: float) -> Point:
        s = self.side
        x = HEAD_CX + (x - HEAD_CX) * ZOOM
        y = HEAD_CY + (y - HEAD_CY) * ZOOM
        return ((self.width * self.scale - s) / 2 + x * s, (self.height * self.scale - s) / 2 + y * s)

    def len(self, v: float) -> float:
        return v * self.side * ZOOM

    def box(self, region: tuple[float, float, float, float]) -> Box:
        """A region as whole output pixels (x0, y0, x1, y1), clamped to the image."""
        x0, y0 = self.px(region[0], region[1])
        x1, y1 = self.px(region[2], region[3])
        k = self.scale
        return (
            max(0, math.floor(x0 / k)),
            max(0, math.floor(y0 / k)),
            min(self.width, math.ceil(x1 / k)),
            min(self.height, math.ceil(y1 / k)),
        )

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
        x, y = self.px(cx, cy)
        return (x - self.len(rx), y - self.len(ry), x + self.len(rx), y + self.len(ry))


def supersampling(width: int, height: int) -> int:
    """Small frames get more supersampling so their thin lines still look smooth."""
    return 3 if min(width, height) < 200 else 2


class FaceLayers:
    """One look with one expression at one size: body, bare head, and lazily drawn patches.

    Head arrays are premultiplied RGBA ("RGBa"), so the head resamples and composites
    without dark fringes at its edges. A tilted head is the bare head rotated once
    per tilt angle, with the eye and mouth patches rotated (cheap: they are small)
    and laid over it.
    """

    def __init__(self, look: Look, expression: Expression, width: int, height: int) -> None:
        self.look, self.expression = look, expression
        self.width, self.height = width, height
        self.canvas = Canvas(width, height, supersampling(width, height))
        self.eye_box = self.canvas.box(EYE_BOX)
        self.mouth_box = self.canvas.box(MOUTH_BOX)
        self.pivot = Canvas(width, height, 1).px(*PIVOT)
        self.body = _draw_body(look, self.canvas).reduce(self.canvas.scale).convert("RGBA")
        self._bare = _draw_bare_head(look, expression, self.canvas)
        upright = self._bare.convert("RGBa").reduce(self.canvas.scale)
        self._heads: dict[float, np.ndarray] = {0.0: np.asarray(upright)}
        self._head_box = upright.getbbox(alpha_only=True) or (0, 0, width, height)
        self._patches: dict[tuple[str, float], tuple[np.ndarray, int, int]] = {}

    def frame(self, mouth: str, eyes: EyeState, dx: int, dy: int, tilt_deg: float) -> Image.Image:
        """The RGB frame: the head with these eyes and mouth, tilted about the neck and shifted, over the body."""
        head = self._head(tilt_deg).copy()
        for patch, x0, y0 in (self._patch(f"eyes:{eyes}", tilt_deg), self._patch(f"mouth:{mouth}", tilt_deg)):
            region = head[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
            if tilt_deg:
                _over(region, patch)
            else:
                region[:] = patch
        out = self.body.copy()
        # alpha_composite wants a non-negative destination, so a shift up or left crops the source instead.
        out.alpha_composite(
            Image.fromarray(head, "RGBa").convert("RGBA"),
            dest=(max(dx, 0), max(dy, 0)),
            source=(max(-dx, 0), max(-dy, 0)),
        )
        return out.convert("RGB")

    def _head(self, tilt_deg: float) -> np.ndarray:
        if tilt_deg not in self._heads:
            # Rotate only the box the head occupies, not the whole (mostly transparent) frame.
            x0, y0, x1, y1 = self._head_box
            rotated, px0, py0 = self._rotated(self._heads[0.0][y0:y1, x0:x1], x0, y0, tilt_deg)
            head = np.zeros((self.height, self.width, 4), dtype=np.uint8)
            head[py0 : py0 + rotated.shape[0], px0 : px0 + rotated.shape[1]] = rotated
            self._heads[tilt_deg] = head
        return self._heads[tilt_deg]

    def _patch(self, name: str, tilt_deg: float) -> tuple[np.ndarray, int, int]:
        """A feature patch (premultiplied) and where its top-left corner goes in the head layer."""
        key = (name, tilt_deg)
        if key in self._patches:
            return self._patches[key]
        if not tilt_deg:
            kind, state = name.split(":")
            if kind == "eyes":
                box, shape = self.eye_box, EyeState(state)
                array = self._draw(box, lambda im, o: _draw_eyes(im, o, self.look, self.expression, shape))
            else:
                box, mouth = self.mouth_box, MOUTH_SHAPES[state]
                array = self._draw(box, lambda im, o: _draw_mouth(im, o, self.look, self.expression, mouth))
            self._patches[key] = (array, box[0], box[1])
        else:
            self._patches[key] = self._rotated(*self._patch(name, 0.0), tilt_deg)
        return self._patches[key]

    def _draw(self, box: Box, draw: Callable[[Image.Image, _Offset], None]) -> np.ndarray:
        k = self.canvas.scale
        crop = self._bare.crop((box[0] * k, box[1] * k, box[2] * k, box[3] * k))
        draw(crop, _Offset(self.canvas, box[0] * k, box[1] * k))
        return np.asarray(crop.convert("RGBa").reduce(k))

    def _rotated(self, patch: np.ndarray, x0: int, y0: int, tilt_deg: float) -> tuple[np.ndarray, int, int]:
        # Rotating about the neck moves a patch by up to (distance to pivot) x angle: pad by that.
        h, w = patch.shape[:2]
        reach = max(math.dist(self.pivot, (x, y)) for x in (x0, x0 + w) for y in (y0, y0 + h))
        pad = math.ceil(reach * math.sin(math.radians(abs(tilt_deg)))) + 2
        px0, py0 = max(0, x0 - pad), max(0, y0 - pad)
        px1, py1 = min(self.width, x0 + w + pad), min(self.height, y0 + h + pad)
        padded = np.zeros((py1 - py0, px1 - px0, 4), dtype=np.uint8)
        padded[y0 - py0 : y0 - py0 + h, x0 - px0 : x0 - px0 + w] = patch
        center = (self.pivot[0] - px0, self.pivot[1] - py0)
        rotated = Image.fromarray(padded, "RGBa").rotate(tilt_deg, Image.Resampling.BILINEAR, center=center)
        return np.asarray(rotated), px0, py0


def _over(under: np.ndarray, top: np.ndarray) -> None:
    """Premultiplied "over", in place: top + under x (1 - top's alpha)."""
    keep = 255 - top[..., 3:4].astype(np.uint16)
    under[:] = top + (under.astype(np.uint16) * keep + 127) // 255


@dataclass(frozen=True, slots=True)
class _Offset:
    """A canvas seen from a crop whose top-left corner is at (dx, dy) supersampled pixels."""

    canvas: Canvas
    dx: int
    dy: int

    def px(self, x: float, y: float) -> Point:
        px, py = self.canvas.px(x, y)
        return (px - self.dx, py - self.dy)

    def len(self, v: float) -> float:
        return self.canvas.len(v)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
        x, y = self.px(cx, cy)
        return (x - self.len(rx), y - self.len(ry), x + self.len(rx), y + self.len(ry))


# --- body -------------------------------------------------------------------------------


def _draw_body(look: Look, c: Canvas) -> Image.Image:
    image = Image.new("RGB", (c.width * c.scale, c.height * c.scale), look.background)
    d = ImageDraw.Draw(image)
    neck = _shade(look.skin, 0.12)
    x0, y0 = c.px(0.5 - 0.068, 0.5)
    x1, y1 = c.px(0.5 + 0.068, 0.9)
    d.rectangle((x0, y0, x1, y1), fill=neck)
    d.ellipse(c.ellipse(0.5, 1.03, 0.41, 0.22), fill=look.shirt)
    # A V-neck opening and a lighter collar make the shirt read as clothing, not a blob.
    d.polygon([c.px(0.44, 0.815), c.px(0.56, 0.815), c.px(0.5, 0.9)], fill=neck)
    collar = mix(look.shirt, (255, 255, 255), 0.35)
    width = max(1, round(c.len(0.012)))
    d.line([c.px(0.425, 0.81), c.px(0.5, 0.905), c.px(0.575, 0.81)], fill=collar, width=width, joint="curve")
    return image


# --- bare head -------------------------------------------------------------------------


def _head_outline(look: Look, grow: float = 0.0, points: int = 120) -> list[Point]:
    n, fw, fh, taper = _FACE_SHAPES[look.face_shape]
    a, b = HEAD_A * fw + grow, HEAD_B * fh + grow
    out = []
    for i in range(points):
        theta = 2 * math.pi * i / points
        ct, st = math.cos(theta), math.sin(theta)
        x = a * math.copysign(abs(ct) ** (2 / n), ct)
        y = b * math.copysign(abs(st) ** (2 / n), st)
        if y > 0:
            x *= 1 - taper * (y / b) ** 2
        out.append((HEAD_CX + x, HEAD_CY + y))
    return out


def _head_size(look: Look) -> tuple[float, float]:
    _, fw, fh, _ = _FACE_SHAPES[look.face_shape]
    return HEAD_A * fw, HEAD_B * fh


def _draw_bare_head(look: Look, e: Expression, c: Canvas) -> Image.Image:
    size = (c.width * c.scale, c.height * c.scale)
    image = Image.new("RGBA", size, (*look.background, 0))
    d = ImageDraw.Draw(image)
    a, _ = _head_size(look)
    _draw_back_hair(d, c, look)
    for side in (-1, 1):
        ear = _shade(look.skin, 0.08)
        d.ellipse(c.ellipse(HEAD_CX + side * (a - 0.004), 0.465, 0.03, 0.05), fill=ear)
        d.ellipse(c.ellipse(HEAD_CX + side * (a + 0.004), 0.465, 0.013, 0.028), fill=_shade(look.skin, 0.2))
    outline = [c.px(x, y) for x, y in _head_outline(look)]
    d.polygon(outline, fill=look.skin, outline=_shade(look.skin, 0.16), width=max(1, round(c.len(0.004))))
    _draw_front_hair(image, c, look, outline)
    if e.cheeks > 0:
        blush = mix(look.skin, (236, 112, 112), 0.32 * e.cheeks)
        for side in (-1, 1):
            d.ellipse(c.ellipse(0.5 + side * 0.122, 0.55 - 0.006 * e.cheeks, 0.042, 0.026), fill=blush)
    _draw_nose(d, c, look, e)
    _draw_brows(d, c, look, e)
    if look.glasses:
        _draw_glasses(d, c)
    return image


def _hairline(look: Look, u: float) -> float:
    """Height of the hairline above the head's top at relative x `u` in [-1, 1] (face units)."""
    side = 0.16 * abs(u) ** 4
    style = look.hair_style
    if style == "side_part":
        return 0.075 + 0.035 * (u + 1) / 2 + side
    if style == "long":
        return 0.05 + 0.09 * math.pow(abs(u), 0.7) + 0.3 * abs(u) ** 6
    if style == "curly":
        return 0.07 + 0.014 * abs(math.sin(u * 9)) + side
    if style == "bun":
        return 0.045 + 0.2 * abs(u) ** 3
    if style == "spiky":
        tooth = abs((u * 5 + 0.5) % 1 - 0.5) * 2
        return 0.065 + 0.03 * tooth + side
    return 0.085 + side


def _draw_back_hair(d: ImageDraw.ImageDraw, c: Canvas, look: Look) -> None:
    style = look.hair_style
    if style == "bald":
        return
    a, b = _head_size(look)
    grow = {"bun": 0.01, "curly": 0.03, "long": 0.028, "spiky": 0.02}.get(style, 0.018)
    cut = 0.47 if style != "long" else 0.6
    cap = [(x, y - 0.012) for x, y in _head_outline(look, grow) if y - 0.012 <= cut]
    cap.sort(key=lambda p: math.atan2(p[1] - HEAD_CY, p[0] - HEAD_CX))
    if style == "long":
        cap = [*cap, (HEAD_CX + a + 0.05, 0.84), (HEAD_CX - a - 0.05, 0.84)]
        cap.sort(key=lambda p: math.atan2(p[1] - 0.5, p[0] - 0.5))
    d.polygon([c.px(*p) for p in cap], fill=look.hair)
    if style == "bun":
        d.ellipse(c.ellipse(HEAD_CX, HEAD_CY - b - 0.035, 0.062, 0.055), fill=look.hair)
    elif style == "curly":
        for i in range(17):
            theta = math.pi * (1.08 + 0.84 * i / 16)
            x, y = HEAD_CX + (a + 0.028) * math.cos(theta), HEAD_CY - 0.01 + (b + 0.02) * math.sin(theta)
            d.ellipse(c.ellipse(x, y, 0.036, 0.036), fill=look.hair)
    elif style == "spiky":
        for i in range(9):
            theta = math.pi * (1.1 + 0.8 * i / 8)
            ct, st = math.cos(theta), math.sin(theta)
            base = (HEAD_CX + (a + 0.01) * ct, HEAD_CY - 0.012 + (b + 0.01) * st)
            tip = (HEAD_CX + (a + 0.065) * ct, HEAD_CY - 0.012 + (b + 0.07) * st)
            normal = (-st * 0.03, ct * 0.03)
            pts = [(base[0] - normal[0], base[1] - normal[1]), tip, (base[0] + normal[0], base[1] + normal[1])]
            d.polygon([c.px(*p) for p in pts], fill=look.hair)


def _draw_front_hair(image: Image.Image, c: Canvas, look: Look, outline: Sequence[Point]) -> None:
    if look.hair_style == "bald":
        return
    a, b = _head_size(look)
    top = HEAD_CY - b
    steps = 64
    line = [
        (HEAD_CX + a * 1.1 * (2 * i / steps - 1), top + _hairline(look, 1.1 * (2 * i / steps - 1)))
        for i in range(steps + 1)
    ]
    region = [c.px(*p) for p in [*line, (HEAD_CX + a * 1.2, top - 0.1), (HEAD_CX - a * 1.2, top - 0.1)]]
    # The fringe is the part of the head above the hairline: intersect two masks, only over
    # the box they share (a full-frame mask costs several ms at 512 px).
    x0 = max(0, math.floor(min(p[0] for p in outline)))
    x1 = min(image.width, math.ceil(max(p[0] for p in outline)) + 1)
    y0 = max(0, math.floor(min(p[1] for p in outline)))
    y1 = min(image.height, math.ceil(max(p[1] for p in region)) + 1)
    size = (x1 - x0, y1 - y0)
    above = Image.new("L", size, 0)
    ImageDraw.Draw(above).polygon([(x - x0, y - y0) for x, y in region], fill=255)
    inside = Image.new("L", size, 0)
    ImageDraw.Draw(inside).polygon([(x - x0, y - y0) for x, y in outline], fill=255)
    image.paste((*look.hair, 255), (x0, y0, x1, y1), ImageChops.darker(above, inside))


def _draw_nose(d: ImageDraw.ImageDraw, c: Canvas, look: Look, e: Expression) -> None:
    shadow = _shade(look.skin, 0.22)
    w = max(1, round(c.len(0.0045)))
    d.line([c.px(0.508, 0.47), c.px(0.514, 0.515), c.px(0.516, 0.528)], fill=_shade(look.skin, 0.1), width=w)
    d.arc(c.ellipse(0.5, 0.528, 0.02, 0.012), 20, 160, fill=shadow, width=w)
    for side in (-1, 1):
        d.ellipse(c.ellipse(0.5 + side * 0.012, 0.536, 0.0055, 0.0035), fill=_shade(look.skin, 0.3))
    if e.nose_wrinkle > 0:
        crease = mix(look.skin, shadow, min(1.0, e.nose_wrinkle))
        for i in range(3):
            y = 0.47 + 0.009 * i
            d.line([c.px(0.488, y + 0.003), c.px(0.5, y), c.px(0.512, y + 0.003)], fill=crease, width=w)


def _draw_brows(d: ImageDraw.ImageDraw, c: Canvas, look: Look, e: Expression) -> None:
    colour = _shade(look.hair, 0.25) if look.hair_style != "bald" else _shade(look.skin, 0.45)
    base = EYE_Y - 0.052 - e.brow_raise - 0.1 * e.eye_open * EYE_H
    for side in (-1, 1):
        ex = 0.5 + side * EYE_DX
        inner = (ex - side * 0.036, base - e.brow_inner)
        outer = (ex + side * 0.052, base + 0.006 + 0.3 * e.brow_inner)
        mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2 - 0.012 - 0.2 * max(0.0, e.brow_raise))
        top, bottom = [], []
        for i in range(13):
            t = i / 12
            x = (1 - t) ** 2 * inner[0] + 2 * (1 - t) * t * mid[0] + t**2 * outer[0]
            y = (1 - t) ** 2 * inner[1] + 2 * (1 - t) * t * mid[1] + t**2 * outer[1]
            half = 0.0065 * (1 - t) + 0.003 * t
            top.append((x, y - half))
            bottom.append((x, y + half))
        d.polygon([c.px(*p) for p in [*top, *reversed(bottom)]], fill=colour)


def _draw_glasses(d: ImageDraw.ImageDraw, c: Canvas) -> None:
    frame: Rgb = (42, 40, 50)
    w = max(1, round(c.len(0.006)))
    for side in (-1, 1):
        ex = 0.5 + side * EYE_DX
        x0, y0, x1, y1 = c.ellipse(ex, EYE_Y + 0.003, 0.062, 0.046)
        d.rounded_rectangle((x0, y0, x1, y1), radius=c.len(0.03), outline=frame, width=w)
        d.line([c.px(ex + side * 0.062, EYE_Y - 0.01), c.px(ex + side * 0.13, EYE_Y - 0.004)], fill=frame, width=w)
    d.arc(c.ellipse(0.5, EYE_Y - 0.002, 0.026, 0.014), 200, 340, fill=frame, width=w)


# --- eyes ------------------------------------------------------------------------------


def _draw_eyes(image: Image.Image, o: _Offset, look: Look, e: Expression, state: EyeState) -> None:
    d = ImageDraw.Draw(image)
    height = EYE_H * (1 + e.eye_open)
    w_line = max(1.0, o.len(0.0055))
    for side in (-1, 1):
        ex = 0.5 + side * EYE_DX
        if state is EyeState.CLOSED:
            lash = [o.px(ex + t * EYE_W, EYE_Y + 0.2 * height * (1 - t * t)) for t in _ts(13)]
            d.line(lash, fill=_LASH, width=round(w_line), joint="curve")
            continue
        blink = 0.6 if state is EyeState.HALF else 0.0
        upper, lower = [], []
        for t in _ts(17):
            inner_weight = (1 - side * t) / 2
            lid = e.lid_inner * inner_weight + e.lid_outer * (1 - inner_weight)
            open_up = (1 - min(1.0, lid * 0.8)) * (1 - blink)
            g = _arch(t, 0.6)
            upper.append((ex + t * EYE_W, EYE_Y - height * g * open_up))
            lower.append((ex + t * EYE_W, EYE_Y + height * g * (1 - 1.1 * e.lower_lid) * (1 - 0.3 * blink)))
        aperture = [o.px(*p) for p in [*upper, *reversed(lower)]]
        d.polygon(aperture, fill=_WHITE)
        _draw_iris(image, o, look, ex, aperture)
        d.line([o.px(*p) for p in upper], fill=_LASH, width=round(w_line), joint="curve")
        d.line([o.px(*p) for p in lower], fill=_shade(look.skin, 0.25), width=max(1, round(w_line * 0.5)))
        flick = (ex + side * (EYE_W + 0.01), upper[0 if side < 0 else -1][1] - 0.008)
        d.line([o.px(*upper[0 if side < 0 else -1]), o.px(*flick)], fill=_LASH, width=round(w_line))


def _draw_iris(image: Image.Image, o: _Offset, look: Look, ex: float, aperture: list[Point]) -> None:
    # The iris is clipped to the eye opening: draw it on a small tile, mask with the aperture.
    xs, ys = [p[0] for p in aperture], [p[1] for p in aperture]
    x0, y0 = math.floor(min(xs)), math.floor(min(ys))
    x1, y1 = math.ceil(max(xs)) + 1, math.ceil(max(ys)) + 1
    if y1 - y0 < 2:
        return
    tile = image.crop((x0, y0, x1, y1))
    td = ImageDraw.Draw(tile)
    cx, cy = o.px(ex, EYE_Y + 0.002)
    cx, cy = cx - x0, cy - y0
    r = o.len(0.0205)
    td.ellipse(
        (cx - r, cy - r, cx + r, cy + r), fill=look.eyes, outline=_shade(look.eyes, 0.4), width=max(1, round(r * 0.12))
    )
    rp = r * 0.45
    td.ellipse((cx - rp, cy - rp, cx + rp, cy + rp), fill=(20, 16, 18))
    rh, hx, hy = r * 0.25, cx - r * 0.35, cy - r * 0.38
    td.ellipse((hx - rh, hy - rh, hx + rh, hy + rh), fill=(255, 255, 255))
    mask = Image.new("L", tile.size, 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in aperture], fill=255)
    image.paste(tile, (x0, y0), mask)


def _arch(t: float, power: float) -> float:
    """(1 - t^2)^power: 1 in the middle of a feature, 0 at its ends (t = +-1)."""
    return float(max(0.0, 1.0 - t * t) ** power)


def _ts(n: int) -> list[float]:
    return [2 * i / (n - 1) - 1 for i in range(n)]


# --- mouth -----------------------------------------------------------------------------


def _draw_mouth(image: Image.Image, o: _Offset, look: Look, e: Expression, shape: MouthShape) -> None:
    d = ImageDraw.Draw(image)
    opening = max(0.0, min(1.1, shape.open + e.mouth_open))
    width = shape.width * (1 + e.mouth_width * (1 - 0.7 * shape.round))
    half_w = MOUTH_W * width
    gap = MOUTH_OPEN * opening
    p = 1 - 0.5 * shape.round
    press = max(shape.press, e.press)
    teeth = min(1.0, shape.teeth + e.teeth + 0.6 * e.sneer)
    pucker = 1 + 0.35 * shape.round
    lip_up = 0.012 * (1 - 0.55 * press) * pucker
    lip_lo = (0.015 * (1 - 0.5 * press) + 0.006 * e.pout) * pucker * (0.75 if shape.bite else 1.0)
    lip = mix(look.skin, (178, 64, 78), 0.45)

    def base(t: float) -> float:
        return MOUTH_Y - e.corners * t * t + 0.004 * e.pout * (1 - t * t)

    def sneer(t: float) -> float:
        # Disgust lifts the upper lip on one side only.
        return 0.016 * e.sneer * max(0.0, t) * _arch(t, 0.5) * 2

    ts = _ts(25)
    upper = [(0.5 + t * half_w, base(t) - gap * 0.35 * _arch(t, p) - sneer(t)) for t in ts]
    lower = [(0.5 + t * half_w, base(t) + gap * 0.65 * _arch(t, p)) for t in ts]
    outer_up = [
        (x, y - lip_up * (0.45 + 0.55 * _arch(t, 0.5)) + 0.003 * math.exp(-((t / 0.12) ** 2)))
        for (x, y), t in zip(upper, ts, strict=True)
    ]
    outer_lo = [(x, y + lip_lo * _arch(t, 0.5)) for (x, y), t in zip(lower, ts, strict=True)]
    d.polygon([o.px(*q) for q in [*outer_up, *reversed(outer_lo)]], fill=lip)
    seam_w = max(1, round(o.len(0.0042)))
    is_open = max(y_lo - y_up for (_, y_up), (_, y_lo) in zip(upper, lower, strict=True)) > 0.0025
    if is_open:
        d.polygon([o.px(*q) for q in [*upper, *reversed(lower)]], fill=MOUTH_INTERIOR)
        if teeth > 0:
            depth = (0.008 + 0.012 * teeth) * (1.8 if shape.bite else 1.0)
            bottom = [
                (x, min(yu + depth * _arch(t, 0.25), yl)) for (x, yu), (_, yl), t in zip(upper, lower, ts, strict=True)
            ]
            d.polygon([o.px(*q) for q in [*upper, *reversed(bottom)]], fill=_WHITE)
        if shape.tongue and opening > 0.15:
            tongue_top = [
                (x, max(yl - 0.02 * opening * _arch(t, 0.5), yu))
                for (x, yu), (_, yl), t in zip(upper, lower, ts, strict=True)
            ]
            d.polygon([o.px(*q) for q in [*tongue_top, *reversed(lower)]], fill=_TONGUE)
    else:
        d.line([o.px(*q) for q in upper], fill=_shade(lip, 0.5), width=seam_w, joint="curve")
    if e.corners > 0.015:
        # Smile lines just outside the corners: "(" on the left, ")" on the right.
        dimple = _shade(look.skin, 0.18)
        for side, start in ((-1, 145), (1, -35)):
            box = o.ellipse(0.5 + side * half_w, base(1.0) + 0.002, 0.012, 0.014)
            d.arc(box, start, start + 70, fill=dimple, width=seam_w)
