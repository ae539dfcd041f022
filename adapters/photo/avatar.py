"""`photo_avatar`: a portrait photo that speaks the turn's audio, warped on the CPU with OpenCV.

The portrait comes from `RenderSettings.portrait_id` (the session's own,
`SessionConfig.portrait`, else the turn's persona's `portrait:` in personas.yaml,
both prepared by `prepare()`), else from the adapter's `portrait` option. None of
them has a default: TTH ships no one's face.

Timing is the drawn face's: frames on the turn's clock from `adapters.framing`
(frame i at i * frame_ms depicts the audio window centred there, so
`source_audio_ms == timestamp_ms`). The mouth follows phoneme marks where the TTS
sends them (shapes blended by how long each is held in the frame's window),
otherwise the loudness (how open) and the spectrum (high: spread lips and teeth,
low: rounded); consecutive frames are eased towards the target so shapes blend
rather than snap, except that lips close at once for p/b/m. Blinks, head sway and
expressions come from the same modules as the drawn face (`adapters.face`).

A frame is a JPEG cached under its quantized pose, shared by every session with
the same portrait and size; a miss warps and encodes in a worker process
(~2-3 ms at 256 px; `adapters.photo.workers` says why not a thread). Each turn
keeps a real-time clock from its first frame: a frame whose pose is not ready by
`max_lag_ms` past its time on that clock shows the turn's previous frame instead
(counted in `stand_ins`) while its pose is still rendered and cached, so a busy
renderer makes the face hold a pose for a frame rather than make video late. A
turn has at most one such render outstanding; further misses meanwhile stand in
too. Audio that comes faster than real time (a fast TTS, `Generate` to a file)
leaves every frame time to wait for its pose.

Options:

    portrait: ""          a JPEG/PNG path used when neither session nor persona names one
    landmarks: dlib68     or dlib5 (public-domain model, mouth placed by proportion); see docs/photo_face.md
    cache_dir: ~/.cache/tth/portraits   landmarks by portrait hash ("" keeps them in memory only)
    render_processes: 1   worker processes for frames not in the cache (0: threads of the server's process)
    max_lag_ms: 40        how far a frame may fall behind its turn's real-time clock waiting for its pose
    max_portrait_bytes: 4194304
    seed: 0, jpeg_quality: 85, cache_mb: 128
    first_byte_ms, fail_after, fail_category, hang: fault injection (`adapters.local.knobs`)
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass as options_dataclass

from adapters.base import (
    Applied,
    AvatarAdapter,
    AvatarInput,
    Capabilities,
    ControlMapping,
    Downgrade,
    PortraitAvatar,
)
from adapters.controls import Controls, EmotionLabel
from adapters.errors import ErrorCategory, ProviderError
from adapters.face.animation import Blinker, Envelope, HeadMotion, rms
from adapters.face.avatar import HONOURED, blink_rate, motion_scale, viseme_weights
from adapters.face.looks import AMPLITUDE_BUCKETS, Expression, expression_bucket, expression_for
from adapters.face.render import EyeState
from adapters.face.visemes import ENVELOPE_LEVELS, REST, VISEMES, MouthShape
from adapters.framing import FrameClock, FrameWindow
from adapters.local.knobs import KnobOptions, Knobs
from adapters.media import MarkKind, RenderSettings, VideoEncoding, VideoFrame
from adapters.options import OPTIONS, GivenOptions
from adapters.photo.portrait import DEFAULT_MAX_BYTES, Detector, Limits, Portrait, PortraitError, digest_of
from adapters.photo.pose import FacePose
from adapters.photo.rig import Rig
from adapters.photo.workers import Rigs, renderer

EASE_MS = 30.0
"""Time constant of the mouth easing towards each frame's target: about one frame at 25 fps."""
_LIDS = {EyeState.OPEN: 0.0, EyeState.HALF: 0.55, EyeState.CLOSED: 1.0}
_PIXELS_PER_STEP_AT_256 = 1.0


@dataclass(frozen=True, slots=True)
class _Key:
    """What a cached frame depicts: portrait, size, and a quantized pose."""

    portrait: str
    width: int
    height: int
    pose: FacePose


