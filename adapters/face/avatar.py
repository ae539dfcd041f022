"""`face_avatar`: a procedural talking head drawn with Pillow, no network and no GPU.

The mouth follows the speech: from PHONEME marks when the TTS sends them
(visemes), otherwise from the audio's loudness, so it also works behind networked
TTS that gives no timing. The face blinks, sways a little (scaled by motion
gain), wears the expression of the segment's emotion, and looks like the
persona. Frames are JPEGs on the turn's clock: frame i is shown at
i * frame_ms and depicts the audio window centred there (`adapters.framing`),
so `source_audio_ms` equals `timestamp_ms` and drift is zero.

Every frame is a cache lookup once its (face, mouth, eyes, pose) has been seen;
see `adapters.face.atlas`.

Options:

    personas: {}       persona_id -> look overrides (see `adapters.face.looks`)
    seed: 0            blink times and head sway; same seed, same video
    jpeg_quality: 85   1-95
    cache_mb: 64       encoded frames kept across sessions
    first_byte_ms, fail_after, fail_category, hang: fault injection (`adapters.local.knobs`)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field
from pydantic.dataclasses import dataclass as options_dataclass

from adapters.base import Applied, AvatarAdapter, AvatarInput, Capabilities, ControlMapping, Downgrade
from adapters.controls import Controls, EmotionLabel
from adapters.face.animation import Blinker, Envelope, HeadMotion, Pose, rms
from adapters.face.atlas import Atlas, FaceKey
from adapters.face.looks import (
    AMPLITUDE_BUCKETS,
    DEFAULT_LOOKS,
    NOMINAL_EXPRESSIVITY,
    Look,
    expression_bucket,
    parse_looks,
)
from adapters.face.render import EyeState
from adapters.face.visemes import REST, envelope_shape, viseme_for
from adapters.framing import FrameClock, FrameWindow
from adapters.local.knobs import KnobOptions, Knobs
from adapters.media import MarkKind, RenderSettings, SpeechMark, VideoEncoding, VideoFrame
from adapters.options import OPTIONS, GivenOptions

HONOURED = frozenset(
    {
        "emotion.label",
        "emotion.intensity",
        "emotion.arousal",
        "character.persona_id",
        "character.expressivity",
        "character.motion_gain",
    }
)

# Bilabial closures last 20-40 ms, less than a frame, yet a mouth that doesn't close on
# p/b/m is the lip-sync error viewers notice first; weight them up when picking a frame's viseme.
_SALIENCE = {"mbp": 3.0, "fv": 1.5}


def blink_rate(arousal: float) -> float:
    """Blinks per unit time relative to calm: 0.6x at arousal -1, 1.6x at +1."""
    return 1.0 + 0.5 * arousal if arousal < 0 else 1.0 + 0.6 * arousal


def motion_scale(controls: Controls) -> float:
    """Head motion amplitude: the motion gain, livelier with arousal."""
    return controls.motion_gain * (1.0 + 0.4 * controls.arousal)


@options_dataclass(frozen=True, config=OPTIONS, kw_only=True)
class FaceOptions(KnobOptions):
    personas: dict[str, dict[str, Any]] | None = None  # persona id -> look (see `adapters.face.looks`)
    seed: int = 0
    jpeg_quality: Annotated[int, Field(ge=1, le=95)] = 85
    cache_mb: Annotated[float, Field(gt=0)] = 64.0


class FaceAvatar(AvatarAdapter):
    """A drawn face whose mouth, eyes, head and expression follow the audio and controls."""

    Options = FaceOptions
    options: FaceOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._looks = parse_looks(self.options.personas)
        self._seed = self.options.seed
        self._knobs = Knobs.from_options(self.options)
        self.atlas = Atlas(max_bytes=int(self.options.cache_mb * (1 << 20)), jpeg_quality=self.options.jpeg_quality)

    async def start(self) -> None:
        """Draw the default face at the default size, so the first turn's first frame is a lookup.

        Also pays Pillow's lazy JPEG-plugin import here rather than in a turn.
        """
        settings = RenderSettings()
        face = FaceKey(self.look_for("neutral"), EmotionLabel.NEUTRAL, 0, settings.width, settings.height)
        await asyncio.to_thread(self.atlas.render, (face, REST, EyeState.OPEN, Pose()))

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True, controls=HONOURED, emotions=frozenset(EmotionLabel), speech_marks=True)

    def look_for(self, persona_id: str) -> Look:
        return self._looks.get(persona_id, DEFAULT_LOOKS["neutral"])

    def map_controls(self, controls: Controls) -> ControlMapping:
        label, step = expression_bucket(controls.label, controls.intensity, controls.expressivity)
        amplitude = step / AMPLITUDE_BUCKETS
        applied = [
            Applied("emotion.label", f"expression={label.value}@{amplitude:g}"),
            Applied("emotion.intensity", f"amplitude {amplitude:g} (drawn in steps of {1 / AMPLITUDE_BUCKETS:g})"),
            Applied(
                "character.expressivity",
                f"expression amplitude x{controls.expressivity / NOMINAL_EXPRESSIVITY:.2f}",
            ),
            Applied("character.motion_gain", f"head motion x{motion_scale(controls):.2f}"),
            Applied(
                "emotion.arousal",
                f"blink rate x{blink_rate(controls.arousal):.2f}, head motion x{1 + 0.4 * controls.arousal:.2f}",
            ),
        ]
        downgraded = []
        if controls.persona_id in self._looks:
            applied.append(Applied("character.persona_id", f"look={controls.persona_id}"))
        else:
            downgraded.append(
                Downgrade("character.persona_id", f"no look configured for {controls.persona_id!r}; drawn as 'neutral'")
            )
        reasons = {
            "valence": "the face shows the emotion label's expression; valence is not drawn separately",
            "speech_rate": "the mouth follows the audio, so rate reaches the face through the speech itself",
            "pitch_shift": "pitch has no visible counterpart on this face",
        }
        for name, reason in reasons.items():
            if controls.sources.get(name, "default") != "default":
                downgraded.append(Downgrade(f"{'emotion' if name == 'valence' else 'character'}.{name}", reason))
        params = {
            "look": controls.persona_id if controls.persona_id in self._looks else "neutral",
            "expression": label.value,
            "amplitude": amplitude,
            "motion_gain": motion_scale(controls),
            "blink_rate": blink_rate(controls.arousal),
        }
        return ControlMapping(controls, params=params, applied=tuple(applied), downgraded=tuple(downgraded))

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        clock = FrameClock(settings)
        turn = _Turn(self.atlas, self.look_for, self._seed, settings)
        index = 0
        async for item in audio:
            turn.add(item)
            for window in clock.push(item.chunk):
                await self._knobs.before(index, self.name)
                yield await turn.frame(window)
                index += 1
        for window in clock.flush():
            await self._knobs.before(index, self.name)
            yield await turn.frame(window)
            index += 1


@dataclass(frozen=True, slots=True)
class _Segment:
    """One audio chunk's span on the turn clock and what its controls mean for the face."""

    start_ms: float
    end_ms: float
    has_phonemes: bool
    face: FaceKey
    motion: float
    blink_rate: float


