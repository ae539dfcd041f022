"""Draw docs/face_contact_sheet.png: every built-in persona with every emotion, from the real renderer.

Run from the repository root:

    .venv/bin/python scripts/contact_sheet.py [--tile 128] [--out docs/face_contact_sheet.png]

Each tile is one frame as `face_avatar` draws it at full expression amplitude
(intensity 1 at the default expressivity), upright, eyes open, with a mouth
shape that suits the emotion, so the README shows what the controls do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.controls import EmotionLabel
from adapters.face.looks import AMPLITUDE_BUCKETS, DEFAULT_LOOKS, expression_for
from adapters.face.render import EyeState, FaceLayers

# A mouth per emotion, as if caught mid-word, so the sheet also shows some visemes.
MOUTHS: dict[EmotionLabel, str] = {
    EmotionLabel.NEUTRAL: "rest",
    EmotionLabel.HAPPY: "e",
    EmotionLabel.SAD: "rest",
    EmotionLabel.ANGRY: "mbp",
    EmotionLabel.SURPRISED: "o",
    EmotionLabel.FEARFUL: "env2",
    EmotionLabel.DISGUSTED: "rest",
}
LABEL_PX = 18


def contact_sheet(tile: int) -> Image.Image:
    personas = list(DEFAULT_LOOKS)
    emotions = list(EmotionLabel)
    sheet = Image.new("RGB", (LABEL_PX * 5 + tile * len(emotions), LABEL_PX + tile * len(personas)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for col, emotion in enumerate(emotions):
        draw.text(
            (LABEL_PX * 5 + col * tile + tile / 2, LABEL_PX / 2),
            emotion.value,
            fill=(40, 40, 40),
            font=font,
            anchor="mm",
        )
    for row, persona in enumerate(personas):
        y = LABEL_PX + row * tile
        draw.text((4, y + tile / 2), persona, fill=(40, 40, 40), font=font, anchor="lm")
        for col, emotion in enumerate(emotions):
            layers = FaceLayers(DEFAULT_LOOKS[persona], expression_for(emotion, AMPLITUDE_BUCKETS), tile, tile)
            sheet.paste(layers.frame(MOUTHS[emotion], EyeState.OPEN, 0, 0, 0.0), (LABEL_PX * 5 + col * tile, y))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=128, help="tile side in px")
    parser.add_argument("--out", type=Path, default=Path("docs/face_contact_sheet.png"))
    args = parser.parse_args()
    sheet = contact_sheet(args.tile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"{args.out}: {sheet.width}x{sheet.height}, {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
