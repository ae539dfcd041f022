"""Draw docs/photo_contact_sheet.png: the photo avatar's mouth shapes (columns) by emotion (rows).

Run from the repository root (needs the dev dependencies, for scikit-image's portrait):

    .venv/bin/python scripts/photo_contact_sheet.py [--tile 112] [--out docs/photo_contact_sheet.png]

The portrait is NASA's public-domain astronaut photo shipped in scikit-image. Each
tile is the face as `photo_avatar` renders it at 256 px (cropped to the face) at
full expression amplitude, upright, eyes open, with one viseme spoken through it.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.controls import EmotionLabel
from adapters.face.looks import AMPLITUDE_BUCKETS, expression_for
from adapters.face.visemes import VISEMES
from adapters.photo.avatar import compose, expression_pose
from adapters.photo.portrait import Detector
from adapters.photo.rig import Rig

SHAPES = ("rest", "mbp", "fv", "i", "e", "aa", "o", "u")
LABEL_PX = 16


def contact_sheet(tile: int) -> Image.Image:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "PNG")
    rig = Rig(Detector(cache_dir=None).measure(buffer.getvalue()), 256, 256)
    p = rig.points
    # The face from brows to below the chin, square.
    cx, top, bottom = float(p[27][0]), float(p[19][1]) - 14, float(p[8][1]) + 22
    half = (bottom - top) / 2
    box = (round(cx - half), round(top), round(cx + half), round(bottom))
    labels = [e for e in EmotionLabel]
    sheet = Image.new("RGB", (LABEL_PX * 5 + tile * len(SHAPES), LABEL_PX + tile * len(labels)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, shape in enumerate(SHAPES):
        draw.text((LABEL_PX * 5 + col * tile + 4, 2), shape, fill="black")
    for row, label in enumerate(labels):
        draw.text((2, LABEL_PX + row * tile + tile // 2 - 6), label.value, fill="black")
        expression = expression_pose(expression_for(label, AMPLITUDE_BUCKETS))
        for col, shape in enumerate(SHAPES):
            frame = rig.frame(compose(expression, VISEMES[shape]))
            face = Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1])).crop(box).resize((tile, tile))
            sheet.paste(face, (LABEL_PX * 5 + col * tile, LABEL_PX + row * tile))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=96)
    parser.add_argument("--out", default="docs/photo_contact_sheet.png")
    args = parser.parse_args()
    # A 256-colour palette keeps the sheet small enough for the docs (photo tiles compress poorly).
    contact_sheet(args.tile).quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
