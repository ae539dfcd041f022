"""A turn: iterate its events as they arrive, or await the whole result.

A `Turn` keeps every event it receives until it is dropped, so iterating and
awaiting can be mixed, repeated and cancelled freely: cancelling a task that
iterates or awaits a turn stops only that task; the turn keeps receiving, and a
new iteration starts again from the first event. Memory is the turn's media
(about 0.6 MB per second of 256x256 video with audio).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tth_client._events import (
    AudioEvent,
    ErrorEvent,
    Event,
    TextDeltaEvent,
    TurnCompleteEvent,
    TurnInterruptedEvent,
    VideoEvent,
    is_terminal,
)
from tth_client._exceptions import TTHError, TurnFailedError, TurnResourceExhaustedError
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import media_pb2 as mpb

__all__ = ["Outcome", "Turn", "TurnResult"]


class Outcome(StrEnum):
    """How a turn ended: by its one terminal event."""

    COMPLETED = "completed"
    """`turn_complete`: the reply ran to its end."""
    INTERRUPTED = "interrupted"
    """`turn_interrupted`: stopped by `interrupt()`, by new text (barge-in) or by server shutdown."""
    FAILED = "failed"
    """An `error` ended the turn, or the server turned its text away for now (a rate limit, a shutdown)."""


@dataclass(frozen=True, slots=True)
class TurnResult:
    """Everything one turn produced, in one value."""

    turn_id: str
    """The server's id for the turn; "" when the text was rejected before a turn started."""
    outcome: Outcome
    text: str
    """The reply text received (for a completed turn, the server's whole text)."""
    spoken_text: str
    """The text the server counts as heard: all of it when completed, up to the cut when interrupted."""
    pcm: bytes
    """The speech, PCM16 mono little-endian, from media time 0, in arrival order."""
    sample_rate_hz: int
    frames: list[mpb.VideoFrame]
    """The video frames received, in order; each has its `timestamp_ms` on the turn's media clock."""
    metrics: pb.TurnMetrics = field(default_factory=pb.TurnMetrics)
    """The server's metrics (empty for a failed turn)."""
    control_report: pb.ControlReport = field(default_factory=pb.ControlReport)
    """What the control plane applied and downgraded (only a completed turn has one)."""
    interruption: pb.TurnInterrupted | None = None
    """The `turn_interrupted` event, when the turn was interrupted."""
    error: pb.Error | None = None
    """The `error` event, when the turn failed."""

    @property
    def audio_ms(self) -> float:
        """Milliseconds of speech in `pcm`."""
        return len(self.pcm) / 2 / self.sample_rate_hz * 1000 if self.sample_rate_hz else 0.0

    def raise_for_outcome(self) -> TurnResult:
        """Return self, or raise `TurnFailedError` when the turn failed."""
        if self.outcome is Outcome.FAILED and self.error is not None:
            code = pb.ErrorCode.Name(self.error.code).removeprefix("ERROR_CODE_")
            hint = "wait and send the text again" if self.error.retryable else ""
            limited = self.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
            raise (TurnResourceExhaustedError if limited else TurnFailedError)(
                self.error.message,
                code=code,
                turn_id=self.turn_id,
                retryable=self.error.retryable,
                retry_after_ms=self.error.retry_after_ms,
                hint=hint,
            )
        return self


class Turn:
    """One turn's events, in order, ending with exactly one terminal event.

    `async for event in turn` yields the turn's events until (and including) its
    terminal event; `await turn` (or `await turn.result()`) waits for the end and
    returns a `TurnResult`. A failed turn is a result with `outcome` FAILED, not an
    exception; a request the server refused as invalid (an unknown persona, a text
    over its limit) raises `InvalidArgumentError` / `InvalidControlError`, and a broken
    stream or a closed session raises the SDK error that ended it (`ConnectError`,
    `StatusError`, `ClosedError`), after the events received so far.
    """

    def __init__(
        self,
        text: str,
        *,
        sample_rate_hz: int = 0,
        interrupt: Callable[[Turn, float | None], Awaitable[None]] | None = None,
        request_id: str = "",
    ) -> None:
        self.text = text
        """The user text that started the turn."""
        self.request_id = request_id
        """The `request_id` the text was sent with; the server echoes it on every event of the turn."""
        self.turn_id = ""
        """The server's id for the turn, known from its first event on."""
        self._sample_rate_hz = sample_rate_hz
        self._interrupt = interrupt
        self._events: list[Event] = []
        self._done = False
        self._error: TTHError | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<Turn {self.turn_id or '(pending)'} {state} events={len(self._events)}>"

    @property
    def done(self) -> bool:
        """True once the terminal event arrived (or the stream ended without one)."""
        return self._done

    @property
    def events(self) -> list[Event]:
        """A copy of the events received so far."""
        return list(self._events)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    def __await__(self) -> Generator[Any, None, TurnResult]:
        return self.result().__await__()

    async def result(self) -> TurnResult:
        """Wait for the terminal event and return the whole turn. Safe to cancel; nothing is lost."""
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        return self._build()

    async def interrupt(self, played_ms: float | None = None) -> None:
        """Stop this turn if it is still running; a no-op once it ended or a newer turn was started.

        Returns once the request is sent. The turn then ends with `turn_interrupted`;
        media already in flight may still arrive before it, none after it.
        `played_ms` is how much of the audio was really played, so the session's
        history keeps only what was heard; None lets the server estimate it.
        """
        if not self._done and self._interrupt is not None:
            await self._interrupt(self, played_ms)

    # ---- fed by the session or call that owns the turn ------------------------------------------------------

    def _push(self, event: Event, *, terminal: bool | None = None) -> None:
        if self._done:
            return
        if not self.turn_id:
            self.turn_id = event.turn_id
        self._events.append(event)
        if is_terminal(event) if terminal is None else terminal:
            self._done = True
        self._wake()

    def _fail(self, error: TTHError) -> None:
        if self._done:
            return
        self._error = error
        self._done = True
        self._wake()

    async def _iterate(self) -> AsyncIterator[Event]:
        index = 0
        while True:
            while index < len(self._events):
                yield self._events[index]
                index += 1
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            await self._wait()

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _build(self) -> TurnResult:
        text: list[str] = []
        pcm: list[bytes] = []
        frames: list[mpb.VideoFrame] = []
        rate = self._sample_rate_hz
        for event in self._events:
            if isinstance(event, AudioEvent):
                pcm.append(event.audio.data)
                rate = event.audio.sample_rate_hz or rate
            elif isinstance(event, VideoEvent):
                frames.append(event.video)
            elif isinstance(event, TextDeltaEvent):
                text.append(event.text_delta.text)
        common: dict[str, Any] = {
            "turn_id": self.turn_id,
            "pcm": b"".join(pcm),
            "sample_rate_hz": rate,
            "frames": frames,
        }
        last = self._events[-1]
        if isinstance(last, TurnCompleteEvent):
            done = last.turn_complete
            return TurnResult(
                outcome=Outcome.COMPLETED,
                text=done.text or "".join(text),
                spoken_text=done.text or "".join(text),
                metrics=done.metrics,
                control_report=done.control_report,
                **common,
            )
        if isinstance(last, TurnInterruptedEvent):
            cut = last.turn_interrupted
            return TurnResult(
                outcome=Outcome.INTERRUPTED,
                text="".join(text),
                spoken_text=cut.spoken_text,
                metrics=cut.metrics,
                interruption=cut,
                **common,
            )
        assert isinstance(last, ErrorEvent)
        return TurnResult(outcome=Outcome.FAILED, text="".join(text), spoken_text="", error=last.error, **common)
