"""A conversation session: its controls, history, outbox and the one turn it runs at a time.

The session's state is derived from its running turn, following the
turn's state machine: IDLE -> LLM_RUN -> TTS_RUN -> AVATAR_RUN -> STREAMING_OUTPUT, and back
to IDLE through exactly one terminal event (turn_complete, turn_interrupted or
a turn error). New text while a turn runs interrupts it first (barge-in), so
the old turn's terminal event always precedes the new turn's first event.

A session outlives its streams. Every event it sends is numbered with the
session's own `seq` and kept in a bounded `ReplayBuffer`, so a stream that
resumes after a dropped connection continues the sequence and first gets exactly
what its client missed. One stream is attached at a time (an `Attachment`); a
resume takes over from the attached one (`tth_server.sessions` keeps the table
of a replica's sessions). The session saves its state to the store as it
changes, and before each terminal event, so a replica taking it over never ends
a turn twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from adapters.base import AvatarConnections, Message, session_avatars
from adapters.controls import ControlPatch
from adapters.logs import log
from adapters.media import AudioChunk, RenderSettings, VideoFrame
from tth_server import metrics, tracing
from tth_server.auth import ANONYMOUS
from tth_server.errors import AttachReason, AttachRefused, turn_failure
from tth_server.events import (
    AudioOut,
    ErrorCode,
    ErrorOut,
    Event,
    InterruptReason,
    MediaBatch,
    Notice,
    Outgoing,
    Started,
    TextOut,
    TurnCompleted,
    TurnInterrupted,
    VideoOut,
)
from tth_server.outbox import Outbox, ReplayBuffer, gather_media
from tth_server.pipeline import ConversationSlot, Pacer, SegmentPolicy, TurnRequest, TurnRun
from tth_server.store import SessionRecord, StoreError

if TYPE_CHECKING:
    from tth_server.runtime import Runtime


def _opens_turn(event: AudioOut | VideoOut) -> bool:
    """The turn's first audio: it leaves at once, whatever else is about to be ready."""
    return isinstance(event, AudioOut) and event.chunk.timestamp_ms == 0.0


class SessionState(StrEnum):
    IDLE = "idle"
    LLM_RUN = "llm_run"
    TTS_RUN = "tts_run"
    AVATAR_RUN = "avatar_run"
    STREAMING_OUTPUT = "streaming_output"
    CLOSED = "closed"


@dataclass(slots=True)
class _Turn:
    run: TurnRun
    task: asyncio.Task[None]
    reason: InterruptReason | None = None
    played_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Resumed:
    """How a stream that attached to a session already under way picks it up."""

    lossless: bool  # every event after the client's resume_after_seq follows, with its original seq
    last_seq: int  # the session's last seq before this stream attached
    detail: str = ""  # why not lossless


class Attachment:
    """One stream's hold on a session: where it is in the session's sequence, and whether it still holds it."""

    __slots__ = ("active", "batch_media", "cursor", "replaced", "resumed", "started_seq")

    def __init__(self, cursor: int, started_seq: int, resumed: Resumed | None = None) -> None:
        self.cursor = cursor  # the seq of the last event this stream was given
        self.started_seq = started_seq  # 1 on the session's first stream, 0 (outside the sequence) on later ones
        self.resumed = resumed
        self.active = True
        self.replaced = False  # another stream resumed the session and took over
        self.batch_media = False  # the stream takes consecutive media events as one MediaBatch

    def is_active(self) -> bool:
        return self.active


def _is_terminal(event: Event) -> bool:
    return isinstance(event, TurnCompleted | TurnInterrupted) or (isinstance(event, ErrorOut) and bool(event.turn_id))


class _OutboxSink:
    """A turn's output, tagged with its id, into the session's outbox."""

    def __init__(self, outbox: Outbox, turn_id: str) -> None:
        self._outbox = outbox
        self._turn_id = turn_id

    async def text(self, text: str) -> None:
        await self._outbox.put(TextOut(self._turn_id, text))

    async def audio(self, chunk: AudioChunk) -> None:
        await self._outbox.put(AudioOut(self._turn_id, chunk))

    async def video(self, frame: VideoFrame) -> None:
        self._outbox.offer_video(VideoOut(self._turn_id, frame))


