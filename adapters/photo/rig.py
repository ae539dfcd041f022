"""A portrait rigged for animation: displacement fields over its landmarks, one `cv2.remap` per pose.

`Rig(portrait, width, height)` crops the portrait around its face to the frame size
and builds, once, a displacement field per movement (the jaw, lip width, lip press,
lower-lip tuck, upper-lip lift, mouth corners, cheeks, brows, each upper lid, lower
lids, head sway/nod/roll). A frame's `FacePose` is a weighted sum of those fields;
the image is warped by it in one remap, and the open mouth is painted in.

Why fields and not a triangle mesh: a mesh moves each triangle rigidly, so the chin
and the cheeks stretch along triangle edges. Here the jaw is a region that moves as a
body: the lower lip, chin and jaw line go down together, most at the front and less
towards the jaw angles (the mandible rotates about the ears), and the neck just below
the chin is covered rather than stretched. Where the lips part, the warp would smear
lip pixels, so the gap between the moved inner lip lines is painted as a mouth:
a dark cavity shaded darker inwards, upper teeth under the upper lip, a tongue at the
bottom and, wide open, a line of lower teeth.
"""

from __future__ import annotations

import cv2
import numpy as np

from adapters.photo.mouth import paint_mouth, smoothstep
from adapters.photo.portrait import Portrait
from adapters.photo.pose import FacePose

FACE_WIDTH_OF_FRAME = 0.46
"""The jaw's width as a fraction of the frame width (head and shoulders framing)."""

_Field = tuple[int, int, int, int, np.ndarray]
"""A displacement field kept only where it is non-zero: y0, y1, x0, x1, (h, w, 2) float32."""


