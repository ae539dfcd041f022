"""A conversation session: its controls, history and the one turn it runs at a time, as a state machine.

The session's `state` is set at each transition of its turn and checked
against `TRANSITIONS` (an illegal one raises): IDLE -> LLM_RUN when the turn
starts, TTS_RUN when the reply's first text arrives (it is being spoken),
AVATAR_RUN when its first audio is out (the face is being drawn),
STREAMING_OUTPUT when its first frame is out; then TURN_COMPLETE, INTERRUPTED
or TURN_FAILED while its one terminal event is made and saved, and back to
IDLE. The state only moves forward: output that comes in another order (a
realtime provider's audio before its transcript) skips the states between.
New text while a turn runs interrupts it first (barge-in), so the old turn's
terminal event always precedes the new turn's first event. Closing interrupts
the running turn first, so CLOSED comes from IDLE; it is final.

A session outlives its streams: its events, numbered and kept for replay, are
an `EventStream` (`tth_server.stream`), and its record in the store a
`SessionSaver` (`tth_server.persistence`); `tth_server.sessions` keeps the table
of a replica's sessions. What a session works with besides its own state comes
in explicitly, as `SessionServices`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from adapters.base import AvatarConnections, Message, session_avatars
from adapters.controls import ControlPatch
from adapters.logs import log
from adapters.media import AudioChunk, RenderSettings, VideoFrame
from tth_server import metrics, tracing
from tth_server.auth import ANONYMOUS
from tth_server.config import SessionSettings
from tth_server.errors import turn_failure
from tth_server.events import (
    AudioOut,
    ErrorCode,
    ErrorOut,
    Event,
    InterruptReason,
    Notice,
    Outgoing,
    Started,
    TextOut,
    TurnCompleted,
    TurnInterrupted,
    VideoOut,
)
from tth_server.outbox import Outbox, ReplayBuffer
from tth_server.persistence import SessionSaver, last_words
from tth_server.personas import PersonaCatalog
from tth_server.pipeline import ConversationSlot, Pacer, SegmentPolicy, TurnPipeline, TurnRequest, TurnRun
from tth_server.store import SessionRecord, SessionStore
from tth_server.stream import Attachment, EventStream, Resumed


class SessionState(StrEnum):
    IDLE = "idle"
    LLM_RUN = "llm_run"
    TTS_RUN = "tts_run"
    AVATAR_RUN = "avatar_run"
    STREAMING_OUTPUT = "streaming_output"
    TURN_COMPLETE = "turn_complete"
    INTERRUPTED = "interrupted"
    TURN_FAILED = "turn_failed"
    CLOSED = "closed"


_RUNNING = (SessionState.LLM_RUN, SessionState.TTS_RUN, SessionState.AVATAR_RUN, SessionState.STREAMING_OUTPUT)
_ENDS = frozenset({SessionState.TURN_COMPLETE, SessionState.INTERRUPTED, SessionState.TURN_FAILED})

TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.IDLE: frozenset({SessionState.LLM_RUN, SessionState.CLOSED}),
    # A running turn moves on (never back), ends with its terminal event, or is cancelled from outside the
    # session (its task, not an interrupt: the loop is going away) and goes back to IDLE with none.
    **{state: frozenset({*_RUNNING[i + 1 :], *_ENDS, SessionState.IDLE}) for i, state in enumerate(_RUNNING)},
    **{state: frozenset({SessionState.IDLE}) for state in _ENDS},
    SessionState.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A session asked to move between two states `TRANSITIONS` does not join."""


@dataclass(frozen=True, slots=True)
class SessionServices:
    """What a session works with besides its own state."""

    settings: SessionSettings  # its history length, outbox and replay sizes
    personas: PersonaCatalog  # checks persona ids and gives each turn its persona
    pipeline: TurnPipeline  # runs its turns; its stages give the sample rate and the provider avatar
    store: SessionStore  # keeps its record for a resume on another replica


@dataclass(slots=True)
class _Turn:
    run: TurnRun
    task: asyncio.Task[None]
    reason: InterruptReason | None = None
    played_ms: float | None = None


