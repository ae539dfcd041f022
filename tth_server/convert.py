"""Proto <-> domain conversion, in one place: requests in (validated), events out.

The conversions of the plugin types (controls, media, capabilities) are `adapters.protos`'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.base import Stage
from adapters.controls import ControlError
from adapters.media import RenderRequest
from adapters.protos import audio_to_proto as audio_to_proto
from adapters.protos import capabilities_to_proto as capabilities_to_proto
from adapters.protos import fill_audio, fill_frame
from adapters.protos import frame_to_proto as frame_to_proto
from adapters.protos import patch_from_proto as patch_from_proto
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import media_pb2 as mpb
from tth_server.errors import InvalidArgument, bounded
from tth_server.events import (
    AudioOut,
    ControlReport,
    ErrorCode,
    ErrorOut,
    Event,
    InterruptReason,
    MediaBatch,
    Notice,
    NoticeKind,
    Outgoing,
    Started,
    TextOut,
    TurnCompleted,
    TurnInterrupted,
    TurnMetrics,
    VideoOut,
)

_LATENCY = {cpb.LATENCY_MODE_LOW: "low", cpb.LATENCY_MODE_BALANCED: "balanced", cpb.LATENCY_MODE_QUALITY: "quality"}
_STAGES = {
    Stage.LLM: pb.STAGE_LLM,
    Stage.TTS: pb.STAGE_TTS,
    Stage.AVATAR: pb.STAGE_AVATAR,
    Stage.REALTIME: pb.STAGE_REALTIME,
}
_REASONS = {
    InterruptReason.CLIENT: pb.INTERRUPT_REASON_CLIENT,
    InterruptReason.BARGE_IN: pb.INTERRUPT_REASON_BARGE_IN,
    InterruptReason.SHUTDOWN: pb.INTERRUPT_REASON_SHUTDOWN,
}
_ERRORS = {
    ErrorCode.INVALID_ARGUMENT: pb.ERROR_CODE_INVALID_ARGUMENT,
    ErrorCode.FAILED_PRECONDITION: pb.ERROR_CODE_FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: pb.ERROR_CODE_RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: pb.ERROR_CODE_UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: pb.ERROR_CODE_DEADLINE_EXCEEDED,
    ErrorCode.UNAUTHENTICATED: pb.ERROR_CODE_UNAUTHENTICATED,
    ErrorCode.INTERNAL: pb.ERROR_CODE_INTERNAL,
}
_NOTICES = {
    NoticeKind.SESSION_ENDING: pb.NOTICE_KIND_SESSION_ENDING,
    NoticeKind.SERVER_SHUTTING_DOWN: pb.NOTICE_KIND_SERVER_SHUTTING_DOWN,
}
STAGE_TO_PROTO = _STAGES


# ---- requests in -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request whose bytes are not a valid message; the servicer answers INVALID_ARGUMENT."""

    reason: str

    def refused(self, what: str, suffix: str = "") -> InvalidArgument:
        """The refusal of `what` (the request, named for the client), its message ending with `suffix`."""
        return InvalidArgument(f"{what} is not a valid protobuf message ({self.reason}){suffix}")


