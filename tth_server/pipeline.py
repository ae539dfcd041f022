"""The turn pipeline: LLM stream -> segmenter -> TTS stream -> avatar, all at once.

Three stage tasks run concurrently for a turn and hand work on through small
bounded queues: the LLM task sends text deltas as tokens arrive and cuts the text
into segments; the speech task synthesizes each segment as soon as it is cut and
puts the audio on the turn's media clock; the face task renders frames from that
audio. Speech and face hand their media to the turn's `Outlet`, whose task sends
it on as a `Pacer` lets it go, at most a bounded lead ahead of real time (a
`Generate` call runs unpaced). Cancelling `TurnPipeline.run` cancels every task at
once.

With a combined realtime provider (LLM and TTS in one, `Stages.realtime`) the
provider's stream of transcript and audio replaces the LLM, segmenter and TTS
tasks; the conversation lives as long as the session (`ConversationSlot`), and
an interrupted reply is truncated at the audio the user heard.

Each turn opens a `tth_server.router.TurnRoutes` record; the routed adapters note
which provider served and whether a fallback fired, and the turn's stage
timings and control report are stamped from it when the turn ends.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from adapters.base import (
    AvatarAdapter,
    AvatarInput,
    ControlMapping,
    LLMAdapter,
    LLMRequest,
    Message,
    RealtimeAdapter,
    RealtimeConversation,
    Stage,
    TTSAdapter,
)
from adapters.controls import ControlPatch, Controls, resolve
from adapters.errors import ProviderError
from adapters.logs import log
from adapters.media import AudioChunk, MarkKind, RenderSettings, SpeechMark, VideoFrame
from tth_server import metrics
from tth_server.config import SegmenterSettings
from tth_server.drift import DriftController
from tth_server.events import AppliedControl, ControlReport, DowngradedControl, StageTiming, TurnMetrics
from tth_server.personas import Persona
from tth_server.prompt import system_prompt
from tth_server.router import begin_turn
from tth_server.segmenter import Hint, HintParser, Segment, Segmenter


class TurnSink(Protocol):
    """Where a turn's output goes: a session's outbox, or a Generate call's stream."""

    async def text(self, text: str) -> None: ...
    async def audio(self, chunk: AudioChunk) -> None: ...
    async def video(self, frame: VideoFrame) -> None: ...


@dataclass(frozen=True, slots=True)
class Stages:
    """The stage adapters: llm and tts, or one combined realtime provider; and the avatar."""

    llm: LLMAdapter | None
    tts: TTSAdapter | None
    avatar: AvatarAdapter
    realtime: RealtimeAdapter | None = None

    @property
    def sample_rate_hz(self) -> int:
        speech = self.realtime or self.tts
        assert speech is not None, "Stages needs a tts or a realtime adapter"
        return speech.sample_rate_hz


class ConversationSlot:
    """A session's conversation with a realtime provider: opened at its first turn, closed with the session."""

    def __init__(self) -> None:
        self.conversation: RealtimeConversation | None = None

    async def aclose(self) -> None:
        conversation, self.conversation = self.conversation, None
        if conversation is not None:
            await conversation.aclose()


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    first_clause_min_chars: int = SegmenterSettings.first_clause_min_chars
    max_chars: int = SegmenterSettings.max_chars
    sentences_only: bool = False


@dataclass(frozen=True, slots=True)
class TurnRequest:
    turn_id: str
    user_text: str
    history: tuple[Message, ...]
    layers: Sequence[tuple[str, ControlPatch]]  # highest priority first, persona excluded
    persona: Persona
    render: RenderSettings
    segments: SegmentPolicy = SegmentPolicy()
    conversation: ConversationSlot | None = None  # the session's realtime conversation, if any


# Per event loop: (tick length, tick number) -> the futures waiting for that tick, across all turns.
_TICKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[float, int], list[asyncio.Future[None]]]]
_TICKS = weakref.WeakKeyDictionary()