def quantize(pose: FacePose) -> FacePose:
    """Round a pose to the steps frames are cached at (fine enough that a step is under a pixel of lip)."""

    def q(value: float, step: float) -> float:
        return round(value / step) * step

    return FacePose(
        open=q(pose.open, 1 / 16),
        width=q(pose.width, 0.04),
        teeth=q(pose.teeth, 0.25),
        tongue=q(pose.tongue, 0.5),
        press=q(pose.press, 0.5),
        bite=q(pose.bite, 0.5),
        corners=pose.corners,
        cheeks=pose.cheeks,
        brow_raise=pose.brow_raise,
        brow_inner=pose.brow_inner,
        lids=pose.lids,
        lower_lids=pose.lower_lids,
        sneer=pose.sneer,
        sway_px=pose.sway_px,
        nod_px=pose.nod_px,
        roll_deg=pose.roll_deg,
    )


def spectral_shape(samples: np.ndarray, rate_hz: int, level: float) -> MouthShape:
    """A mouth shape from a window without phoneme marks: how open from the level (0-1), spread or
    rounded from where the energy sits (sibilants and front vowels high, rounded vowels low)."""
    if level <= 0 or len(samples) < 32 or not rate_hz:
        return VISEMES[REST]
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float32) * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate_hz)
    centroid = float((spectrum * freqs).sum() / max(1e-6, spectrum.sum()))
    # ~500 Hz (o, u) -> -1, ~1500 Hz neutral, >= 3000 Hz (s, i) -> +1.
    spread = max(-1.0, min(1.0, (centroid - 1500.0) / 1500.0 if centroid > 1500 else (centroid - 1500.0) / 1000.0))
    return MouthShape(
        open=0.9 * level * (1 - 0.45 * max(0.0, spread)),
        width=1.0 + 0.16 * spread,
        round=max(0.0, -spread),
        teeth=0.3 + 0.6 * max(0.0, spread),
    )


def blend(weights: Mapping[str, float]) -> MouthShape:
    """The weighted mean of visemes (coarticulation within a frame's window)."""
    total = sum(weights.values()) or 1.0
    shapes = [(VISEMES[name], w / total) for name, w in weights.items()]
    return MouthShape(
        open=sum(s.open * w for s, w in shapes),
        width=sum(s.width * w for s, w in shapes),
        round=sum(s.round * w for s, w in shapes),
        teeth=sum(s.teeth * w for s, w in shapes),
        tongue=any(s.tongue and w >= 0.3 for s, w in shapes),
        press=sum(s.press * w for s, w in shapes),
        bite=any(s.bite and w >= 0.3 for s, w in shapes),
    )


def expression_pose(expression: Expression) -> FacePose:
    """An emotion's offsets (fractions of the face) as the rig's movements."""
    return FacePose(
        open=expression.mouth_open,
        width=1.0 + expression.mouth_width,
        teeth=expression.teeth,
        press=expression.press,
        corners=expression.corners,
        cheeks=expression.cheeks,
        brow_raise=expression.brow_raise,
        brow_inner=expression.brow_inner,
        lids=-expression.eye_open + 0.3 * (expression.lid_inner + expression.lid_outer),
        lower_lids=expression.lower_lid,
        sneer=expression.sneer,
    )


def compose(expression: FacePose, mouth: MouthShape, lids: float = 0.0) -> FacePose:
    """An emotion's pose with a mouth shape spoken through it and the lids at least `lids` closed."""
    return replace(
        expression,
        open=max(0.0, mouth.open + expression.open),
        width=mouth.width * expression.width * (1 - 0.12 * mouth.round),
        teeth=min(1.0, mouth.teeth + expression.teeth),
        tongue=1.0 if mouth.tongue else 0.0,
        press=min(1.0, mouth.press + expression.press),
        bite=1.0 if mouth.bite else 0.0,
        lids=max(expression.lids, lids),
    )


