"""A portrait image, checked and measured: one face found, its 68 landmarks, cached by content hash.

`Detector.measure(data)` decodes the bytes (JPEG or PNG), refuses what cannot be
animated with a `PortraitError` that names the problem (not an image, too large,
too small, no face, two faces), and returns the landmarks in the image's pixels.
The face is found with dlib's HOG frontal-face detector (built into dlib) and its
landmarks with one of two shape predictors that ship in `face-recognition-models`:

- `dlib68`: 68 points (iBUG 300-W layout), lips, jaw, eyes and brows measured.
  Trained on iBUG 300-W, whose terms exclude commercial use (see docs/photo_face.md).
- `dlib5`: 5 points (eye corners, under the nose), released by dlib's author into the
  public domain. The other 63 points are a mean face fitted to those 5, so lips and jaw
  are placed by proportion rather than measured.

Landmarks are written to a cache folder under the portrait's SHA-256, so a portrait
seen before (by this process or an earlier one) skips detection.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

MODELS = {"dlib68": "shape_predictor_68_face_landmarks.dat", "dlib5": "shape_predictor_5_face_landmarks.dat"}

MIN_FACE_PX = 64
"""A face narrower than this (detector box) has too few pixels for lips to move convincingly."""
DETECT_SIDE_PX = 640
"""Detection runs on a copy scaled down to this longest side: enough for a face of MIN_FACE_PX."""
SCORE_THRESHOLD = 0.5
"""HOG detections scoring below this are not counted as faces (badges and patterns score ~0.1)."""


class PortraitError(ValueError):
    """A portrait that cannot be animated; the message names the problem and the limit."""


DEFAULT_MAX_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """What a portrait may be: its encoded size, its pixel count, its shorter side."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = 4096 * 4096
    min_side_px: int = 128


@dataclass(frozen=True, slots=True)
class Portrait:
    """A decoded portrait (RGB) and its face's 68 landmarks in that image's pixels."""

    digest: str
    rgb: np.ndarray
    landmarks: np.ndarray
    model: str


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, limits: Limits) -> np.ndarray:
    """RGB pixels of a JPEG or PNG, or a PortraitError saying why not."""
    if len(data) > limits.max_bytes:
        raise PortraitError(f"portrait is {len(data)} bytes, over the limit of {limits.max_bytes}")
    if not data:
        raise PortraitError("portrait is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "PNG"):
                raise PortraitError(f"portrait must be a JPEG or PNG image, got {image.format}")
            width, height = image.size
            if width * height > limits.max_pixels:
                raise PortraitError(f"portrait is {width}x{height} pixels, over the limit of {limits.max_pixels}")
            if min(width, height) < limits.min_side_px:
                raise PortraitError(
                    f"portrait is {width}x{height} pixels, too small: each side must be at least {limits.min_side_px}"
                )
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PortraitError("portrait is not a JPEG or PNG image") from exc


def models_dir() -> Path:
    # Located without importing the package: its __init__ needs pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the photo avatar needs its models: pip install 'tth[photo]'")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class Detector:
    """Finds the one face in a portrait and its landmarks; thread-safe, models loaded once."""

    def __init__(self, model: str = "dlib68", cache_dir: Path | None = None, limits: Limits | None = None) -> None:
        if model not in MODELS:
            raise ValueError(f"photo avatar option landmarks must be one of {sorted(MODELS)}, got {model!r}")
        self.model = model
        self.limits = limits or Limits()
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self.detections = 0
        """How many portraits needed the detector (the rest came from the cache)."""

    def _models(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                import dlib

                predictor = dlib.shape_predictor(str(models_dir() / MODELS[self.model]))
                self._loaded = (dlib.get_frontal_face_detector(), predictor)
            return self._loaded

    def warm(self) -> None:
        """Load the models (about 0.6 s for dlib68) so the first portrait doesn't pay for it."""
        self._models()

    def measure(self, data: bytes) -> Portrait:
        """Decode, validate and find landmarks (from the cache when this portrait was seen before)."""
        digest = digest_of(data)
        rgb = decode(data, self.limits)
        cached = self._cached(digest)
        if cached is not None:
            return Portrait(digest, rgb, cached, self.model)
        landmarks = self._detect(rgb)
        self._store(digest, landmarks)
        return Portrait(digest, rgb, landmarks, self.model)

    def _detect(self, rgb: np.ndarray) -> np.ndarray:
        import dlib

        detector, predictor = self._models()
        scale = min(1.0, DETECT_SIDE_PX / max(rgb.shape[:2]))
        small = np.asarray(Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))))
        # One pass at the image's scale finds faces of 80 px and up; only when it finds none is the
        # image searched again upsampled (4x the time), for smaller faces.
        faces: list[tuple[Any, float]] = []
        for upsample in (0, 1):
            boxes, scores, _ = detector.run(small, upsample, 0.0)
            faces = [(box, score) for box, score in zip(boxes, scores, strict=True) if score >= SCORE_THRESHOLD]
            if faces:
                break
        if not faces:
            raise PortraitError("no face found in the portrait (a frontal face is needed)")
        if len(faces) > 1:
            raise PortraitError(f"{len(faces)} faces found in the portrait; it must show exactly one")
        box = faces[0][0]
        width_px = box.width() / scale
        if width_px < MIN_FACE_PX:
            raise PortraitError(f"the face is {width_px:.0f} px wide, too small: at least {MIN_FACE_PX} px is needed")
        self.detections += 1
        rect = dlib.rectangle(
            round(box.left() / scale), round(box.top() / scale), round(box.right() / scale), round(box.bottom() / scale)
        )
        shape = predictor(rgb, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        return points if self.model == "dlib68" else fit_mean_face(points)

    def _path(self, digest: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{digest}.{self.model}.json"

    def _cached(self, digest: str) -> np.ndarray | None:
        path = self._path(digest)
        if path is None or not path.exists():
            return None
        try:
            points = np.array(json.loads(path.read_text())["landmarks"], dtype=np.float32)
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is measured again and rewritten
        return points if points.shape == (68, 2) else None

    def _store(self, digest: str, landmarks: np.ndarray) -> None:
        path = self._path(digest)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole then renamed, so a reader in another process never sees half a file.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"model": self.model, "landmarks": landmarks.round(2).tolist()}))
        tmp.replace(path)