class Session:
    def __init__(
        self,
        runtime: Runtime,
        persona_id: str,
        defaults: ControlPatch,
        render: RenderSettings,
        policy: SegmentPolicy,
        lead_ms: float,
        session_id: str | None = None,
        key_id: str = ANONYMOUS,
    ) -> None:
        self.id = session_id or f"s-{uuid.uuid4().hex[:16]}"
        self.key_id = key_id  # the API key that owns it; only that key may attach
        self.runtime = runtime
        self.persona_id = persona_id
        self.defaults = defaults
        self.pending = ControlPatch()
        self.render = render
        self.policy = policy
        self.lead_ms = lead_ms
        self.history: deque[Message] = deque(maxlen=2 * runtime.config.session.history_turns)
        self.outbox = Outbox(runtime.config.session.outbox_capacity, runtime.config.session.max_unread_events)
        self._turn: _Turn | None = None
        self._closed = False
        self.conversation = ConversationSlot()  # used only with a realtime provider
        self.avatars = AvatarConnections()  # used only with a provider avatar (Simli, Anam)
        self.turns = 0
        self.last_request = time.monotonic()
        self.ended: ErrorOut | None = None  # why the server ended the session, when it did
        settings = runtime.config.session
        self.replay = ReplayBuffer(settings.replay_events, settings.replay_bytes)
        self.created = time.monotonic()  # for limits.session_max_s
        self.created_at = time.time()
        self.epoch = 0  # ownership fence in the store
        self.holds_slot = False  # counted against limits.max_sessions here
        self.superseded = False  # another replica took the session over
        self._attachment: Attachment | None = None
        self._running_turn_id = ""  # the turn started and not yet ended, as the store knows it
        # The client's request_id of the text that started each turn whose events may still be sent or replayed:
        # a turn has at least one event, so the replay buffer never holds events of more turns than it holds events.
        self._request_ids: dict[str, str] = {}
        self._max_request_ids = max(1, settings.replay_events)
        self._save_lock = asyncio.Lock()
        self._released = False

    @classmethod
    def restore(cls, runtime: Runtime, state: SessionRecord) -> Session:
        """A session rebuilt from the store, as another replica left it; its sequence is set on attach."""
        session = cls(
            runtime,
            state.persona_id,
            state.defaults,
            state.render,
            state.segments,
            state.lead_ms,
            state.session_id,
            state.key_id,
        )
        session.pending = state.pending
        session.history.extend(state.history)
        session.turns = state.turns
        if state.running_turn_id and state.running_request_id:  # the lost turn's error carries its request's id
            session._request_ids[state.running_turn_id] = state.running_request_id
        session.epoch = state.epoch
        session.created_at = state.created_at
        session.created = time.monotonic() - max(0.0, time.time() - state.created_at)
        return session

    @property
    def state(self) -> SessionState:
        if self._closed:
            return SessionState.CLOSED
        if self._turn is None:
            return SessionState.IDLE
        run = self._turn.run
        if run.metrics.frames:
            return SessionState.STREAMING_OUTPUT
        if run.audio_end_ms:
            return SessionState.AVATAR_RUN
        if run.spoken:
            return SessionState.TTS_RUN
        return SessionState.LLM_RUN

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def attached(self) -> bool:
        return self._attachment is not None

    @property
    def ending(self) -> bool:
        """Closed, or being ended: no stream may attach any more."""
        return self._closed or self._released

    def request_id_of(self, event: Outgoing) -> str:
        """The request_id of the request `event` answers: the refused request's, or that of its turn's text."""
        if isinstance(event, ErrorOut) and not event.turn_id:
            return event.request_id
        return self._request_ids.get(event.turn_id, "") if event.turn_id else ""

    def _remember_request(self, turn_id: str, request_id: str) -> None:
        if not request_id:
            return
        self._request_ids[turn_id] = request_id
        while len(self._request_ids) > self._max_request_ids:
            del self._request_ids[next(iter(self._request_ids))]  # the oldest turn's

    def started_event(self) -> Started:
        persona = self.runtime.personas.get(self.persona_id)
        return Started(self.runtime.sample_rate_hz, self.render, persona.id, persona.name)

    # ---- streams ---------------------------------------------------------------------------------------------------

    def check_resume(self, after: int) -> None:
        """Raise AttachRefused unless every event after seq `after` is still held for replay."""
        replay = self.replay
        if after > replay.last_seq:
            raise AttachRefused(
                AttachReason.OUT_OF_RANGE,
                f"config.resume_after_seq {after} is ahead of the session's last event (seq {replay.last_seq})",
            )
        if not replay.holds_after(after):
            gone = replay.first_seq - 1 - after
            raise AttachRefused(
                AttachReason.OUT_OF_RANGE,
                f"config.resume_after_seq {after} is too old: the {gone} events after it are no longer held "
                f"(a session keeps its last {replay.max_events} events, at most {replay.max_bytes} bytes: "
                "session.replay_events, session.replay_bytes); attach with config.session_id alone to go on "
                "without them, or start a new session",
            )

    def attach(self, after: int | None, resumed: Resumed | None) -> Attachment:
        """Give the session to a new stream, taking it from the attached one, if any.

        On the session's first stream `started` is seq 1; later streams get the
        events after seq `after` (None: only new ones), then new ones.
        """
        old = self._attachment
        if old is not None:
            old.active, old.replaced = False, True
            self.outbox.wake_reader()
        if self.replay.last_seq == 0:
            attachment = Attachment(0, 1)
            attachment.cursor = self.replay.append(self.started_event())
        else:
            attachment = Attachment(self.replay.last_seq if after is None else after, 0, resumed)
        self._attachment = attachment
        self.last_request = time.monotonic()  # attaching is activity: the idle limit starts over
        if not self.ending:  # a provider avatar with `connect: session_start` opens its connection now
            self.runtime.pipeline.stages.avatar.session_started(self.avatars)
        return attachment

    def detach(self, attachment: Attachment) -> None:
        attachment.active = False
        if self._attachment is attachment:
            self._attachment = None

    async def next_event(self, attachment: Attachment) -> tuple[int, Outgoing] | None:
        """The stream's next event and its seq: held ones it missed first, then new ones.

        None once the session has closed and sent everything, or the stream lost
        the session to another. Each new event is numbered and kept for replay as
        it is handed out, so a stream that drops right after loses nothing. On a
        stream that batches media, a media event comes with the media events of
        its turn that are ready right behind it, as one `MediaBatch` numbered
        with the seq of its last; nothing waits for a batch to fill.
        """
        if not attachment.active:
            return None
        if attachment.cursor < self.replay.last_seq:
            if not self.replay.holds_after(attachment.cursor):
                return None  # the session ended under this stream and let go of its events
            attachment.cursor += 1
            event: Event = self.replay.after(attachment.cursor - 1)
        else:
            queued = await self.outbox.get(attachment.is_active)
            if queued is None:
                return None
            event = queued
            attachment.cursor = self.replay.append(event)
        if attachment.batch_media and isinstance(event, AudioOut | VideoOut):
            if attachment.cursor == self.replay.last_seq and not _opens_turn(event):
                # The frames for audio just released are drawn in this same loop iteration: let them join it.
                await asyncio.sleep(0)
            batch = self._batch(attachment, event)  # moves the cursor to the batch's last event
            return attachment.cursor, batch
        return attachment.cursor, event

    def _batch(self, attachment: Attachment, first: AudioOut | VideoOut) -> MediaBatch:
        """`first` and the media of its turn ready right behind it (held for replay, or queued)."""

        def take() -> AudioOut | VideoOut | None:
            if attachment.cursor < self.replay.last_seq:
                held = self.replay.after(attachment.cursor) if self.replay.holds_after(attachment.cursor) else None
                if not isinstance(held, AudioOut | VideoOut) or held.turn_id != first.turn_id:
                    return None
                attachment.cursor += 1
                return held
            queued = self.outbox.get_media_nowait(first.turn_id)
            if queued is not None:
                attachment.cursor = self.replay.append(queued)
            return queued

        return gather_media(first, take)

    # ---- the store -------------------------------------------------------------------------------------------------

    def snapshot(self, *, sealed: bool = False, running: str | None = None) -> SessionRecord:
        running_turn_id = self._running_turn_id if running is None else running
        return SessionRecord(
            session_id=self.id,
            key_id=self.key_id,
            persona_id=self.persona_id,
            defaults=self.defaults,
            pending=self.pending,
            history=tuple(self.history),
            render=self.render,
            segments=self.policy,
            lead_ms=self.lead_ms,
            turns=self.turns,
            last_seq=self.replay.last_seq,
            running_turn_id=running_turn_id,
            running_request_id=self._request_ids.get(running_turn_id, "") if running_turn_id else "",
            sealed=sealed,
            created_at=self.created_at,
            epoch=self.epoch,
        )

    async def persist(self, *, sealed: bool = False, running: str | None = None) -> None:
        """Save the state; a store failure is logged, and losing the session to another replica ends it here."""
        if self._closed and not sealed:
            return
        async with self._save_lock:  # saves land in the order their snapshots were taken
            try:
                saved = await self.runtime.store.save(self.snapshot(sealed=sealed, running=running))
            except StoreError as exc:
                log.warning("session state not saved", error=str(exc))
                return
        if not saved and not self._closed:
            self.runtime.sessions.supersede(self)

    async def seal(self) -> None:
        """Save the state a last time as this replica lets go of the closed session (it is shutting down).

        Events still queued will never be sent from here: then the resume is not
        lossless, and a turn whose terminal event is among them counts as lost.
        """
        unsent, lost = False, ""
        while (event := await self.outbox.get()) is not None:
            unsent = True
            if _is_terminal(event):
                lost = event.turn_id
        await self.persist(sealed=not unsent, running=lost)

    async def forget(self) -> None:
        try:
            await self.runtime.store.delete(self.id, self.epoch)
        except StoreError as exc:
            log.warning("session state not deleted; it expires with store.ttl_s", error=str(exc))

    # ---- turns -----------------------------------------------------------------------------------------------------

    async def update_controls(self, patch: ControlPatch) -> None:
        """Change the standing controls from the next turn on."""
        if patch.persona_id is not None:
            self.runtime.personas.get(patch.persona_id, "control.control.character.persona_id")
        self.pending = patch.over(self.pending)
        await self.persist()

    async def say(self, text: str, patch: ControlPatch, request_id: str = "") -> str:
        """Start a turn for `text`, interrupting a running one first; returns the turn id ("" if the session ended).

        `request_id` (the client's id for the text, may be "") goes on every event of the turn.
        """
        layers = [("turn", patch), ("pending", self.pending), ("session", self.defaults)]
        persona_id = next((p.persona_id for _, p in layers if p.persona_id is not None), self.persona_id)
        persona = self.runtime.personas.get(persona_id, "text.control.character.persona_id")
        await self.interrupt(InterruptReason.BARGE_IN)
        turn_id = f"t-{uuid.uuid4().hex[:12]}"
        self._running_turn_id = turn_id
        self._remember_request(turn_id, request_id)
        self.turns += 1
        try:
            await self.persist()  # a replica that takes over knows this turn never ended
        except asyncio.CancelledError:
            self._running_turn_id = ""
            self.turns -= 1
            raise
        if self._closed or self.superseded:  # ended, or lost to another replica, while saving: no turn here
            self._running_turn_id = ""
            return ""
        request = TurnRequest(
            turn_id,
            text,
            tuple(self.history),
            layers,
            persona,
            persona.render(self.render),
            self.policy,
            self.conversation,
        )
        run = TurnRun(request, Pacer(self.lead_ms))
        task = asyncio.get_running_loop().create_task(self._run(run), name=f"turn {turn_id}")
        self._turn = _Turn(run, task)
        return turn_id

    async def interrupt(self, reason: InterruptReason, played_ms: float | None = None) -> bool:
        """Stop the running turn; True when there was one. Returns after its terminal event is queued."""
        turn = self._turn
        if turn is None or turn.task.done():
            return False
        if turn.reason is None:  # cancelled once only: a second cancel could cut its terminal event off
            turn.reason, turn.played_ms = reason, played_ms
            turn.run.played_ms = played_ms  # a realtime provider truncates its reply at what was heard
            turn.task.cancel()
        await asyncio.wait([turn.task])
        return True

    async def drain(self) -> None:
        """Wait for the running turn to end by itself."""
        if self._turn is not None:
            await asyncio.wait([self._turn.task])

    def notify(self, notice: Notice) -> None:
        self.outbox.put_control(notice)

    async def end(self, code: ErrorCode, message: str) -> None:
        """End the session from the server's side: the running turn is interrupted, the call ends with `code`."""
        if self.ended is None:
            self.ended = ErrorOut(code, message)
        await self.close()

    async def close(self) -> None:
        """End the session: interrupt the running turn and close the outbox."""
        await self.interrupt(InterruptReason.SHUTDOWN)
        self._closed = True
        self.outbox.close()
        await self.conversation.aclose()
        await self.avatars.aclose()

    async def _run(self, run: TurnRun) -> None:
        turn_id = run.request.turn_id
        structlog.contextvars.bind_contextvars(session_id=self.id, turn_id=turn_id)
        if request_id := self._request_ids.get(turn_id):
            structlog.contextvars.bind_contextvars(request_id=request_id)  # on every log line of the turn
        session_avatars.set(self.avatars)  # this task's context only: the turn's provider avatar is the session's
        sink = _OutboxSink(self.outbox, turn_id)
        terminal: Event
        try:
            try:
                await tracing.turn(run, self.id, self.runtime.pipeline.run(run, sink))
            except asyncio.CancelledError:
                turn = self._turn
                if turn is None or turn.reason is None:
                    raise
                terminal = self._interrupted(run, turn.reason, turn.played_ms)
            except Exception as exc:  # a stage failed: the turn fails, the session goes on
                terminal = self._failed(run, exc)
            else:
                terminal = self._completed(run)
            self._running_turn_id = ""
            try:
                await self.persist()  # before the terminal event: a replica taking over must not end the turn again
            finally:
                self.outbox.put_control(terminal)
        finally:
            if self._turn is not None and self._turn.run is run:
                self._turn = None

    def _completed(self, run: TurnRun) -> Event:
        metrics = run.finish_metrics(self.outbox.dropped.pop(run.request.turn_id, 0))
        self._remember(run.request.user_text, run.text)
        self._summary(run, "completed")
        return TurnCompleted(run.request.turn_id, metrics, run.report, run.text)

    def _interrupted(self, run: TurnRun, reason: InterruptReason, played_ms: float | None) -> Event:
        turn_id = run.request.turn_id
        unsent = self.outbox.purge(turn_id)
        heard = run.heard_ms(played_ms)
        spoken = run.spoken_text(heard)
        metrics = run.finish_metrics(self.outbox.dropped.pop(turn_id, 0), unsent)
        self._remember(run.request.user_text, spoken)
        self._summary(run, "interrupted", reason=reason.value, played_ms=round(heard, 1))
        return TurnInterrupted(turn_id, spoken, heard, reason, metrics)

    def _failed(self, run: TurnRun, exc: BaseException) -> Event:
        event: ErrorOut = turn_failure(exc, run.request.turn_id)
        self.outbox.dropped.pop(run.request.turn_id, None)
        self._summary(run, "failed", error=event.message)
        if event.code is ErrorCode.INTERNAL:
            log.error("turn crashed", exc_info=exc)
        return event

    def _remember(self, user_text: str, reply: str) -> None:
        # Only exchanges with something heard are kept: providers want user and assistant to alternate.
        if reply:
            self.history.append(Message("user", user_text))
            self.history.append(Message("assistant", reply))

    def _summary(self, run: TurnRun, outcome: str, **extra: object) -> None:
        m = run.metrics
        metrics.observe_turn(outcome, m)
        log.info(
            "turn",
            outcome=outcome,
            ttft_ms=round(m.time_to_first_text_ms, 1),
            ttfa_ms=round(m.time_to_first_audio_ms, 1),
            ttfv_ms=round(m.time_to_first_video_ms, 1),
            audio_ms=round(run.audio_end_ms, 1),
            frames=m.frames,
            drift_mean_ms=round(m.drift_mean_ms, 2),
            total_ms=round(run.since_start_ms(), 1),
            **extra,
        )