class FrameCache:
    """JPEG bytes per `_Key`, least recently used first out; shared by sessions."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._frames: OrderedDict[_Key, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: _Key) -> bytes | None:
        with self._lock:
            data = self._frames.get(key)
            if data is not None:
                self._frames.move_to_end(key)
                self.hits += 1
            return data

    def put(self, key: _Key, data: bytes) -> None:
        with self._lock:
            self.misses += 1
            if key in self._frames:
                return
            self._frames[key] = data
            self.bytes += len(data)
            while self.bytes > self._max and len(self._frames) > 1:
                _, old = self._frames.popitem(last=False)
                self.bytes -= len(old)


@options_dataclass(frozen=True, config=OPTIONS, kw_only=True)
class PhotoOptions(KnobOptions):
    portrait: str = ""  # a JPEG/PNG path; empty: sessions send their own
    landmarks: str = "dlib68"  # the shape predictor (see `adapters.photo.portrait.MODELS`)
    seed: int = 0
    jpeg_quality: Annotated[int, Field(ge=1, le=95)] = 85
    cache_dir: str = field(default_factory=lambda: str(Path.home() / ".cache" / "tth" / "portraits"))  # "": none
    max_portrait_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_BYTES
    cache_mb: Annotated[float, Field(gt=0)] = 128.0
    render_processes: Annotated[int, Field(ge=0, description="0 renders in threads")] = 1
    max_lag_ms: Annotated[float, Field(ge=0, le=10_000)] = 40.0  # how far a frame may fall behind waiting for its pose


class PhotoAvatar(AvatarAdapter, PortraitAvatar):
    """A portrait whose lips, jaw, lids, brows and head follow the audio and the controls."""

    Options = PhotoOptions
    options: PhotoOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._seed = self.options.seed
        self._quality = self.options.jpeg_quality
        cache = self.options.cache_dir
        limits = Limits(max_bytes=self.options.max_portrait_bytes)
        self.detector = Detector(self.options.landmarks, Path(cache) if cache else None, limits)
        self.frames = FrameCache(int(self.options.cache_mb * (1 << 20)))
        self.max_lag_s = self.options.max_lag_ms / 1000
        self.stand_ins = 0
        """Frames that repeated their turn's previous frame because their pose was not ready in time."""
        self._rigs = Rigs()
        self.renderer = renderer(self.options.render_processes, self._quality, self._rigs)
        self._knobs = Knobs.from_options(self.options)
        self._default_path = self.options.portrait
        self._portraits: dict[str, Portrait] = {}
        self._by_path: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[Portrait]] = {}
        self._rendering: dict[_Key, asyncio.Future[bytes]] = {}

    @property
    def limits(self) -> Limits:
        return self.detector.limits

    async def start(self) -> None:
        """Load the detector's models and prepare the configured portraits, so a first turn doesn't wait."""
        await asyncio.gather(asyncio.to_thread(self.detector.warm), self.renderer.start())
        if self._default_path:
            await self._portrait_from_path(self._default_path)

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True, controls=HONOURED, emotions=frozenset(EmotionLabel), speech_marks=True)

    async def prepare(self, data: bytes) -> str:
        """Validate and measure a client's portrait; returns its id for `RenderSettings.portrait_id`.

        Raises PortraitError naming what is wrong. Runs in a worker thread; the same bytes
        sent twice (or by two sessions at once) are measured once.
        """
        digest = digest_of(data)
        if digest in self._portraits:
            return digest
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self.detector.measure, data))
            self._pending[digest] = pending
            pending.add_done_callback(lambda _: self._pending.pop(digest, None))
        portrait = await asyncio.shield(pending)
        self._portraits[digest] = portrait
        # Rigged at the default size now (and its resting frame cached), so a first turn starts at once.
        size = RenderSettings()
        await self.render_key(_Key(digest, size.width, size.height, quantize(FacePose())))
        return digest

    async def _portrait_from_path(self, path: str) -> str:
        if path not in self._by_path:
            try:
                data = await asyncio.to_thread(_read, path)
            except OSError as exc:
                raise ValueError(f"photo avatar: cannot read portrait {path!r}: {exc.strerror}") from exc
            try:
                self._by_path[path] = await self.prepare(data)
            except PortraitError as exc:
                raise ValueError(f"photo avatar: portrait {path!r}: {exc}") from exc
        return self._by_path[path]

    async def _portrait_for(self, settings: RenderSettings) -> str:
        if settings.portrait_id:
            if settings.portrait_id not in self._portraits:
                raise ProviderError(
                    ErrorCategory.INVALID_REQUEST,
                    "the session's portrait is not prepared on this server (send it again in SessionConfig.portrait)",
                    provider=self.name,
                )
            return settings.portrait_id
        path = self._default_path
        if not path:
            raise ProviderError(
                ErrorCategory.INVALID_REQUEST,
                "no portrait: send SessionConfig.portrait, name a persona's portrait in personas.yaml, "
                "or set the photo avatar's portrait option",
                provider=self.name,
            )
        return await self._portrait_from_path(path)

    def rig(self, digest: str, width: int, height: int) -> Rig:
        """The portrait rigged at a size in this process (for inspection; frames are rendered by the workers)."""
        return self._rigs.get(self._portraits[digest], width, height)

    async def aclose(self) -> None:
        self.renderer.close()

    async def render_key(self, key: _Key) -> bytes:
        """One frame: from the cache, else warped and encoded by the renderer (once however many ask) and cached."""
        data = self.frames.get(key)
        if data is not None:
            return data
        pending = self._rendering.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._render(key))
            self._rendering[key] = pending
            pending.add_done_callback(lambda _: self._rendering.pop(key, None))
        return await asyncio.shield(pending)

    async def _render(self, key: _Key) -> bytes:
        data = await self.renderer.render(self._portraits[key.portrait], key.width, key.height, key.pose)
        self.frames.put(key, data)
        return data

    def map_controls(self, controls: Controls) -> ControlMapping:
        label, step = expression_bucket(controls.label, controls.intensity, controls.expressivity)
        amplitude = step / AMPLITUDE_BUCKETS
        applied = [
            Applied("emotion.label", f"expression={label.value}@{amplitude:g} (brows, lids, mouth corners)"),
            Applied("emotion.intensity", f"amplitude {amplitude:g} (in steps of {1 / AMPLITUDE_BUCKETS:g})"),
            Applied("character.expressivity", f"expression amplitude from intensity x expressivity = {amplitude:g}"),
            Applied("character.motion_gain", f"head motion x{motion_scale(controls):.2f}"),
            Applied("emotion.arousal", f"blink rate x{blink_rate(controls.arousal):.2f}"),
            Applied("character.persona_id", f"portrait for {controls.persona_id!r} (or the session's own)"),
        ]
        downgraded = []
        reasons = {
            "emotion.valence": "the face shows the emotion label's expression; valence is not shown separately",
            "character.speech_rate": "the mouth follows the audio, so rate reaches the face through the speech",
            "character.pitch_shift": "pitch has no visible counterpart on a face",
        }
        for public, reason in reasons.items():
            if controls.sources.get(public.split(".")[1], "default") != "default":
                downgraded.append(Downgrade(public, reason))
        params = {"expression": label.value, "amplitude": amplitude, "motion_gain": motion_scale(controls)}
        return ControlMapping(controls, params=params, applied=tuple(applied), downgraded=tuple(downgraded))

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        clock = FrameClock(settings)
        turn: _Turn | None = None
        index = 0
        async for item in audio:
            if turn is None:
                turn = _Turn(self, await self._portrait_for(settings), settings, self._seed)
            turn.add(item)
            for window in clock.push(item.chunk):
                await self._knobs.before(index, self.name)
                yield await turn.frame(window)
                index += 1
        if turn is None:
            return
        for window in clock.flush():
            await self._knobs.before(index, self.name)
            yield await turn.frame(window)
            index += 1


