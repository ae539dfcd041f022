"""A conversation session: its controls, history, outbox and the one turn it runs at a time.

The session's state is derived from its running turn, following the seeds'
machine: IDLE -> LLM_RUN -> TTS_RUN -> AVATAR_RUN -> STREAMING_OUTPUT, and back
to IDLE through exactly one terminal event (turn_complete, turn_interrupted or
a turn error). New text while a turn runs interrupts it first (barge-in), so
the old turn's terminal event always precedes the new turn's first event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from adapters.base import Message
from tth_server.controls import ControlPatch
from tth_server.errors import turn_failure
from tth_server.events import (
    AudioOut,
    ErrorCode,
    ErrorOut,
    InterruptReason,
    Started,
    TextOut,
    TurnCompleted,
    TurnInterrupted,
    VideoOut,
)
from tth_server.logs import log
from tth_server.media import AudioChunk, RenderSettings, VideoFrame
from tth_server.outbox import Outbox
from tth_server.pipeline import Pacer, SegmentPolicy, TurnRequest, TurnRun

if TYPE_CHECKING:
    from tth_server.runtime import Runtime


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
    ) -> None:
        self.id = session_id or f"s-{uuid.uuid4().hex[:16]}"
        self.runtime = runtime
        self.persona_id = persona_id
        self.defaults = defaults
        self.pending = ControlPatch()
        self.render = render
        self.policy = policy
        self.lead_ms = lead_ms
        self.history: deque[Message] = deque(maxlen=2 * runtime.config.session.history_turns)
        self.outbox = Outbox(runtime.config.session.outbox_capacity)
        self._turn: _Turn | None = None
        self._closed = False
        self.turns = 0

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

    def started_event(self) -> Started:
        persona = self.runtime.personas.get(self.persona_id)
        return Started(self.runtime.sample_rate_hz, self.render, persona.id, persona.name)

    def update_controls(self, patch: ControlPatch) -> None:
        """Change the standing controls from the next turn on."""
        if patch.persona_id is not None:
            self.runtime.personas.get(patch.persona_id, "control.control.character.persona_id")
        self.pending = patch.over(self.pending)

    async def say(self, text: str, patch: ControlPatch) -> str:
        """Start a turn for `text`, interrupting a running one first; returns the turn id."""
        layers = [("turn", patch), ("pending", self.pending), ("session", self.defaults)]
        persona_id = next((p.persona_id for _, p in layers if p.persona_id is not None), self.persona_id)
        persona = self.runtime.personas.get(persona_id, "text.control.character.persona_id")
        await self.interrupt(InterruptReason.BARGE_IN)
        turn_id = f"t-{uuid.uuid4().hex[:12]}"
        request = TurnRequest(turn_id, text, tuple(self.history), layers, persona, self.render, self.policy)
        run = TurnRun(request, Pacer(self.lead_ms))
        task = asyncio.get_running_loop().create_task(self._run(run), name=f"turn {turn_id}")
        self._turn = _Turn(run, task)
        self.turns += 1
        return turn_id

    async def interrupt(self, reason: InterruptReason, played_ms: float | None = None) -> bool:
        """Stop the running turn; True when there was one. Returns after its terminal event is queued."""
        turn = self._turn
        if turn is None or turn.task.done():
            return False
        turn.reason, turn.played_ms = reason, played_ms
        turn.task.cancel()
        await asyncio.wait([turn.task])
        return True

    async def drain(self) -> None:
        """Wait for the running turn to end by itself."""
        if self._turn is not None:
            await asyncio.wait([self._turn.task])

    async def close(self) -> None:
        """End the session: interrupt the running turn and close the outbox."""
        await self.interrupt(InterruptReason.SHUTDOWN)
        self._closed = True
        self.outbox.close()

    async def _run(self, run: TurnRun) -> None:
        turn_id = run.request.turn_id
        structlog.contextvars.bind_contextvars(session_id=self.id, turn_id=turn_id)
        sink = _OutboxSink(self.outbox, turn_id)
        try:
            await self.runtime.pipeline.run(run, sink)
        except asyncio.CancelledError:
            turn = self._turn
            if turn is None or turn.reason is None:
                raise
            self._interrupted(run, turn.reason, turn.played_ms)
        except Exception as exc:  # a stage failed: the turn fails, the session goes on
            self._failed(run, exc)
        else:
            self._completed(run)
        finally:
            if self._turn is not None and self._turn.run is run:
                self._turn = None

    def _completed(self, run: TurnRun) -> None:
        metrics = run.finish_metrics(self.outbox.dropped.pop(run.request.turn_id, 0))
        self.outbox.put_control(TurnCompleted(run.request.turn_id, metrics, run.report, run.text))
        self._remember(run.request.user_text, run.text)
        self._summary(run, "completed")

    def _interrupted(self, run: TurnRun, reason: InterruptReason, played_ms: float | None) -> None:
        turn_id = run.request.turn_id
        unsent = self.outbox.purge(turn_id)
        heard = run.heard_ms(played_ms)
        spoken = run.spoken_text(heard)
        metrics = run.finish_metrics(self.outbox.dropped.pop(turn_id, 0), unsent)
        self.outbox.put_control(TurnInterrupted(turn_id, spoken, heard, reason, metrics))
        self._remember(run.request.user_text, spoken)
        self._summary(run, "interrupted", reason=reason.value, played_ms=round(heard, 1))

    def _failed(self, run: TurnRun, exc: BaseException) -> None:
        event: ErrorOut = turn_failure(exc, run.request.turn_id)
        self.outbox.dropped.pop(run.request.turn_id, None)
        self.outbox.put_control(event)
        self._summary(run, "failed", error=event.message)
        if event.code is ErrorCode.INTERNAL:
            log.error("turn crashed", exc_info=exc)

    def _remember(self, user_text: str, reply: str) -> None:
        # Only exchanges with something heard are kept: providers want user and assistant to alternate.
        if reply:
            self.history.append(Message("user", user_text))
            self.history.append(Message("assistant", reply))

    def _summary(self, run: TurnRun, outcome: str, **extra: object) -> None:
        m = run.metrics
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