def _tick(number: int, length_s: float, now: float) -> asyncio.Future[None]:
    """A future done at tick `number` of the process's grid of `length_s` ticks (one timer per tick)."""
    loop = asyncio.get_running_loop()
    ticks = _TICKS.get(loop)
    if ticks is None:
        ticks = _TICKS[loop] = {}
    key = (length_s, number)
    waiters = ticks.get(key)
    if waiters is None:
        waiters = ticks[key] = []
        loop.call_at(loop.time() + number * length_s - now, _release, ticks, key)
    waiter = loop.create_future()
    waiters.append(waiter)
    return waiter


def _release(ticks: dict[tuple[float, int], list[asyncio.Future[None]]], key: tuple[float, int]) -> None:
    for waiter in ticks.pop(key, ()):
        if not waiter.done():  # a waiter cancelled meanwhile (its turn was interrupted) is skipped
            waiter.set_result(None)


class Pacer:
    """Holds media back to at most `lead_ms` ahead of real time on the turn's clock.

    The clock's zero is the moment the first audio chunk is released. With
    `lead_ms=None` nothing is held back. Media that must wait is released on a
    grid of ticks two fifths of the lead apart, and the grid is the process's,
    not the turn's: every turn's media due in a tick leaves in the same loop
    iteration. Media stays between 3/5 of the lead and the lead ahead; the server
    wakes once per tick for all its sessions, not once per frame per stage per
    session (200 stub sessions in one process: 42% of frames late when each frame
    waited for its own moment, 0.1% with a shared release), a stream that batches
    media gets one message per tick, and gRPC's threads hand a tick's writes for
    all streams over together (30 stub sessions: 3.7 ms of server CPU per second
    of media with a grid per turn, 2.9 ms with one grid for the process).
    """

    def __init__(self, lead_ms: float | None) -> None:
        self._lead_s = None if lead_ms is None else lead_ms / 1000
        self._tick_s = 0.0 if lead_ms is None else max(lead_ms * 0.4 / 1000, 0.001)
        self.zero: float | None = None

    async def wait(self, timestamp_ms: float) -> None:
        if self._lead_s is None:
            return
        now = time.monotonic()
        if self.zero is None:
            self.zero = now
            return
        due = self._due_at(self.zero, self._lead_s, timestamp_ms)
        if due <= now:
            return
        await _tick(math.ceil(due / self._tick_s), self._tick_s, now)

    def due(self, timestamp_ms: float) -> bool:
        """Whether media at `timestamp_ms` may leave now."""
        if self._lead_s is None or self.zero is None:
            return True
        return self._due_at(self.zero, self._lead_s, timestamp_ms) <= time.monotonic()

    @staticmethod
    def _due_at(zero: float, lead_s: float, timestamp_ms: float) -> float:
        """When media at `timestamp_ms` may leave, on the monotonic clock: one lead before it plays."""
        return zero + timestamp_ms / 1000 - lead_s

    async def ahead(self, timestamp_ms: float) -> None:
        """Wait until media at `timestamp_ms` is one tick from leaving: how far ahead the stages make it."""
        await self.wait(timestamp_ms - self._tick_s * 1000)

    def elapsed_ms(self) -> float:
        return 0.0 if self.zero is None else (time.monotonic() - self.zero) * 1000


@dataclass(slots=True)
class SpokenSegment:
    text: str
    start_ms: float
    end_ms: float
    word_times: list[float] = field(default_factory=list)