# A mean frontal face in the 68-point layout, in units where the outer eye corners are at
# (-1, 0) and (1, 0); measured from the public-domain NASA astronaut portrait, symmetrized.
_MEAN_FACE = np.array(
    [
        (-1.45, 0.09), (-1.42, 0.46), (-1.37, 0.82), (-1.31, 1.18), (-1.17, 1.5), (-0.93, 1.78), (-0.64, 2.02),
        (-0.34, 2.19), (0.0, 2.25), (0.34, 2.19), (0.64, 2.02), (0.93, 1.78), (1.17, 1.5), (1.31, 1.18),
        (1.37, 0.82), (1.42, 0.46), (1.45, 0.09), (-1.2, -0.36), (-0.98, -0.52), (-0.72, -0.56), (-0.45, -0.52),
        (-0.2, -0.43), (0.2, -0.43), (0.45, -0.52), (0.72, -0.56), (0.98, -0.52), (1.2, -0.36), (0.0, -0.06),
        (0.0, 0.22), (0.0, 0.48), (0.0, 0.74), (-0.3, 0.86), (-0.15, 0.92), (0.0, 0.95), (0.15, 0.92),
        (0.3, 0.86), (-1.0, 0.0), (-0.82, -0.1), (-0.6, -0.1), (-0.42, 0.02), (-0.6, 0.06), (-0.82, 0.06),
        (0.42, 0.02), (0.6, -0.1), (0.82, -0.1), (1.0, 0.0), (0.82, 0.06), (0.6, 0.06), (-0.6, 1.25),
        (-0.37, 1.2), (-0.14, 1.18), (0.0, 1.21), (0.14, 1.18), (0.37, 1.2), (0.6, 1.25), (0.4, 1.5),
        (0.16, 1.6), (0.0, 1.62), (-0.16, 1.6), (-0.4, 1.5), (-0.5, 1.27), (-0.15, 1.3), (0.0, 1.31),
        (0.15, 1.3), (0.5, 1.27), (0.15, 1.38), (0.0, 1.4), (-0.15, 1.38),
    ],
    dtype=np.float32,
)  # fmt: skip


def fit_mean_face(five: np.ndarray) -> np.ndarray:
    """The mean face placed on dlib's 5 points (right eye outer/inner, left eye outer/inner, under the nose).

    A similarity transform (scale, rotation, shift) from the mean face's eye corners and
    nose to the measured ones, by least squares.
    """
    source = _MEAN_FACE[[45, 42, 36, 39, 33]]
    src_mean, dst_mean = source.mean(axis=0), five.mean(axis=0)
    a, b = source - src_mean, five - dst_mean
    # Complex-number least squares: dst = z * src, z = scale * e^(i*angle).
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    z = np.vdot(za, zb) / np.vdot(za, za)
    zm = (_MEAN_FACE[:, 0] - src_mean[0]) + 1j * (_MEAN_FACE[:, 1] - src_mean[1])
    placed = z * zm
    return np.stack([placed.real + dst_mean[0], placed.imag + dst_mean[1]], axis=1).astype(np.float32)
