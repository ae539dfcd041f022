"""A/V drift: measure each frame against the audio clock, correct what a renderer gets wrong.

A frame's drift is its timestamp minus the audio position its face depicts.
Renderers that follow `adapters.framing.FrameClock` have zero drift; a remote
worker with its own clock may not. The controller places every frame on the
frame grid slot nearest the audio it depicts (so drift stays within half a
frame), drops a frame whose slot was already shown (the renderer ran behind),
and keeps the turn's mean and max |drift|.
"""

from __future__ import annotations

import math
from dataclasses import replace

from adapters.media import RenderSettings, VideoFrame


class DriftController:
    def __init__(self, settings: RenderSettings) -> None:
        self._frame_ms = settings.frame_ms
        self._next_slot = 0
        self._count = 0
        self._sum_abs = 0.0
        self.max_abs_ms = 0.0
        self.corrected = 0

    def place(self, frame: VideoFrame) -> VideoFrame | None:
        """The frame on its grid slot, or None when that slot has been shown already."""
        if abs(frame.drift_ms) > self._frame_ms / 2:
            slot = math.floor(frame.source_audio_ms / self._frame_ms + 0.5)
            if slot < self._next_slot:
                self.corrected += 1
                return None
            frame = replace(frame, timestamp_ms=slot * self._frame_ms)
            self.corrected += 1
        self._next_slot = round(frame.timestamp_ms / self._frame_ms) + 1
        drift = abs(frame.drift_ms)
        self._count += 1
        self._sum_abs += drift
        self.max_abs_ms = max(self.max_abs_ms, drift)
        return frame

    @property
    def mean_abs_ms(self) -> float:
        return self._sum_abs / self._count if self._count else 0.0