@dataclass(slots=True)
class TurnRun:
    """What a running turn has done so far; read when it ends, however it ends."""

    request: TurnRequest
    pacer: Pacer
    started: float = field(default_factory=time.monotonic)
    metrics: TurnMetrics = field(default_factory=TurnMetrics)
    report: ControlReport = field(default_factory=ControlReport)
    text_parts: list[str] = field(default_factory=list)
    spoken: list[SpokenSegment] = field(default_factory=list)
    audio_end_ms: float = 0.0
    drift: DriftController | None = None
    played_ms: float | None = None  # what the client said it played, when it interrupted

    def since_start_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    @property
    def text(self) -> str:
        return "".join(self.text_parts).strip()

    def heard_ms(self, played_ms: float | None) -> float:
        """Audio counted as heard: what the client says it played, else what real time allows."""
        estimate = self.pacer.elapsed_ms() if played_ms is None else played_ms
        return max(0.0, min(estimate, self.audio_end_ms))

    def spoken_text(self, cut_ms: float) -> str:
        """The reply text whose audio starts before `cut_ms`, cut at a word boundary."""
        out: list[str] = []
        for seg in self.spoken:
            if seg.end_ms <= cut_ms:
                out.append(seg.text)
                continue
            if seg.start_ms < cut_ms:
                words = seg.text.split()
                if seg.word_times:
                    n = sum(1 for t in seg.word_times if t < cut_ms)
                else:
                    n = int(len(words) * (cut_ms - seg.start_ms) / max(seg.end_ms - seg.start_ms, 1e-6))
                out.append(" ".join(words[:n]))
            break
        return " ".join(p for p in out if p)

    def finish_metrics(self, dropped: int, unsent: int = 0) -> TurnMetrics:
        """Final metrics; `dropped` frames were shed for a slow reader, `unsent` cut by an interrupt."""
        m = self.metrics
        m.audio_ms = self.audio_end_ms
        m.frames_dropped = dropped
        m.frames -= dropped + unsent
        if self.drift is not None:
            m.drift_mean_ms = self.drift.mean_abs_ms
            m.drift_max_ms = self.drift.max_abs_ms
        m.total_ms = self.since_start_ms()
        return m


class Outlet:
    """A turn's media between the stages that make it and the sink.

    Speech and face hand over what they make, each in time order, as soon as they
    make it; one task sends it on when the pacer lets it go, the earlier first, but
    all the audio that may leave before the video that may. The speech stage keeps
    at most one tick ahead of what may leave (`Pacer.ahead`), so the face has drawn
    a tick's frames before the tick comes and they leave with their audio: one wake per turn per tick and, on
    a stream that batches media, one message per tick however long a frame takes
    to draw. Media that may leave at once while nothing of its kind is held goes
    straight to the sink from the stage that made it, without passing through this
    outlet's task: the start of a turn, the first audio above all, is sent as soon
    as it is made, and the face sees the first chunk after it has left, so drawing
    never delays it. The released media is
    what the turn has sent: `TurnRun.audio_end_ms`, the spoken segments' ends and
    words, the frame count.
    """

    def __init__(self, run: TurnRun, sink: TurnSink) -> None:
        self._run = run
        self._sink = sink
        self._audio: deque[tuple[AudioChunk, SpokenSegment]] = deque()
        self._video: deque[VideoFrame] = deque()
        self._producers = 2  # the speech and the face stages, until each says it is done
        self._more = asyncio.Event()

    async def audio(self, chunk: AudioChunk, spoken: SpokenSegment) -> None:
        if self._audio or not self._run.pacer.due(chunk.timestamp_ms):
            self._audio.append((chunk, spoken))
            self._more.set()
        else:  # due now and nothing held before it: straight to the sink
            await self._run.pacer.wait(chunk.timestamp_ms)  # the first chunk starts the turn's clock
            await self._send_audio(chunk, spoken)

    async def video(self, frame: VideoFrame) -> None:
        if self._video or not self._run.pacer.due(frame.timestamp_ms):
            self._video.append(frame)
            self._more.set()
        else:
            await self._send_video(frame)

    def done(self) -> None:
        """A producer (the speech or the face stage) has handed over all it will produce."""
        self._producers -= 1
        self._more.set()

    async def run(self) -> None:
        """Send everything handed over, each piece when the pacer lets it go; returns when both producers are done."""
        audio, video, pacer = self._audio, self._video, self._run.pacer
        while True:
            if not audio and not video:
                if not self._producers:
                    return
                self._more.clear()
                await self._more.wait()
                continue
            # The earlier first, but all the audio that may leave before any video: chunks that leave one after
            # another are merged into one by the outbox. Each piece leaves its deque only once sent, so a producer
            # sends past the outlet (`audio`, `video`) only when nothing of its kind is held or on its way.
            first = audio[0][0].timestamp_ms if audio else None
            if first is not None and (not video or first <= video[0].timestamp_ms or pacer.due(first)):
                await pacer.wait(first)
                await self._send_audio(*audio[0])
                audio.popleft()
            else:
                await pacer.wait(video[0].timestamp_ms)
                await self._send_video(video[0])
                video.popleft()

    async def _send_audio(self, chunk: AudioChunk, spoken: SpokenSegment) -> None:
        run = self._run
        if not run.audio_end_ms:
            run.metrics.time_to_first_audio_ms = run.since_start_ms()
        await self._sink.audio(chunk)
        run.audio_end_ms = spoken.end_ms = chunk.end_ms
        spoken.word_times.extend(m.time_ms for m in chunk.marks if m.kind is MarkKind.WORD)

    async def _send_video(self, frame: VideoFrame) -> None:
        run = self._run
        if run.metrics.frames == 0:
            run.metrics.time_to_first_video_ms = run.since_start_ms()
        run.metrics.frames += 1  # handed to the sink; finish_metrics leaves only those the client got
        await self._sink.video(frame)