def _read(path: str) -> bytes:
    return Path(path).expanduser().read_bytes()


class _Turn:
    """One turn's motion state: segments' controls, loudness scale, blinks, sway, and the eased mouth."""

    def __init__(self, avatar: PhotoAvatar, digest: str, settings: RenderSettings, seed: int) -> None:
        self._avatar = avatar
        self._digest = digest
        self._settings = settings
        self._segments: list[tuple[float, float, bool, FacePose, float, float]] = []
        self._envelope = Envelope()
        self._blinker = Blinker(seed, settings.frame_ms)
        self._motion = HeadMotion(seed)
        self._viseme = REST
        self._mouth = VISEMES[REST]
        self._rate = 0
        self._ease = 1 - math.exp(-settings.frame_ms / EASE_MS)
        self._last: bytes | None = None
        self._behind: asyncio.Future[bytes] | None = None
        self._clock: float | None = None  # loop time at which this turn's media time 0 is due

    def add(self, item: AvatarInput) -> None:
        chunk, controls = item.chunk, item.mapping.controls
        self._rate = chunk.sample_rate_hz
        label, step = expression_bucket(controls.label, controls.intensity, controls.expressivity)
        has_phonemes = any(m.kind is MarkKind.PHONEME for m in chunk.marks)
        expression = expression_pose(expression_for(label, step))
        motion, blinks = motion_scale(controls), blink_rate(controls.arousal)
        self._segments.append((chunk.timestamp_ms, chunk.end_ms, has_phonemes, expression, motion, blinks))

    def _segment_at(self, t_ms: float) -> tuple[tuple[float, float, bool, FacePose, float, float], bool]:
        while len(self._segments) > 1 and self._segments[1][0] <= t_ms:
            self._segments.pop(0)
        segment = self._segments[0]
        return segment, segment[0] <= t_ms < segment[1]

    def _target(self, window: FrameWindow, inside: bool, has_phonemes: bool) -> MouthShape:
        t, half = window.timestamp_ms, self._settings.frame_ms / 2
        level = self._envelope.level(rms(window.samples), t)
        weights, self._viseme = viseme_weights(window.marks, t - half, t + half, self._viseme)
        if level == 0:
            return VISEMES[REST]
        if inside and has_phonemes:
            return blend(weights)
        return spectral_shape(window.samples, self._rate, level / (ENVELOPE_LEVELS - 1))

    def _eased(self, target: MouthShape) -> MouthShape:
        m, k = self._mouth, self._ease
        if target.press > 0.5:
            k = 1.0  # p/b/m: the lips meet within the frame, however open they were
        self._mouth = MouthShape(
            open=m.open + (target.open - m.open) * k,
            width=m.width + (target.width - m.width) * k,
            round=m.round + (target.round - m.round) * k,
            teeth=m.teeth + (target.teeth - m.teeth) * k,
            tongue=target.tongue,
            press=m.press + (target.press - m.press) * k,
            bite=target.bite,
        )
        return self._mouth

    async def frame(self, window: FrameWindow) -> VideoFrame:
        t = window.timestamp_ms
        segment, inside = self._segment_at(t)
        _, _, has_phonemes, expression, motion, blinks = segment
        mouth = self._eased(self._target(window, inside, has_phonemes))
        head = self._motion.pose(t, motion)
        step = _PIXELS_PER_STEP_AT_256 * min(self._settings.width, self._settings.height) / 256
        pose = compose(expression, mouth, _LIDS[self._blinker.state(t, blinks)])
        pose = replace(pose, sway_px=head.sway * step, nod_px=head.nod * step, roll_deg=-head.sway * 0.5)
        s = self._settings
        key = _Key(self._digest, s.width, s.height, quantize(pose))
        loop_now = asyncio.get_running_loop().time()
        if self._clock is None:
            self._clock = loop_now - t / 1000
        data = self._avatar.frames.get(key)
        if data is None:
            data = await self._miss(key, self._clock + t / 1000 + self._avatar.max_lag_s - loop_now)
        self._last = data
        return VideoFrame(data, VideoEncoding.JPEG, s.width, s.height, window.index, t, t)

    async def _miss(self, key: _Key, slack_s: float) -> bytes:
        """The frame for a pose not in the cache, or the previous frame if it is not ready within `slack_s`."""
        avatar = self._avatar
        if self._last is None:  # the turn's first frame has nothing to stand in for it
            return await avatar.render_key(key)
        if self._behind is None or self._behind.done():
            self._behind = asyncio.ensure_future(avatar.render_key(key))
            self._behind.add_done_callback(_retrieve)
            try:
                return await asyncio.wait_for(asyncio.shield(self._behind), max(0.0, slack_s))
            except TimeoutError:
                pass
        avatar.stand_ins += 1
        return self._last


def _retrieve(future: asyncio.Future[bytes]) -> None:
    """Mark a stand-in's render as looked at: a failure shows on the next frame that needs that renderer."""
    if not future.cancelled():
        future.exception()