class Rig:
    """The cropped portrait (BGR) at a frame size, its landmarks there, and its movement fields."""

    def __init__(self, portrait: Portrait, width: int, height: int) -> None:
        self.width, self.height = width, height
        points = portrait.landmarks
        jaw_width = float(np.linalg.norm(points[16] - points[0]))
        scale = FACE_WIDTH_OF_FRAME * width / jaw_width
        centre = points[[0, 16, 8, 27]].mean(axis=0)
        # The face's centre goes a little above the frame's, leaving room for the neck and shoulders.
        shift = np.array([width / 2, height * 0.46]) - scale * centre
        affine = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]], dtype=np.float64)
        bgr = np.ascontiguousarray(portrait.rgb[:, :, ::-1])
        self.base = cv2.warpAffine(bgr, affine, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        self.points = (points * scale + shift).astype(np.float32)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self._grid = np.stack([xs, ys], axis=-1)
        self.fields = self._build_fields(xs, ys)

    # Landmark geometry -------------------------------------------------------------------

    @property
    def mouth_width(self) -> float:
        return float(np.linalg.norm(self.points[54] - self.points[48]))

    @property
    def jaw_width(self) -> float:
        return float(np.linalg.norm(self.points[16] - self.points[0]))

    def _lip_line(self, xs: np.ndarray) -> np.ndarray:
        """y of the line where the lips meet, at every x (flat beyond the mouth corners)."""
        line = self.points[[48, 60, 61, 62, 63, 64, 54]]
        order = np.argsort(line[:, 0])
        out: np.ndarray = np.interp(xs, line[order, 0], line[order, 1]).astype(np.float32)
        return out

    def _lower_lip_line(self, xs: np.ndarray) -> np.ndarray:
        """y of the lower lip's inner edge, at every x."""
        line = self.points[[48, 60, 67, 66, 65, 64, 54]]
        order = np.argsort(line[:, 0])
        out: np.ndarray = np.interp(xs, line[order, 0], line[order, 1]).astype(np.float32)
        return out

    @property
    def rest_gap(self) -> float:
        """How far apart the portrait's own lips are, at the middle (0 for a closed mouth)."""
        return max(0.0, float(self.points[66][1] - self.points[62][1]))

    def _eye_height(self, side: int) -> float:
        top, bottom = ((37, 38), (41, 40)) if side == 0 else ((43, 44), (47, 46))
        return float(np.mean([self.points[b][1] - self.points[t][1] for t, b in zip(top, bottom, strict=True)]))

    # Fields ------------------------------------------------------------------------------

    def _build_fields(self, xs: np.ndarray, ys: np.ndarray) -> dict[str, _Field]:
        p = self.points
        mw, fw = self.mouth_width, self.jaw_width
        mouth_c = (p[48] + p[54]) / 2
        lip_y = self._lip_line(xs)
        zero = np.zeros_like(xs)

        def gauss(centre: np.ndarray, sx: float, sy: float) -> np.ndarray:
            cx, cy = float(centre[0]), float(centre[1])
            out: np.ndarray = np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2)).astype(np.float32)
            return out

        fields: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        # The jaw: everything below the lip line inside the (slightly widened) jaw outline drops,
        # fully at the chin's column and ~45% at the jaw angles; the lower lip rides with it.
        jaw = p[2:15].copy()
        face_c = p[[0, 16, 8]].mean(axis=0)
        jaw = face_c + (jaw - face_c) * 1.08
        top = np.array([[p[14][0], p[29][1]], [p[2][0], p[29][1]]], dtype=np.float32)
        mask = np.zeros((self.height, self.width), np.float32)
        cv2.fillPoly(mask, [np.round(np.concatenate([jaw, top])).astype(np.int32)], 1.0)
        sigma = 0.05 * fw
        mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), sigma), np.float32)
        # The jaw region starts at the lower inner lip line, so a photo's own teeth stay with the
        # upper jaw; at the lips the drop follows an arch (corners stay, the middle drops: an oval
        # opening), and by the chin it is the mandible's profile.
        across = np.clip(1 - 0.55 * ((xs - p[8][0]) / (fw / 2)) ** 2, 0.3, 1.0)
        arch = np.sqrt(np.clip(1 - (np.abs(xs - mouth_c[0]) / (0.52 * mw)) ** 2.2, 0, 1))
        for name, edge in (("open", self._lower_lip_line(xs)), ("close", lip_y)):
            below = smoothstep((ys - edge + 0.5) / max(1.5, 0.04 * mw))
            towards_chin = smoothstep((ys - edge) / np.maximum(2.0, 0.5 * (p[8][1] - edge)))
            jaw_dy = mask * below * (arch * (1 - towards_chin) + across * towards_chin)
            # The mandible narrows slightly as it opens, so the chin doesn't look pulled sideways.
            fields[name] = (-0.06 * (xs - p[8][0]) / (fw / 2) * jaw_dy, jaw_dy)

        upper = smoothstep(1 - (lip_y - ys) / (0.45 * mw)) * smoothstep((lip_y - ys) / 2.0 + 0.5)
        upper *= np.exp(-0.5 * ((xs - mouth_c[0]) / (0.4 * mw)) ** 2)
        fields["lift"] = (zero, -upper)

        lips = gauss(mouth_c, 0.55 * mw, 0.42 * mw)
        fields["width"] = ((xs - mouth_c[0]) / (mw / 2) * lips / 0.66, zero)
        fields["press"] = (zero, np.clip((lip_y - ys) / (0.25 * mw), -1, 1) * lips)
        lower_lip = gauss(np.array([p[57][0], (p[57][1] + p[66][1]) / 2]), 0.35 * mw, 0.12 * mw)
        fields["bite"] = (zero, -lower_lip)

        corners = gauss(p[48], 0.22 * mw, 0.22 * mw) + gauss(p[54], 0.22 * mw, 0.22 * mw)
        fields["corners"] = ((xs - mouth_c[0]) / mw * corners * 0.5, -corners)
        cheeks = gauss(((p[31] + p[3]) / 2), 0.16 * fw, 0.12 * fw) + gauss(((p[35] + p[13]) / 2), 0.16 * fw, 0.12 * fw)
        fields["cheeks"] = (zero, -cheeks)
        fields["sneer"] = (zero, -gauss(((p[50] + p[31]) / 2), 0.14 * mw, 0.18 * mw))

        brow_y = float(p[17:27, 1].mean())
        eye_y = float(p[36:48, 1].mean())
        brow_band = np.exp(-0.5 * (((ys - brow_y) / (0.16 * fw)) ** 2)) * ((ys < eye_y) | (ys < brow_y))
        brow_band *= np.exp(-0.5 * (((xs - face_c[0]) / (0.42 * fw)) ** 4))
        fields["brow_raise"] = (zero, -brow_band.astype(np.float32))
        inner = gauss(p[21], 0.09 * fw, 0.07 * fw) + gauss(p[22], 0.09 * fw, 0.07 * fw)
        fields["brow_inner"] = (zero, -inner)

        for side, (a, b) in enumerate(((36, 39), (42, 45))):
            fields[f"lid{side}"] = (zero, self._lid_field(xs, ys, a, b, side))
        lower = gauss(p[[40, 41]].mean(axis=0), 0.1 * fw, 0.03 * fw) + gauss(
            p[[46, 47]].mean(axis=0), 0.1 * fw, 0.03 * fw
        )
        fields["lower_lids"] = (zero, -lower)

        # Head motion: the head moves, the shoulders stay; the roll pivots at the neck.
        head = np.zeros((self.height, self.width), np.float32)
        axes = (round(0.78 * fw), round(1.2 * fw))
        cv2.ellipse(head, (round(face_c[0]), round(face_c[1] - 0.2 * fw)), axes, 0, 0, 360, 1.0, -1)
        head = np.asarray(cv2.GaussianBlur(head, (0, 0), 0.12 * fw), np.float32)
        pivot = (float(p[8][0]), float(p[8][1] + 0.35 * fw))
        fields["sway"] = (head, zero)
        fields["nod"] = (zero, head)
        rad = np.pi / 180
        fields["roll"] = (-(ys - pivot[1]) * head * rad, (xs - pivot[0]) * head * rad)
        return {name: self._sparse(dx, dy) for name, (dx, dy) in fields.items()}

    def _lid_field(self, xs: np.ndarray, ys: np.ndarray, outer: int, inner: int, side: int) -> np.ndarray:
        """The upper lid coming down over the eye, by one eye height at weight 1.

        Every pixel from above the brow's underside down to the lower lid moves by an amount
        ramping from 0 up to the eye height at the upper lid; the eye itself is then covered
        by the lid's skin. It stops sharply at the lower lid, where a closed eye has its crease.
        """
        p = self.points
        h = max(1.0, self._eye_height(side))
        eye = p[[outer, outer + 1, outer + 2, inner, inner + 1, inner + 2]]
        top_y = float(eye[[1, 2]][:, 1].mean())
        bottom_y = float(p[[outer + 4, outer + 5]][:, 1].mean()) + 0.2 * h
        brow_y = float(p[17:22, 1].mean() if side == 0 else p[22:27, 1].mean())
        x0, x1 = float(p[outer][0]), float(p[inner][0])
        cx, half = (x0 + x1) / 2, abs(x1 - x0) / 2
        across = np.exp(-0.5 * ((xs - cx) / (half * 0.85)) ** 4)
        rise = smoothstep((ys - brow_y) / max(1.0, top_y - brow_y))
        stop = smoothstep((bottom_y - ys) / max(0.8, 0.25 * h))
        out: np.ndarray = (h * 1.15 * across * rise * stop).astype(np.float32)
        return out

    def _sparse(self, dx: np.ndarray, dy: np.ndarray) -> _Field:
        field = np.stack([dx, dy], axis=-1).astype(np.float32)
        rows, cols = np.nonzero(np.abs(field).max(axis=-1) > 1e-3)
        if not len(rows):
            return (0, 0, 0, 0, field[:0, :0])
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        return (int(y0), int(y1), int(x0), int(x1), np.ascontiguousarray(field[y0:y1, x0:x1]))

    # Frames ------------------------------------------------------------------------------

    def weights(self, pose: FacePose) -> dict[str, float]:
        """Pixels of movement per field for a pose (fields are built at one pixel per unit)."""
        mw, fw = self.mouth_width, self.jaw_width
        # Shapes ask for a gap between the lips; a portrait whose mouth is open already needs less.
        drop = pose.open * 0.34 * mw - self.rest_gap
        return {
            "open": max(0.0, drop),
            # Closing lips the portrait shows apart: the lower lip rises to the upper one.
            "close": min(0.0, drop),
            "lift": 0.12 * drop + pose.sneer * 0.02 * fw,
            # Rounding pulls the corners in less than a viseme's width says: further in, they fold into a V.
            "width": (pose.width - 1.0) * mw / 2 * (0.55 if pose.width < 1 else 1.0),
            "press": pose.press * 0.06 * mw,
            "bite": pose.bite * 0.1 * mw + pose.bite * drop * 0.6,
            "corners": pose.corners * fw,
            "cheeks": pose.cheeks * 0.02 * fw,
            "sneer": pose.sneer * 0.03 * fw,
            "brow_raise": pose.brow_raise * 1.6 * fw,
            "brow_inner": pose.brow_inner * 1.6 * fw,
            # Lids open wider than the photo only a little: lifting them further tears the lid crease.
            "lid0": max(-0.15, pose.lids),
            "lid1": max(-0.15, pose.lids),
            "lower_lids": pose.lower_lids * 0.6 * max(1.0, self._eye_height(0)),
            "sway": pose.sway_px,
            "nod": pose.nod_px,
            "roll": pose.roll_deg,
        }

    def displacement(self, pose: FacePose) -> np.ndarray:
        total = np.zeros((self.height, self.width, 2), np.float32)
        for name, weight in self.weights(pose).items():
            if abs(weight) < 1e-4:
                continue
            y0, y1, x0, x1, patch = self.fields[name]
            total[y0:y1, x0:x1] += weight * patch
        return total

    def frame(self, pose: FacePose) -> np.ndarray:
        """The portrait in `pose` (BGR, uint8)."""
        forward = self.displacement(pose)
        # Backward map: the pixel shown at q comes from q - F(source); two fixed-point steps
        # invert the forward field closely enough for displacements of a few tens of pixels.
        mapping = self._grid - forward
        for _ in range(2):
            moved = self._remap(forward, mapping)
            mapping = self._grid - moved
        image = self._remap(self.base, mapping)
        moved_points = self.points + self._sample(forward, self.points)
        paint_mouth(image, moved_points, pose, self.base)
        return image

    @staticmethod
    def _remap(image: np.ndarray, mapping: np.ndarray) -> np.ndarray:
        xs, ys = np.ascontiguousarray(mapping[..., 0]), np.ascontiguousarray(mapping[..., 1])
        return np.asarray(cv2.remap(image, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))

    def _sample(self, field: np.ndarray, points: np.ndarray) -> np.ndarray:
        xs = np.clip(np.round(points[:, 0]).astype(int), 0, self.width - 1)
        ys = np.clip(np.round(points[:, 1]).astype(int), 0, self.height - 1)
        return np.asarray(field[ys, xs])
