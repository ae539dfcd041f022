"""The cache that makes a frame a lookup: drawn layers per face, encoded JPEGs per frame state.

Two levels, both least-recently-used and bounded:

- `FaceLayers` per (look, expression step, size): the drawn body, bare head and
  eye/mouth patches. Built on first use, which takes a few ms (about 4 ms at
  256 px); patches are drawn as they are first asked for.
- JPEG bytes per (face, mouth shape, eye state, head pose): the finished frame.
  A turn cycles through a few dozen mouth shapes and head poses, so after the
  first second or so nearly every frame is a dictionary hit.

Rendering a miss runs in a worker thread (`render`) under one lock, so the event
loop only ever does the lookup (`cached`).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

from adapters.controls import EmotionLabel
from adapters.face.animation import Pose
from adapters.face.looks import Look, expression_for
from adapters.face.render import EyeState, FaceLayers


@dataclass(frozen=True, slots=True)
class FaceKey:
    """One drawable face: a look with an expression at a size."""

    look: Look
    label: EmotionLabel
    step: int
    width: int
    height: int


FrameKey = tuple[FaceKey, str, EyeState, Pose]


@dataclass(slots=True)
class AtlasStats:
    hits: int = 0
    misses: int = 0
    faces_built: int = 0
    frames_evicted: int = 0
    bytes: int = 0


class Atlas:
    """Encoded frames and the layers they are made from; safe to share between sessions."""

    def __init__(self, max_bytes: int = 64 << 20, max_faces: int = 32, jpeg_quality: int = 85) -> None:
        self._max_bytes = max_bytes
        self._max_faces = max_faces
        self._quality = jpeg_quality
        self._frames: OrderedDict[FrameKey, bytes] = OrderedDict()
        self._faces: OrderedDict[FaceKey, FaceLayers] = OrderedDict()
        # `_index` guards the two dicts and is held for microseconds, so the event loop may take
        # it; `_drawing` serializes the slow part (Pillow drawing and encoding) in worker threads.
        self._index = threading.Lock()
        self._drawing = threading.Lock()
        self.stats = AtlasStats()

    def cached(self, key: FrameKey) -> bytes | None:
        with self._index:
            data = self._frames.get(key)
            if data is not None:
                self._frames.move_to_end(key)
                self.stats.hits += 1
            return data

    def render(self, key: FrameKey) -> bytes:
        """Draw and encode the frame for `key` (or find that another thread just did), and cache it."""
        with self._drawing:
            data = self.cached(key)
            if data is not None:
                return data
            face, mouth, eyes, pose = key
            layers = self._layers(face)
            dx, dy, tilt = pose.offsets(face.width, face.height)
            image = layers.frame(mouth, eyes, dx, dy, tilt)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=self._quality)
            data = buffer.getvalue()
        with self._index:
            self.stats.misses += 1
            self._frames[key] = data
            self.stats.bytes += len(data)
            while self.stats.bytes > self._max_bytes and len(self._frames) > 1:
                _, old = self._frames.popitem(last=False)
                self.stats.bytes -= len(old)
                self.stats.frames_evicted += 1
        return data

    def _layers(self, face: FaceKey) -> FaceLayers:
        with self._index:
            layers = self._faces.get(face)
            if layers is not None:
                self._faces.move_to_end(face)
                return layers
        layers = FaceLayers(face.look, expression_for(face.label, face.step), face.width, face.height)
        with self._index:
            self.stats.faces_built += 1
            self._faces[face] = layers
            while len(self._faces) > self._max_faces:
                self._faces.popitem(last=False)
        return layers
