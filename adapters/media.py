"""Media on the turn's clock: audio chunks, speech marks, video frames, render settings.

One media clock per turn starts at 0 ms with the turn's first audio sample.
TTS adapters stamp chunks relative to the start of their own synthesis call; the
pipeline moves them onto the turn's clock. Avatar adapters stamp frames on the
turn's clock and say which audio position each frame was rendered from.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

BYTES_PER_SAMPLE = 2  # PCM16 mono


class MarkKind(StrEnum):
    WORD = "word"
    PHONEME = "phoneme"
    SENTENCE = "sentence"


class VideoEncoding(StrEnum):
    JPEG = "jpeg"
    RAW_RGB = "raw_rgb"


@dataclass(frozen=True, slots=True)
class SpeechMark:
    """A word, phoneme or sentence starting at `time_ms` on the chunk's clock."""

    kind: MarkKind
    time_ms: float
    text: str


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """PCM16 mono audio; `timestamp_ms` is its first sample's position."""

    pcm: bytes
    sample_rate_hz: int
    timestamp_ms: float = 0.0
    marks: tuple[SpeechMark, ...] = ()

    @property
    def samples(self) -> int:
        return len(self.pcm) // BYTES_PER_SAMPLE

    @property
    def duration_ms(self) -> float:
        return self.samples * 1000.0 / self.sample_rate_hz

    @property
    def end_ms(self) -> float:
        return self.timestamp_ms + self.duration_ms


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One frame; `source_audio_ms` is the audio position its face depicts."""

    data: bytes
    encoding: VideoEncoding
    width: int
    height: int
    frame_index: int
    timestamp_ms: float
    source_audio_ms: float

    @property
    def drift_ms(self) -> float:
        return self.timestamp_ms - self.source_audio_ms


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """How a session's video is rendered."""

    fps: int = 25
    width: int = 256
    height: int = 256
    portrait_id: str = ""
    """The session's own portrait (a content hash the photo avatar prepared); empty for none."""

    @property
    def frame_ms(self) -> float:
        return 1000.0 / self.fps


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """Render options as a client asked for them; None means the server default."""

    fps: int | None = None
    width: int | None = None
    height: int | None = None
    latency_mode: str | None = None
