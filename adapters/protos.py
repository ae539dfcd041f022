"""The plugin types <-> the public protos (`tth_client.v1`): controls, media and capabilities.

One place for each message, shared by the server's conversions (`tth_server.convert`) and
the remote avatar's wire to its worker.
"""

from __future__ import annotations

from adapters.base import Capabilities
from adapters.controls import ControlError, ControlPatch, EmotionLabel
from adapters.media import AudioChunk, MarkKind, VideoEncoding, VideoFrame
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import media_pb2 as mpb

_LABELS = {
    cpb.EMOTION_LABEL_NEUTRAL: EmotionLabel.NEUTRAL,
    cpb.EMOTION_LABEL_HAPPY: EmotionLabel.HAPPY,
    cpb.EMOTION_LABEL_SAD: EmotionLabel.SAD,
    cpb.EMOTION_LABEL_ANGRY: EmotionLabel.ANGRY,
    cpb.EMOTION_LABEL_SURPRISED: EmotionLabel.SURPRISED,
    cpb.EMOTION_LABEL_FEARFUL: EmotionLabel.FEARFUL,
    cpb.EMOTION_LABEL_DISGUSTED: EmotionLabel.DISGUSTED,
}
LABEL_TO_PROTO = {v: k for k, v in _LABELS.items()}
LABEL_FROM_PROTO = _LABELS
_MARKS = {
    MarkKind.WORD: mpb.SPEECH_MARK_TYPE_WORD,
    MarkKind.PHONEME: mpb.SPEECH_MARK_TYPE_PHONEME,
    MarkKind.SENTENCE: mpb.SPEECH_MARK_TYPE_SENTENCE,
}
_ENCODINGS = {VideoEncoding.JPEG: mpb.VIDEO_ENCODING_JPEG, VideoEncoding.RAW_RGB: mpb.VIDEO_ENCODING_RAW_RGB}
MARK_FROM_PROTO = {v: k for k, v in _MARKS.items()}
ENCODING_FROM_PROTO = {v: k for k, v in _ENCODINGS.items()}


def patch_from_proto(msg: cpb.TurnControl, where: str) -> ControlPatch:
    """A validated control layer; ControlError names the field (under `where`) and its limit."""
    e, c = msg.emotion, msg.character
    label = None
    if e.label != cpb.EMOTION_LABEL_UNSPECIFIED:
        if e.label not in _LABELS:
            raise ControlError(f"{where}.emotion.label: unknown value {e.label}; allowed 1..7 (EMOTION_LABEL_*)")
        label = _LABELS[e.label]
    persona_id = c.persona_id if c.HasField("persona_id") else None
    if persona_id is not None and not persona_id:
        raise ControlError(f"{where}.character.persona_id must not be empty when set")
    return ControlPatch(
        label=label,
        intensity=e.intensity if e.HasField("intensity") else None,
        valence=e.valence if e.HasField("valence") else None,
        arousal=e.arousal if e.HasField("arousal") else None,
        persona_id=persona_id,
        speech_rate=c.speech_rate if c.HasField("speech_rate") else None,
        pitch_shift=c.pitch_shift if c.HasField("pitch_shift") else None,
        expressivity=c.expressivity if c.HasField("expressivity") else None,
        motion_gain=c.motion_gain if c.HasField("motion_gain") else None,
    ).validated(f"{where}.")


def audio_to_proto(c: AudioChunk) -> mpb.AudioChunk:
    return fill_audio(mpb.AudioChunk(), c)


def frame_to_proto(f: VideoFrame) -> mpb.VideoFrame:
    return fill_frame(mpb.VideoFrame(), f)


def fill_audio(a: mpb.AudioChunk, c: AudioChunk) -> mpb.AudioChunk:
    a.data = c.pcm
    a.sample_rate_hz = c.sample_rate_hz
    a.timestamp_ms = c.timestamp_ms
    a.duration_ms = c.duration_ms
    for m in c.marks:
        a.marks.add(type=_MARKS[m.kind], timestamp_ms=m.time_ms, text=m.text)
    return a


def fill_frame(v: mpb.VideoFrame, f: VideoFrame) -> mpb.VideoFrame:
    v.data = f.data
    v.encoding = _ENCODINGS[f.encoding]
    v.width = f.width
    v.height = f.height
    v.frame_index = f.frame_index
    v.timestamp_ms = f.timestamp_ms
    v.drift_ms = f.drift_ms
    return v


def capabilities_to_proto(caps: Capabilities) -> pb.Capabilities:
    return pb.Capabilities(
        streaming=caps.streaming,
        controls=sorted(caps.controls),
        emotions=sorted(LABEL_TO_PROTO[e] for e in caps.emotions),
        speech_marks=caps.speech_marks,
    )