class _OutboxSink:
    """A turn's output, tagged with its id, into the session's outbox; its first text, audio and frame move
    the session's state on."""

    def __init__(self, outbox: Outbox, turn_id: str, progress: Callable[[SessionState], None]) -> None:
        self._outbox = outbox
        self._turn_id = turn_id
        self._progress = progress
        self._texted = self._voiced = self._drawn = False

    async def text(self, text: str) -> None:
        if not self._texted:
            self._texted = True
            self._progress(SessionState.TTS_RUN)
        await self._outbox.put(TextOut(self._turn_id, text))

    async def audio(self, chunk: AudioChunk) -> None:
        if not self._voiced:
            self._voiced = True
            self._progress(SessionState.AVATAR_RUN)
        await self._outbox.put(AudioOut(self._turn_id, chunk))

    async def video(self, frame: VideoFrame) -> None:
        if not self._drawn:
            self._drawn = True
            self._progress(SessionState.STREAMING_OUTPUT)
        self._outbox.offer_video(VideoOut(self._turn_id, frame))


class Session:
    def __init__(
        self,
        services: SessionServices,
        persona_id: str,
        defaults: ControlPatch,
        render: RenderSettings,
        policy: SegmentPolicy,
        lead_ms: float,
        session_id: str | None = None,
        key_id: str = ANONYMOUS,
        *,
        on_superseded: Callable[[Session], None],
    ) -> None:
        """`on_superseded` is told when the store says another replica has the session now."""
        self.id = session_id or f"s-{uuid.uuid4().hex[:16]}"
        self.key_id = key_id  # the API key that owns it; only that key may attach
        self.services = services
        self.persona_id = persona_id
        self.defaults = defaults
        self.pending = ControlPatch()
        self.render = render
        self.policy = policy
        self.lead_ms = lead_ms
        settings = services.settings
        self.history: deque[Message] = deque(maxlen=2 * settings.history_turns)
        self.stream = EventStream(
            Outbox(settings.outbox_capacity, settings.max_unread_events),
            ReplayBuffer(settings.replay_events, settings.replay_bytes),
        )
        self._turn: _Turn | None = None
        self._state = SessionState.IDLE
        self.conversation = ConversationSlot()  # used only with a realtime provider
        self.avatars = AvatarConnections()  # used only with a provider avatar (Simli, Anam)
        self.turns = 0
        self.last_request = time.monotonic()
        self.ended: ErrorOut | None = None  # why the server ended the session, when it did
        self.created = time.monotonic()  # for limits.session_max_s
        self.created_at = time.time()
        self.epoch = 0  # ownership fence in the store
        self.holds_slot = False  # counted against limits.max_sessions here
        self.superseded = False  # another replica took the session over
        self.released = False  # the session table is ending it: no stream may attach any more
        self._running_turn_id = ""  # the turn started and not yet ended, as the store knows it
        # The client's request_id of the text that started each turn whose events may still be sent or replayed:
        # a turn has at least one event, so the replay buffer never holds events of more turns than it holds events.
        self._request_ids: dict[str, str] = {}
        self._max_request_ids = max(1, settings.replay_events)
        self._on_superseded = on_superseded
        self._saver = SessionSaver(services.store, self._lost)

    @classmethod
    def restore(
        cls, services: SessionServices, state: SessionRecord, *, on_superseded: Callable[[Session], None]
    ) -> Session:
        """A session rebuilt from the store, as another replica left it; its sequence is set on attach."""
        session = cls(
            services,
            state.persona_id,
            state.defaults,
            state.render,
            state.segments,
            state.lead_ms,
            state.session_id,
            state.key_id,
            on_superseded=on_superseded,
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

    # ---- state -----------------------------------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    def _to(self, state: SessionState) -> None:
        if state not in TRANSITIONS[self._state]:
            raise IllegalTransition(f"session {self.id}: {self._state.value} -> {state.value}")
        self._state = state

    def _progress(self, run: TurnRun, state: SessionState) -> None:
        """`run` reached `state`: the session moves on to it, unless the turn is already past it or over."""
        turn = self._turn
        if turn is not None and turn.run is run and self._state in _RUNNING and state in TRANSITIONS[self._state]:
            self._to(state)

    @property
    def closed(self) -> bool:
        return self._state is SessionState.CLOSED

    @property
    def outbox(self) -> Outbox:
        return self.stream.outbox

    @property
    def replay(self) -> ReplayBuffer:
        return self.stream.replay

    @property
    def attached(self) -> bool:
        return self.stream.attached

    @property
    def ending(self) -> bool:
        """Closed, or being ended: no stream may attach any more."""
        return self.closed or self.released

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
        persona = self.services.personas.get(self.persona_id)
        return Started(self.services.pipeline.stages.sample_rate_hz, self.render, persona.id, persona.name)

    # ---- streams ---------------------------------------------------------------------------------------------------

    def attach(self, after: int | None, resumed: Resumed | None) -> Attachment:
        """Give the session to a new stream, taking it from the attached one, if any (see `EventStream.attach`)."""
        attachment = self.stream.attach(after, resumed, self.started_event)
        self.last_request = time.monotonic()  # attaching is activity: the idle limit starts over
        if not self.ending:  # a provider avatar with `connect: session_start` opens its connection now
            self.services.pipeline.stages.avatar.session_started(self.avatars)
        return attachment

    def detach(self, attachment: Attachment) -> None:
        self.stream.detach(attachment)

    async def next_event(self, attachment: Attachment) -> tuple[int, Outgoing] | None:
        """The stream's next event and its seq (see `EventStream.next_event`)."""
        return await self.stream.next_event(attachment)

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
        if self.closed and not sealed:
            return
        await self._saver.save(lambda: self.snapshot(sealed=sealed, running=running))

    def _lost(self) -> None:
        if not self.closed:
            self._on_superseded(self)

    async def seal(self) -> None:
        """Save the state a last time as this replica lets go of the closed session (see `last_words`)."""
        sealed, lost = await last_words(self.outbox)
        await self.persist(sealed=sealed, running=lost)

    async def forget(self) -> None:
        await self._saver.forget(self.id, self.epoch)

    # ---- turns -----------------------------------------------------------------------------------------------------

    async def update_controls(self, patch: ControlPatch) -> None:
        """Change the standing controls from the next turn on."""
        if patch.persona_id is not None:
            self.services.personas.get(patch.persona_id, "control.control.character.persona_id")
        self.pending = patch.over(self.pending)
        await self.persist()

    async def say(self, text: str, patch: ControlPatch, request_id: str = "") -> str:
        """Start a turn for `text`, interrupting a running one first; returns the turn id ("" if the session ended).

        `request_id` (the client's id for the text, may be "") goes on every event of the turn.
        """
        layers = [("turn", patch), ("pending", self.pending), ("session", self.defaults)]
        persona_id = next((p.persona_id for _, p in layers if p.persona_id is not None), self.persona_id)
        persona = self.services.personas.get(persona_id, "text.control.character.persona_id")
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
        if self.closed or self.superseded:  # ended, or lost to another replica, while saving: no turn here
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
        if not self.closed:
            self._to(SessionState.CLOSED)
        self.outbox.close()
        await self.conversation.aclose()
        await self.avatars.aclose()

    async def _run(self, run: TurnRun) -> None:
        turn_id = run.request.turn_id
        structlog.contextvars.bind_contextvars(session_id=self.id, turn_id=turn_id)
        if request_id := self._request_ids.get(turn_id):
            structlog.contextvars.bind_contextvars(request_id=request_id)  # on every log line of the turn
        session_avatars.set(self.avatars)  # this task's context only: the turn's provider avatar is the session's
        self._to(SessionState.LLM_RUN)
        sink = _OutboxSink(self.outbox, turn_id, lambda state: self._progress(run, state))
        terminal: Event
        try:
            try:
                await tracing.turn(run, self.id, self.services.pipeline.run(run, sink))
            except asyncio.CancelledError:
                turn = self._turn
                if turn is None or turn.reason is None:
                    raise
                self._to(SessionState.INTERRUPTED)
                terminal = self._interrupted(run, turn.reason, turn.played_ms)
            except Exception as exc:  # a stage failed: the turn fails, the session goes on
                self._to(SessionState.TURN_FAILED)
                terminal = self._failed(run, exc)
            else:
                self._to(SessionState.TURN_COMPLETE)
                terminal = self._completed(run)
            self._running_turn_id = ""
            try:
                await self.persist()  # before the terminal event: a replica taking over must not end the turn again
            finally:
                self.outbox.put_control(terminal)
        finally:
            if self._turn is not None and self._turn.run is run:
                self._turn = None
                self._to(SessionState.IDLE)

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