def tolerant_handlers(add_to_server: Callable[[Any, Any], None], servicer: Any) -> dict[str, Any]:
    """The generated method handlers, but a request that fails to parse arrives as `Malformed`.

    gRPC would end such a call with INTERNAL before any handler ran; a client that
    sent garbage deserves INVALID_ARGUMENT, and a live session an in-stream error.
    """

    class _Capture:
        handlers: dict[str, Any] = {}

        def add_generic_rpc_handlers(self, _: Any) -> None:
            pass

        def add_registered_method_handlers(self, _: str, handlers: dict[str, Any]) -> None:
            self.handlers = handlers

    capture = _Capture()
    add_to_server(servicer, capture)

    def tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def safe(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # protobuf's DecodeError, or anything a broken payload triggers
                return Malformed(str(exc) or type(exc).__name__)

        return safe

    return {
        name: handler._replace(request_deserializer=tolerant(handler.request_deserializer))
        for name, handler in capture.handlers.items()
    }


def render_from_proto(msg: cpb.RenderOptions, where: str) -> RenderRequest:
    mode = None
    if msg.latency_mode != cpb.LATENCY_MODE_UNSPECIFIED:
        if msg.latency_mode not in _LATENCY:
            raise ControlError(f"{where}.latency_mode: unknown value {msg.latency_mode}; allowed 1..3 (LATENCY_MODE_*)")
        mode = _LATENCY[msg.latency_mode]
    return RenderRequest(
        fps=msg.fps if msg.HasField("fps") else None,
        width=msg.width if msg.HasField("width") else None,
        height=msg.height if msg.HasField("height") else None,
        latency_mode=mode,
    )


MAX_REQUEST_ID_CHARS = 64


def request_id_from_proto(request_id: str, where: str) -> str:
    """A request's client-chosen id, at most `MAX_REQUEST_ID_CHARS` characters; "" when none was set."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise ControlError(
            f"{where} is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS} (it is not echoed)"
        )
    return request_id


def text_from_proto(text: str, limit: int, where: str) -> str:
    cleaned = text.strip()
    if not cleaned:
        raise ControlError(f"{where} must not be empty")
    if len(cleaned) > limit:
        raise ControlError(f"{where} is {len(cleaned)} characters; the limit is {limit}")
    return cleaned


# ---- events out ------------------------------------------------------------------------------------------------


def _metrics(m: TurnMetrics) -> pb.TurnMetrics:
    return pb.TurnMetrics(
        time_to_first_text_ms=m.time_to_first_text_ms,
        time_to_first_audio_ms=m.time_to_first_audio_ms,
        time_to_first_video_ms=m.time_to_first_video_ms,
        llm_first_token_ms=m.llm_first_token_ms,
        tts_first_byte_ms=m.tts_first_byte_ms,
        avatar_first_frame_ms=m.avatar_first_frame_ms,
        stages=[
            pb.StageTiming(
                stage=_STAGES[s.stage], first_byte_ms=s.first_byte_ms, adapter=s.adapter, fallback_used=s.fallback_used
            )
            for s in m.stages
        ],
        drift_mean_ms=m.drift_mean_ms,
        drift_max_ms=m.drift_max_ms,
        frames=m.frames,
        frames_dropped=m.frames_dropped,
        audio_ms=m.audio_ms,
        total_ms=m.total_ms,
    )


def _report(r: ControlReport) -> pb.ControlReport:
    return pb.ControlReport(
        applied=[
            pb.AppliedControl(field=a.field, value=a.value, source=a.source, stage=_STAGES[a.stage], detail=a.detail)
            for a in r.applied
        ],
        downgraded=[pb.DowngradedControl(field=d.field, stage=_STAGES[d.stage], reason=d.reason) for d in r.downgraded],
    )


def _payload(event: Event) -> tuple[str, Any]:
    """The oneof arm name and message for an event (shared by Converse and Generate)."""
    if isinstance(event, AudioOut):
        return "audio", audio_to_proto(event.chunk)
    if isinstance(event, VideoOut):
        return "video", frame_to_proto(event.frame)
    if isinstance(event, TextOut):
        return "text_delta", pb.TextDelta(text=event.text)
    if isinstance(event, TurnCompleted):
        return "turn_complete", pb.TurnComplete(
            metrics=_metrics(event.metrics), control_report=_report(event.report), text=event.text
        )
    if isinstance(event, TurnInterrupted):
        return "turn_interrupted", pb.TurnInterrupted(
            spoken_text=event.spoken_text,
            played_ms=event.played_ms,
            reason=_REASONS[event.reason],
            metrics=_metrics(event.metrics),
        )
    if isinstance(event, ErrorOut):
        return "error", pb.Error(
            code=_ERRORS[event.code],
            message=bounded(event.message),
            retryable=event.retryable,
            retry_after_ms=event.retry_after_ms,
        )
    if isinstance(event, Notice):
        return "notice", pb.SessionNotice(
            kind=_NOTICES[event.kind], message=bounded(event.message), ends_in_ms=event.ends_in_ms
        )
    if isinstance(event, Started):
        return "started", started_proto(event, "")
    raise TypeError(f"no proto for {type(event).__name__}")


def started_proto(event: Started, session_id: str) -> pb.SessionStarted:
    r = event.render
    return pb.SessionStarted(
        session_id=session_id,
        audio=mpb.AudioFormat(sample_rate_hz=event.sample_rate_hz, channels=1, encoding=mpb.AUDIO_ENCODING_PCM_S16LE),
        video=mpb.VideoFormat(encoding=mpb.VIDEO_ENCODING_JPEG, width=r.width, height=r.height, fps=r.fps),
        persona_id=event.persona_id,
        persona_name=event.persona_name,
    )


def converse_response(event: Outgoing, session_id: str, seq: int, request_id: str = "") -> pb.ConverseResponse:
    """The response for `event`; `request_id` is that of the request it answers (see `Session.request_id_of`)."""
    if isinstance(event, MediaBatch):  # the hot path on a batching stream: fill in place
        response = pb.ConverseResponse(session_id=session_id, turn_id=event.turn_id, seq=seq, request_id=request_id)
        _fill_batch(response.media, event)
        return response
    if isinstance(event, VideoOut | AudioOut):  # the hot path, about 30 a second per session: fill in place
        return _media_response(event, session_id, seq, request_id)
    if isinstance(event, Started):
        return pb.ConverseResponse(session_id=session_id, seq=seq, started=started_proto(event, session_id))
    arm, message = _payload(event)
    return pb.ConverseResponse(
        session_id=session_id, turn_id=event.turn_id, seq=seq, request_id=request_id, **{arm: message}
    )


def _media_response(event: AudioOut | VideoOut, session_id: str, seq: int, request_id: str) -> pb.ConverseResponse:
    """Like `_payload`, but the media message is filled in place instead of built apart and copied in."""
    response = pb.ConverseResponse(session_id=session_id, turn_id=event.turn_id, seq=seq, request_id=request_id)
    if isinstance(event, VideoOut):
        fill_frame(response.video, event.frame)
    else:
        fill_audio(response.audio, event.chunk)
    return response


def _fill_batch(message: mpb.MediaBatch, batch: MediaBatch) -> None:
    for chunk in batch.audio:
        fill_audio(message.audio.add(), chunk)
    for frame in batch.video:
        fill_frame(message.video.add(), frame)


def generate_response(event: Outgoing, seq: int) -> pb.GenerateResponse:
    if isinstance(event, MediaBatch):
        response = pb.GenerateResponse(turn_id=event.turn_id, seq=seq)
        _fill_batch(response.media, event)
        return response
    arm, message = _payload(event)
    return pb.GenerateResponse(turn_id=event.turn_id, seq=seq, **{arm: message})