class _Turn:
    """Per-turn state: where each segment's controls apply, the loudness scale, blinks, sway, phonemes."""

    def __init__(self, atlas: Atlas, look_for: Callable[[str], Look], seed: int, settings: RenderSettings) -> None:
        self._atlas = atlas
        self._look_for = look_for
        self._settings = settings
        self._segments: list[_Segment] = []
        self._envelope = Envelope()
        self._blinker = Blinker(seed, settings.frame_ms)
        self._motion = HeadMotion(seed)
        self._viseme = REST

    def add(self, item: AvatarInput) -> None:
        chunk, controls = item.chunk, item.mapping.controls
        label, step = expression_bucket(controls.label, controls.intensity, controls.expressivity)
        look = self._look_for(controls.persona_id)
        face = FaceKey(look, label, step, self._settings.width, self._settings.height)
        has_phonemes = any(m.kind is MarkKind.PHONEME for m in chunk.marks)
        segment = _Segment(
            chunk.timestamp_ms, chunk.end_ms, has_phonemes, face, motion_scale(controls), blink_rate(controls.arousal)
        )
        self._segments.append(segment)

    def _segment_at(self, t_ms: float) -> tuple[_Segment, bool]:
        """The segment whose controls apply at `t_ms`, and whether `t_ms` is inside its audio."""
        # Segments before the latest one that starts by t are done with: frames only move forward.
        while len(self._segments) > 1 and self._segments[1].start_ms <= t_ms:
            self._segments.pop(0)
        segment = self._segments[0]
        return segment, segment.start_ms <= t_ms < segment.end_ms

    async def frame(self, window: FrameWindow) -> VideoFrame:
        t = window.timestamp_ms
        half = self._settings.frame_ms / 2
        segment, inside = self._segment_at(t)
        level = self._envelope.level(rms(window.samples), t)
        viseme = self._dominant_viseme(window.marks, t - half, t + half)
        if level == 0:
            mouth = REST
        elif inside and segment.has_phonemes:
            mouth = viseme
        else:
            mouth = envelope_shape(level)
        eyes = self._blinker.state(t, segment.blink_rate)
        pose = self._motion.pose(t, segment.motion)
        key = (segment.face, mouth, eyes, pose)
        data = self._atlas.cached(key)
        if data is None:
            data = await asyncio.to_thread(self._atlas.render, key)
        s = self._settings
        return VideoFrame(data, VideoEncoding.JPEG, s.width, s.height, window.index, t, t)

    def _dominant_viseme(self, marks: tuple[SpeechMark, ...], start_ms: float, end_ms: float) -> str:
        """The viseme held longest in the window (weighted by salience); remembers the last one for the next."""
        weights, self._viseme = viseme_weights(marks, start_ms, end_ms, self._viseme)
        return max(weights, key=lambda v: weights[v])


def viseme_weights(
    marks: tuple[SpeechMark, ...], start_ms: float, end_ms: float, current: str
) -> tuple[dict[str, float], str]:
    """How long each viseme is held in [start_ms, end_ms), weighted by salience, and the one held at the end.

    `current` is the viseme held when the window starts (the last one of the previous window).
    """
    weights: dict[str, float] = {}
    since = start_ms
    for mark in sorted((m for m in marks if m.kind is MarkKind.PHONEME), key=lambda m: m.time_ms):
        viseme = viseme_for(mark.text)
        if viseme is None:
            continue
        if mark.time_ms > since:
            weights[current] = weights.get(current, 0.0) + (mark.time_ms - since) * _SALIENCE.get(current, 1.0)
            since = mark.time_ms
        current = viseme
    weights[current] = weights.get(current, 0.0) + max(0.0, end_ms - since) * _SALIENCE.get(current, 1.0)
    return weights, current
