"""The events a session sends its client, in domain terms; the servicer turns them into protos."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from adapters.base import Stage
from adapters.media import AudioChunk, RenderSettings, VideoFrame


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAUTHENTICATED = "unauthenticated"
    INTERNAL = "internal"


class NoticeKind(StrEnum):
    SESSION_ENDING = "session_ending"
    SERVER_SHUTTING_DOWN = "server_shutting_down"


class InterruptReason(StrEnum):
    CLIENT = "client"
    BARGE_IN = "barge_in"
    SHUTDOWN = "shutdown"


@dataclass(slots=True)
class StageTiming:
    stage: Stage
    first_byte_ms: float
    adapter: str
    fallback_used: bool = False


@dataclass(slots=True)
class TurnMetrics:
    """A turn's timings (ms from the user text unless noted), sizes and sync."""

    time_to_first_text_ms: float = 0.0
    time_to_first_audio_ms: float = 0.0
    time_to_first_video_ms: float = 0.0
    llm_first_token_ms: float = 0.0
    tts_first_byte_ms: float = 0.0  # from the first segment handed to the TTS
    avatar_first_frame_ms: float = 0.0  # from the first audio chunk
    stages: list[StageTiming] = field(default_factory=list)
    drift_mean_ms: float = 0.0
    drift_max_ms: float = 0.0
    frames: int = 0
    frames_dropped: int = 0
    audio_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AppliedControl:
    field: str
    value: str
    source: str
    stage: Stage
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DowngradedControl:
    field: str
    stage: Stage
    reason: str


@dataclass(slots=True)
class ControlReport:
    applied: list[AppliedControl] = field(default_factory=list)
    downgraded: list[DowngradedControl] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Started:
    sample_rate_hz: int
    render: RenderSettings
    persona_id: str
    persona_name: str
    turn_id: str = ""


@dataclass(frozen=True, slots=True)
class TextOut:
    turn_id: str
    text: str


@dataclass(frozen=True, slots=True)
class AudioOut:
    turn_id: str
    chunk: AudioChunk


@dataclass(frozen=True, slots=True)
class VideoOut:
    turn_id: str
    frame: VideoFrame


@dataclass(frozen=True, slots=True)
class MediaBatch:
    """Consecutive media events of one turn, sent as one message on a stream that asked for batches."""

    turn_id: str
    audio: tuple[AudioChunk, ...]
    video: tuple[VideoFrame, ...]


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    turn_id: str
    metrics: TurnMetrics
    report: ControlReport
    text: str


@dataclass(frozen=True, slots=True)
class TurnInterrupted:
    turn_id: str
    spoken_text: str
    played_ms: float
    reason: InterruptReason
    metrics: TurnMetrics


@dataclass(frozen=True, slots=True)
class ErrorOut:
    """An in-stream error; terminal for its turn when `turn_id` is set."""

    code: ErrorCode
    message: str
    retryable: bool = False
    retry_after_ms: int = 0
    turn_id: str = ""
    request_id: str = ""  # on a refusal (no turn_id): the refused request's own id


@dataclass(frozen=True, slots=True)
class Notice:
    """Advance warning that the session will end; not an error."""

    kind: NoticeKind
    message: str
    ends_in_ms: int
    turn_id: str = ""


Event = Started | TextOut | AudioOut | VideoOut | TurnCompleted | TurnInterrupted | ErrorOut | Notice
Outgoing = Event | MediaBatch  # what a stream sends: an event, or several media events as one
MEDIA = (AudioOut, VideoOut)