class _Report:
    """Collects each stage's applied and downgraded controls, once per distinct entry."""

    def __init__(self, report: ControlReport) -> None:
        self._report = report
        self._seen: set[tuple[str, Stage, str]] = set()

    def add(self, stage: Stage, mapping: ControlMapping) -> None:
        controls = mapping.controls
        for a in mapping.applied:
            name = a.field.split(".", 1)[1]
            value = controls.value_text(name)
            if (a.field, stage, value) not in self._seen:
                self._seen.add((a.field, stage, value))
                source = controls.sources.get(name, "default")
                self._report.applied.append(AppliedControl(a.field, value, source, stage, a.detail))
        for d in mapping.downgraded:
            if (d.field, stage, "") not in self._seen:
                self._seen.add((d.field, stage, ""))
                self._report.downgraded.append(DowngradedControl(d.field, stage, d.reason))


class TurnPipeline:
    def __init__(self, stages: Stages) -> None:
        self.stages = stages

    def controls_for(self, request: TurnRequest, hint: ControlPatch | None) -> Controls:
        # The persona layer names its own id, so the resolved persona_id is the persona in use.
        persona = replace(request.persona.controls, persona_id=request.persona.id)
        layers = [*request.layers, ("persona", persona)]
        if hint is not None:
            layers.append(("llm_hint", hint))
        return resolve(layers)

    async def run(self, run: TurnRun, sink: TurnSink) -> None:
        """Run the turn to its end. Raises what a stage raised; cancel to interrupt."""
        routes = begin_turn()
        report = _Report(run.report)
        try:
            if self.stages.realtime is not None:
                await self._run_realtime(run, sink, report, self.stages.realtime)
            else:
                await self._run_cascade(run, sink, report)
        finally:
            routes.apply(run.metrics.stages)
            for stage, mapping in routes.mappings:
                report.add(stage, mapping)

    async def _run_cascade(self, run: TurnRun, sink: TurnSink, report: _Report) -> None:
        request = run.request
        llm, tts = self.stages.llm, self.stages.tts
        assert llm is not None and tts is not None, "the cascade needs llm and tts adapters"
        controls = self.controls_for(request, None)
        prompt, prompt_applied = system_prompt(request.persona, controls)
        report.add(Stage.LLM, ControlMapping(controls, applied=prompt_applied))
        segments: asyncio.Queue[Segment | None] = asyncio.Queue(maxsize=4)
        audio: asyncio.Queue[AvatarInput | None] = asyncio.Queue(maxsize=8)
        llm_request = LLMRequest(prompt, request.user_text, request.history, controls)
        outlet = Outlet(run, sink)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(metrics.stage("llm", self._write(run, llm, llm_request, sink, segments)))
            tasks.create_task(metrics.stage("tts", self._speak(run, tts, report, outlet, segments, audio, controls)))
            tasks.create_task(metrics.stage("avatar", self._animate(run, outlet, audio)))
            tasks.create_task(outlet.run())

    async def _write(
        self,
        run: TurnRun,
        llm: LLMAdapter,
        llm_request: LLMRequest,
        sink: TurnSink,
        out: asyncio.Queue[Segment | None],
    ) -> None:
        policy = run.request.segments
        parser = HintParser()
        segmenter = Segmenter(policy.first_clause_min_chars, policy.max_chars, policy.sentences_only)
        first = True
        async for piece in llm.stream(llm_request):
            if first:
                first = False
                run.metrics.llm_first_token_ms = run.since_start_ms()
                run.metrics.stages.append(StageTiming(Stage.LLM, run.metrics.llm_first_token_ms, llm.name))
            for item in parser.feed(piece):
                await self._text(run, sink, segmenter, item, out)
        for item in parser.flush():
            await self._text(run, sink, segmenter, item, out)
        for segment in segmenter.flush():
            await out.put(segment)
        await out.put(None)

    @staticmethod
    async def _text(
        run: TurnRun, sink: TurnSink, segmenter: Segmenter, item: str | Hint, out: asyncio.Queue[Segment | None]
    ) -> None:
        if isinstance(item, Hint):
            segmenter.hint(item.patch)
            return
        if not item:
            return
        if not run.text_parts:
            run.metrics.time_to_first_text_ms = run.since_start_ms()
        run.text_parts.append(item)
        await sink.text(item)
        for segment in segmenter.feed(item):
            await out.put(segment)
            # Let the speech task start on it now, even when the LLM has more text ready.
            await asyncio.sleep(0)

    async def _speak(
        self,
        run: TurnRun,
        tts: TTSAdapter,
        report: _Report,
        outlet: Outlet,
        segments: asyncio.Queue[Segment | None],
        out: asyncio.Queue[AvatarInput | None],
        controls: Controls,
    ) -> None:
        """Speak each segment with `controls` (the turn's), or with its hint's on top when it has one."""
        avatar = self.stages.avatar
        made_ms = 0.0  # the end of the audio made so far, on the turn's clock
        first_chunk = True
        mapped: tuple[ControlPatch | None, ControlMapping, ControlMapping] | None = None  # for the last hint
        while (segment := await segments.get()) is not None:
            if mapped is None or segment.hint is not mapped[0]:  # segments share a hint until the LLM sends another
                hinted = controls if segment.hint is None else self.controls_for(run.request, segment.hint)
                mapped = segment.hint, tts.map_controls(hinted), avatar.map_controls(hinted)
                report.add(Stage.TTS, mapped[1])
                report.add(Stage.AVATAR, mapped[2])
            _, tts_mapping, face_mapping = mapped
            spoken = SpokenSegment(segment.text, made_ms, made_ms)
            run.spoken.append(spoken)
            asked = time.monotonic()
            async for piece in tts.synthesize(segment.text, tts_mapping):
                if first_chunk:
                    first_chunk = False
                    run.metrics.tts_first_byte_ms = (time.monotonic() - asked) * 1000
                    run.metrics.stages.append(StageTiming(Stage.TTS, run.metrics.tts_first_byte_ms, tts.name))
                made_ms = await self._voice(run, piece, made_ms, spoken, face_mapping, outlet, out)
        await out.put(None)
        outlet.done()

    async def _run_realtime(self, run: TurnRun, sink: TurnSink, report: _Report, realtime: RealtimeAdapter) -> None:
        request = run.request
        controls = self.controls_for(request, None)
        # The provider speaks every word it writes, so inline emotion tags must not be asked for.
        prompt, prompt_applied = system_prompt(request.persona, controls, hints=False)
        mapping = realtime.map_controls(controls)
        report.add(Stage.REALTIME, ControlMapping(controls, applied=prompt_applied))
        report.add(Stage.REALTIME, mapping)
        face = self.stages.avatar.map_controls(controls)
        report.add(Stage.AVATAR, face)
        owned = request.conversation is None  # Generate: a conversation for this one turn
        slot = request.conversation or ConversationSlot()
        audio: asyncio.Queue[AvatarInput | None] = asyncio.Queue(maxsize=8)
        llm_request = LLMRequest(prompt, request.user_text, request.history, controls)
        try:
            if slot.conversation is None:
                slot.conversation = await realtime.open(prompt, mapping)
            conversation = slot.conversation
            try:
                async with asyncio.TaskGroup() as tasks:
                    outlet = Outlet(run, sink)
                    tasks.create_task(
                        metrics.stage(
                            "realtime",
                            self._converse(
                                run, realtime.name, conversation, llm_request, mapping, face, sink, outlet, audio
                            ),
                        )
                    )
                    tasks.create_task(metrics.stage("avatar", self._animate(run, outlet, audio)))
                    tasks.create_task(outlet.run())
            except asyncio.CancelledError:
                await self._truncate(conversation, run)
                raise
        finally:
            if owned:
                await slot.aclose()

    async def _converse(
        self,
        run: TurnRun,
        name: str,
        conversation: RealtimeConversation,
        llm_request: LLMRequest,
        mapping: ControlMapping,
        face: ControlMapping,
        sink: TurnSink,
        outlet: Outlet,
        out: asyncio.Queue[AvatarInput | None],
    ) -> None:
        spoken = SpokenSegment("", 0.0, 0.0)
        run.spoken.append(spoken)
        asked = time.monotonic()
        first = True
        made_ms = 0.0
        async for item in conversation.respond(llm_request, mapping):
            if first:
                first = False
                run.metrics.stages.append(StageTiming(Stage.REALTIME, (time.monotonic() - asked) * 1000, name))
            if isinstance(item, str):
                if not run.text_parts:
                    run.metrics.time_to_first_text_ms = run.metrics.llm_first_token_ms = run.since_start_ms()
                run.text_parts.append(item)
                spoken.text += item
                await sink.text(item)
                continue
            if not made_ms:
                run.metrics.tts_first_byte_ms = (time.monotonic() - asked) * 1000
            made_ms = await self._voice(run, item, made_ms, spoken, face, outlet, out)
        spoken.text = spoken.text.strip()
        await out.put(None)
        outlet.done()

    @staticmethod
    async def _truncate(conversation: RealtimeConversation, run: TurnRun) -> None:
        """Tell the provider how much of the interrupted reply was heard; never holds the interrupt up for long."""
        heard = run.heard_ms(run.played_ms)
        try:
            await asyncio.wait_for(conversation.truncate(heard), 1.0)
        except (ProviderError, TimeoutError) as exc:
            log.warning("realtime truncate failed", error=str(exc), heard_ms=round(heard, 1))

    async def _voice(
        self,
        run: TurnRun,
        piece: AudioChunk,
        made_ms: float,
        spoken: SpokenSegment,
        face: ControlMapping,
        outlet: Outlet,
        out: asyncio.Queue[AvatarInput | None],
    ) -> float:
        """Put a piece of speech on the turn's clock after `made_ms`, hand it to the outlet and the face, and
        wait until making more is due; returns the end of the audio made."""
        chunk = self._on_clock(piece, made_ms)
        await outlet.audio(chunk, spoken)
        await out.put(AvatarInput(chunk, face))
        await run.pacer.ahead(chunk.timestamp_ms)
        return chunk.end_ms

    @staticmethod
    def _on_clock(chunk: AudioChunk, at_ms: float) -> AudioChunk:
        """Move a chunk (stamped relative to its synthesis call) to `at_ms` on the turn's clock."""
        shift = at_ms - chunk.timestamp_ms
        marks = tuple(SpeechMark(m.kind, m.time_ms + shift, m.text) for m in chunk.marks)
        return replace(chunk, timestamp_ms=at_ms, marks=marks)

    async def _animate(self, run: TurnRun, outlet: Outlet, audio: asyncio.Queue[AvatarInput | None]) -> None:
        """Draw the face as its audio comes in; the outlet sends each frame when it is due."""
        avatar = self.stages.avatar
        drift = run.drift = DriftController(run.request.render)
        first_audio_at: list[float] = []
        first_frame = True

        async def inputs() -> AsyncIterator[AvatarInput]:
            while (item := await audio.get()) is not None:
                if not first_audio_at:
                    first_audio_at.append(time.monotonic())
                yield item

        async for raw in avatar.render(inputs(), run.request.render):
            frame = drift.place(raw)
            if frame is None:
                continue
            if first_frame:
                first_frame = False
                run.metrics.avatar_first_frame_ms = (time.monotonic() - first_audio_at[0]) * 1000
                run.metrics.stages.append(StageTiming(Stage.AVATAR, run.metrics.avatar_first_frame_ms, avatar.name))
            await outlet.video(frame)
        outlet.done()
