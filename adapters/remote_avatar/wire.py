"""The avatar worker contract's messages <-> TTH's domain types, for both ends of the wire.

Also the one table from gRPC status codes to provider error categories, so a
worker's status means the same to the router as an HTTP provider's status.
"""

from __future__ import annotations

import grpc

from adapters import protos
from adapters.base import Capabilities
from adapters.controls import Controls, resolve
from adapters.errors import ErrorCategory
from adapters.media import AudioChunk, RenderSettings, SpeechMark, VideoFrame
from tth_client.v1 import avatar_worker_pb2 as wpb
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import media_pb2 as mpb

_LABELS_BACK = protos.LABEL_FROM_PROTO
_MARKS_BACK = protos.MARK_FROM_PROTO
_ENCODINGS_BACK = protos.ENCODING_FROM_PROTO
# The conversions to protos are shared with the servicer (one place for each message).
audio_to_proto = protos.audio_to_proto
frame_to_proto = protos.frame_to_proto
capabilities_to_proto = protos.capabilities_to_proto

# A worker's gRPC status, as the router classifies provider errors.
STATUS_CATEGORIES: dict[grpc.StatusCode, ErrorCategory] = {
    grpc.StatusCode.UNAVAILABLE: ErrorCategory.CONNECTIVITY,
    grpc.StatusCode.CANCELLED: ErrorCategory.CONNECTIVITY,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorCategory.TIMEOUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorCategory.RATE_LIMIT,
    grpc.StatusCode.UNAUTHENTICATED: ErrorCategory.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: ErrorCategory.AUTH,
    grpc.StatusCode.INVALID_ARGUMENT: ErrorCategory.INVALID_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorCategory.INVALID_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: ErrorCategory.INVALID_REQUEST,
    grpc.StatusCode.NOT_FOUND: ErrorCategory.INVALID_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: ErrorCategory.INVALID_REQUEST,
}
STATUS_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
# The other way, for a worker reporting its adapter's ProviderError.
CATEGORY_STATUS: dict[ErrorCategory, grpc.StatusCode] = {
    ErrorCategory.CONNECTIVITY: grpc.StatusCode.UNAVAILABLE,
    ErrorCategory.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCategory.RATE_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCategory.AUTH: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCategory.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCategory.SERVER: grpc.StatusCode.INTERNAL,
}


def config_to_proto(settings: RenderSettings) -> wpb.RenderConfig:
    return wpb.RenderConfig(fps=settings.fps, width=settings.width, height=settings.height)


def config_from_proto(msg: wpb.RenderConfig) -> RenderSettings:
    """Validated render settings; ValueError names the field and its limit."""
    if not 1 <= msg.fps <= 60:
        raise ValueError(f"config.fps must be in [1, 60], got {msg.fps}")
    for name, value in (("width", msg.width), ("height", msg.height)):
        if not (64 <= value <= 1024 and value % 2 == 0):
            raise ValueError(f"config.{name} must be an even number in [64, 1024], got {value}")
    return RenderSettings(msg.fps, msg.width, msg.height)


def audio_from_proto(msg: mpb.AudioChunk) -> AudioChunk:
    if msg.sample_rate_hz <= 0:
        raise ValueError(f"audio.chunk.sample_rate_hz must be positive, got {msg.sample_rate_hz}")
    if len(msg.data) % 2:
        raise ValueError("audio.chunk.data must hold whole 16-bit samples")
    marks = tuple(SpeechMark(_MARKS_BACK[m.type], m.timestamp_ms, m.text) for m in msg.marks if m.type in _MARKS_BACK)
    return AudioChunk(msg.data, msg.sample_rate_hz, msg.timestamp_ms, marks)


def controls_to_proto(c: Controls) -> cpb.TurnControl:
    return cpb.TurnControl(
        emotion=cpb.EmotionControl(
            label=protos.LABEL_TO_PROTO[c.label], intensity=c.intensity, valence=c.valence, arousal=c.arousal
        ),
        character=cpb.CharacterControl(
            persona_id=c.persona_id,
            speech_rate=c.speech_rate,
            pitch_shift=c.pitch_shift,
            expressivity=c.expressivity,
            motion_gain=c.motion_gain,
        ),
    )


def controls_from_proto(msg: cpb.TurnControl) -> Controls:
    """Resolved controls; fields the client left unset take the built-in defaults."""
    return resolve([("remote", protos.patch_from_proto(msg, "audio.control"))])


def frame_from_proto(msg: mpb.VideoFrame) -> VideoFrame:
    if msg.encoding not in _ENCODINGS_BACK:
        raise ValueError(f"frame.encoding {msg.encoding} is not a known encoding")
    return VideoFrame(
        msg.data,
        _ENCODINGS_BACK[msg.encoding],
        msg.width,
        msg.height,
        msg.frame_index,
        msg.timestamp_ms,
        msg.timestamp_ms - msg.drift_ms,
    )


def capabilities_from_proto(msg: pb.Capabilities) -> Capabilities:
    return Capabilities(
        streaming=msg.streaming,
        controls=frozenset(msg.controls),
        emotions=frozenset(_LABELS_BACK[e] for e in msg.emotions if e in _LABELS_BACK),
        speech_marks=msg.speech_marks,
    )
