"""Events: one small frozen dataclass per arm of the `ConverseResponse` oneof.

Why wrappers and not the raw `ConverseResponse`: with the raw message every
consumer writes `WhichOneof("event")` and string dispatch, and mypy cannot
narrow it. A class per arm lets `match event: case AudioEvent(audio=chunk):`
and `isinstance` narrow, and Generate's events (a different envelope) become
the same classes. The wrappers hold the *generated* payload message under the
arm's own name (`event.audio.data`, `event.turn_complete.metrics`), so nothing
of the contract is copied by hand and the proto's field docs apply as they are.
Building one is cheap beside decoding a media message (docs/sdk.md, "Generated
code", has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import media_pb2 as mpb

__all__ = [
    "TERMINAL_EVENTS",
    "AudioEvent",
    "ErrorEvent",
    "Event",
    "NoticeEvent",
    "StartedEvent",
    "TextDeltaEvent",
    "TurnCompleteEvent",
    "TurnInterruptedEvent",
    "VideoEvent",
    "event_from_response",
    "events_from_response",
]


@dataclass(frozen=True, slots=True)
class _Envelope:
    session_id: str
    """The session the event belongs to; "" for `Generate` events."""
    turn_id: str
    """The turn the event belongs to; "" for session-level events."""
    seq: int
    """Position of the event in its stream, counting from 1."""
    request_id: str = field(default="", kw_only=True)
    """The `request_id` of the request the event answers: for a turn's events, that of the text that started
    the turn; for a session-level error, that of the request it refuses; "" when none (and for `Generate`)."""


@dataclass(frozen=True, slots=True)
class StartedEvent(_Envelope):
    """The session's negotiated setup; always the first event of a session."""

    type: ClassVar[str] = "started"
    started: pb.SessionStarted


@dataclass(frozen=True, slots=True)
class TextDeltaEvent(_Envelope):
    """A piece of the reply's text."""

    type: ClassVar[str] = "text_delta"
    text_delta: pb.TextDelta

    @property
    def text(self) -> str:
        return self.text_delta.text


@dataclass(frozen=True, slots=True)
class AudioEvent(_Envelope):
    """A chunk of the reply's speech: PCM16 mono, positioned on the turn's media clock."""

    type: ClassVar[str] = "audio"
    audio: mpb.AudioChunk


@dataclass(frozen=True, slots=True)
class VideoEvent(_Envelope):
    """A frame of the talking face, to be shown at `video.timestamp_ms` on the turn's media clock."""

    type: ClassVar[str] = "video"
    video: mpb.VideoFrame


@dataclass(frozen=True, slots=True)
class TurnCompleteEvent(_Envelope):
    """Terminal: the turn ran to its end; carries metrics, the control report and the whole text."""

    type: ClassVar[str] = "turn_complete"
    turn_complete: pb.TurnComplete


@dataclass(frozen=True, slots=True)
class TurnInterruptedEvent(_Envelope):
    """Terminal: the turn was stopped; carries the text actually spoken and the metrics up to the cut."""

    type: ClassVar[str] = "turn_interrupted"
    turn_interrupted: pb.TurnInterrupted


@dataclass(frozen=True, slots=True)
class ErrorEvent(_Envelope):
    """A problem. Terminal for its turn when `turn_id` is set; otherwise the session stays open."""

    type: ClassVar[str] = "error"
    error: pb.Error

    @property
    def terminal(self) -> bool:
        return bool(self.turn_id)


@dataclass(frozen=True, slots=True)
class NoticeEvent(_Envelope):
    """Advance warning, not an error: the session reaches its limit, or the server is shutting down,
    in `notice.ends_in_ms`. Move to a new session (or replica) before then to lose nothing."""

    type: ClassVar[str] = "notice"
    notice: pb.SessionNotice


Event = (
    StartedEvent
    | TextDeltaEvent
    | AudioEvent
    | VideoEvent
    | TurnCompleteEvent
    | TurnInterruptedEvent
    | ErrorEvent
    | NoticeEvent
)
"""Any event of a session or a `Generate` call."""

TERMINAL_EVENTS = (TurnCompleteEvent, TurnInterruptedEvent, ErrorEvent)
"""The classes that can end a turn (an `ErrorEvent` only when its `turn_id` is set)."""

_ARMS: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        StartedEvent,
        TextDeltaEvent,
        AudioEvent,
        VideoEvent,
        TurnCompleteEvent,
        TurnInterruptedEvent,
        ErrorEvent,
        NoticeEvent,
    )
}


def event_from_response(response: pb.ConverseResponse | pb.GenerateResponse) -> Event | None:
    """The event for a `ConverseResponse` or a `GenerateResponse` (no session: `session_id` is ""); None for an
    arm this SDK version does not know, and for a `media` batch (`events_from_response` unpacks those)."""
    arm = response.WhichOneof("event")
    cls = _ARMS.get(arm) if arm else None
    if cls is None:
        return None
    return cls(
        _session_id(response),
        response.turn_id,
        response.seq,
        getattr(response, arm),  # type: ignore[arg-type]
        request_id=_request_id(response),
    )


def events_from_response(response: pb.ConverseResponse | pb.GenerateResponse) -> list[Event]:
    """The events of a `ConverseResponse` or a `GenerateResponse`: one, or for a `media` batch of n items an
    `AudioEvent` per chunk and a `VideoEvent` per frame in order on the media clock (audio first at equal times),
    numbered `seq - n + 1` to `seq` as the server numbered them; none for an arm this SDK version does not know."""
    if response.WhichOneof("event") != "media":
        event = event_from_response(response)
        return [] if event is None else [event]
    items: list[mpb.AudioChunk | mpb.VideoFrame] = [*response.media.audio, *response.media.video]
    media = sorted(items, key=_media_time)  # stable: audio first
    sid, tid, first, rid = _session_id(response), response.turn_id, response.seq - len(media) + 1, _request_id(response)
    return [
        AudioEvent(sid, tid, first + i, item, request_id=rid)
        if isinstance(item, mpb.AudioChunk)
        else VideoEvent(sid, tid, first + i, item, request_id=rid)
        for i, item in enumerate(media)
    ]


def _session_id(response: pb.ConverseResponse | pb.GenerateResponse) -> str:
    """A Converse response's session; "" for Generate, which runs without one."""
    return response.session_id if isinstance(response, pb.ConverseResponse) else ""


def _request_id(response: pb.ConverseResponse | pb.GenerateResponse) -> str:
    return response.request_id if isinstance(response, pb.ConverseResponse) else ""


def _media_time(item: mpb.AudioChunk | mpb.VideoFrame) -> float:
    return item.timestamp_ms


def is_terminal(event: Event) -> bool:
    """True for the event that ends its turn."""
    if isinstance(event, ErrorEvent):
        return event.terminal
    return isinstance(event, TurnCompleteEvent | TurnInterruptedEvent)
