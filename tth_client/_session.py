"""`Session`: one `Converse` stream, turn after turn, with reading and writing independent.

A background reader task takes every response off the stream as it arrives and
hands it to its `Turn` and to the session's own event stream; a writer task
sends requests in the order they were made. So `interrupt()` and
`update_controls()` go out at once even while a turn's media is pouring in,
and a slow consumer of one turn never stalls the stream's reading.

How a `say()` finds its turn: every text, control update and interrupt goes out
with a `request_id` (the caller's, or one the SDK makes), and the server echoes
the text's id on every event of the turn it starts, so the first event of an
unknown turn id names the `say()` it answers. A text the server refuses (an
unknown persona, a too long text, a turn rate limit, a server shutting down)
gets no turn: it comes back as a session-level error carrying the text's id,
which ends that `say()`'s turn: an invalid argument makes awaiting it raise
`InvalidArgumentError` (as the SDK's own checks do at `say()`), anything else
makes it FAILED. A refused control update or interrupt carries its own id, so it
never ends a turn; it stays a session event. Against a server that echoes no
ids (one older than `request_id`), turns are paired with texts in order, as the
server handles requests in order.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import secrets
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Unpack

import grpc

from tth_client._channel import Connection
from tth_client._controls import Controls, check_request_id, check_text, turn_control
from tth_client._events import (
    ErrorEvent,
    Event,
    StartedEvent,
    event_from_response,
    events_from_response,
    is_terminal,
)
from tth_client._exceptions import (
    ClosedError,
    ConnectError,
    InvalidArgumentError,
    InvalidControlError,
    StatusError,
    TimeoutError,
    TTHError,
    from_rpc_error,
    invalid_argument,
    status_error,
)
from tth_client._turn import Turn
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

__all__ = ["Session"]

_CLOSE = None  # the writer's cue to half-close


class Session:
    """A conversation over one `Converse` stream: `async with Session(...) as session`.

    Opening sends the session config and waits for the server's `started` event;
    `session.session_id`, `session.started` (formats, persona) are then set.

    Guarantees:

    - `say()` returns at once; the request is sent in order with every other one.
      The returned `Turn` receives exactly its own events and ends with exactly one
      terminal event (completed, interrupted or failed).
    - `async for event in session` yields every event of the session in arrival
      order, turns' events included, from `started` on. Unread events are buffered
      up to `max_buffered_events`; beyond that the oldest are dropped and counted in
      `events_dropped` (turns never drop: a `Turn` keeps all of its own events).
      Iterate from one task only.
    - Cancelling a task that awaits or iterates a turn or the session is safe and
      loses nothing; the stream keeps being read.
    - A dropped connection (or a server going away with UNAVAILABLE) is resumed by
      itself: the session reattaches with the last `seq` it received, the server
      replays what was missed, and nothing is delivered twice (events are keyed by
      seq). Turns keep going across the gap. A request written while the connection
      was down fails with `ConnectError`; send it again. `reconnect=False` turns
      this off; `resumes` counts the reattachments.
    - `close()` (and leaving the `async with` block normally) half-closes: the
      server finishes the running turn and every event of it is still delivered.
      `abort()` (and leaving the block by an exception) cancels the call at once:
      events not yet received are lost, and unfinished turns raise `ClosedError`.
    """

    def __init__(
        self,
        connection: str | Connection | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        persona: str | None = None,
        default_control: cpb.TurnControl | None = None,
        render: cpb.RenderOptions | None = None,
        session_id: str | None = None,
        open_timeout_s: float = 10.0,
        max_buffered_events: int = 10_000,
        reconnect: bool = True,
        reconnect_timeout_s: float = 30.0,
        portrait: bytes | None = None,
        resume_after_seq: int | None = None,
    ) -> None:
        """Describe the session; nothing is sent until it is opened.

        Args:
            connection: HOST:PORT of the server, or a `Connection` (API key, TLS, channel options);
                default `TTH_TARGET` or 127.0.0.1:50051, with `TTH_API_KEY`.
            channel: An open channel to use instead of making one; the session does not close it.
            persona: Persona id for the session; None is the server's default.
            default_control: The session's default controls (see `turn_control()`).
            render: Video settings (see `render_options()`).
            session_id: Attach to a session made by `Client.create_session()`.
            open_timeout_s: How long to wait for `started` when opening.
            max_buffered_events: Unread events `async for event in session` keeps.
            reconnect: Resume the session by itself when its connection drops.
            reconnect_timeout_s: How long to keep trying to resume (the server keeps a
                dropped session for `session.resume_window_s`, 30 s by default).
            portrait: A JPEG or PNG photo to be the session's face, for a server whose avatar
                animates photos; one it cannot use makes opening raise `InvalidArgumentError`
                naming the problem (no face, two faces, too small, too large, not an image).
            resume_after_seq: With `session_id`: resume that session after the event with this seq (another
                Session's `last_seq`), taking it over from a stream still attached, which then raises
                `SessionTakenOverError`. Opening raises `ResumeOutOfRangeError` when the events after it are no
                longer held. None attaches without replay, and only to a session no stream holds.
        """
        self._connection = Connection.of(connection)
        self._given_channel = channel
        self._config = pb.SessionConfig(
            session_id=session_id or "",
            persona_id=persona or "",
            default_control=default_control,
            render=render,
            batch_media=True,  # the same events in several times fewer messages; unpacked in _dispatch
            portrait=portrait or b"",
        )
        if resume_after_seq is not None:
            self._config.resume_after_seq = resume_after_seq
        self._open_timeout_s = open_timeout_s
        self._reconnect = reconnect
        self._reconnect_timeout_s = reconnect_timeout_s
        self._last_seq = 0
        self.resumes = 0
        """How many times the session resumed after its connection dropped."""
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._requests: asyncio.Queue[tuple[pb.ConverseRequest | None, asyncio.Future[None]]] = asyncio.Queue()
        self._waiting: dict[str, Turn] = {}  # said, no turn id yet, by request_id (oldest first)
        self._echoes_ids = False  # the server echoes request_id (it sent one back); else pair texts in order
        self._turns: dict[str, Turn] = {}  # running, by turn id
        self._latest: Turn | None = None
        self._stream: deque[Event] = deque()
        self._stream_waiters: list[asyncio.Future[None]] = []
        self._max_buffered = max_buffered_events
        self._ended: TTHError | None = None  # what unfinished turns raise once the stream has ended
        self._stream_error: TTHError | None = None  # set when the stream broke rather than ended cleanly
        self._closing = False
        self._persona_ids: list[str] | None = None  # the server's catalogue, fetched at the first persona update
        self.session_id = ""
        """The session's id, once opened; pass it to attach again."""
        self.started = pb.SessionStarted()
        """The `started` event's payload: audio and video formats, persona."""
        self.events_dropped = 0
        """Events the session stream dropped because nobody read them (turns never drop)."""

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()

    @property
    def target(self) -> str:
        return self._connection.target

    @property
    def last_seq(self) -> int:
        """The seq of the last event received: where another Session resumes this one (`resume_after_seq`)."""
        return self._last_seq

    @property
    def is_open(self) -> bool:
        """True between a successful `open()` and the end of the stream."""
        return self._call is not None and self._ended is None

    async def open(self) -> Session:
        """Open the stream, send the config and wait for `started`.

        Raises:
            ConnectError: the server cannot be reached.
            TimeoutError: no `started` within `open_timeout_s`.
            StatusError: the server refused the config (for example `NotFoundError` for an unknown session id).
        """
        if self._call is not None:
            raise ClosedError("the session was already opened; make a new Session to open another stream")
        self._channel = self._given_channel or self._connection.open_channel()
        try:
            self._call, event = await self._connect(self._config)
        except BaseException:
            self._ended = ClosedError("the session never opened")
            await self._release()
            raise
        self.session_id, self.started = event.session_id, event.started
        self._last_seq = event.seq or self._config.resume_after_seq  # a resumed stream's `started` is seq 0
        self._stream.append(event)
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read(), name=f"tth session {self.session_id} reader")
        self._writer = loop.create_task(self._write(), name=f"tth session {self.session_id} writer")
        return self

    async def _connect(self, config: pb.SessionConfig) -> tuple[Any, StartedEvent]:
        """Start a Converse call with `config` and read its `started`; the call is cancelled on failure."""
        assert self._channel is not None
        call = pb_grpc.ConversationServiceStub(self._channel).Converse(metadata=self._connection.metadata())
        try:
            async with asyncio.timeout(self._open_timeout_s):
                await call.write(pb.ConverseRequest(config=config))
                first = await call.read()
                if first is grpc.aio.EOF:
                    raise StatusError(
                        f"{self.target} ended the stream before `started` ({await call.code()})",
                        hint="check the server's logs",
                    )
        except grpc.RpcError as exc:
            call.cancel()
            raise from_rpc_error(exc, self.target) from None
        except builtins.TimeoutError:
            call.cancel()
            raise TimeoutError(
                f"no `started` from {self.target} within {self._open_timeout_s:g} s",
                hint="check that the target is a TTH server and not overloaded, or raise open_timeout_s",
            ) from None
        except BaseException:
            call.cancel()
            raise
        event = event_from_response(first)
        if not isinstance(event, StartedEvent):
            call.cancel()
            raise StatusError(f"{self.target} sent {type(event).__name__} before `started`; is it a TTH server?")
        return call, event

    async def _resume(self) -> tuple[bool, StatusError | None]:
        """Reattach after a dropped stream: (True, None) once resumed; (False, the refusal or None on a timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_timeout_s
        delay = 0.05
        config = pb.SessionConfig(session_id=self.session_id, resume_after_seq=self._last_seq, batch_media=True)
        while loop.time() < deadline and not self._closing:
            try:
                self._call, event = await self._connect(config)
            except (ConnectError, TimeoutError):
                pass  # the server is still out of reach
            except StatusError as exc:
                if exc.code is not grpc.StatusCode.UNAVAILABLE:
                    return False, exc  # gone for good: unknown or expired, or its events no longer held
            else:
                self.resumes += 1
                self._publish(event)
                return True, None
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 1.0)
        return False, None

    async def close(self, timeout_s: float | None = 30.0) -> None:
        """Half-close and wait for the server to end the call.

        The running turn finishes and all of its events are delivered; nothing can
        be sent afterwards. If the server has not ended the call within `timeout_s`,
        the call is cancelled (as by `abort()`) and `TimeoutError` is raised. To stop
        the running turn instead of waiting for it, call `interrupt()` first.
        """
        if self._call is None or self._closing:
            await self._finished(timeout_s)
            return
        self._closing = True
        if self._ended is None:
            self._enqueue(_CLOSE)
        await self._finished(timeout_s)

    async def abort(self) -> None:
        """Cancel the call at once: events not yet received are lost; unfinished turns raise `ClosedError`."""
        self._closing = True
        if self._call is not None:
            self._call.cancel()
        for task in (self._reader, self._writer):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        self._end(ClosedError("the session was aborted before the turn ended; its remaining events are lost"))
        await self._release()

    async def _finished(self, timeout_s: float | None) -> None:
        if self._reader is not None and not self._reader.done():
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._reader)
            except builtins.TimeoutError:
                await self.abort()
                raise TimeoutError(
                    f"the server did not end the session within {timeout_s:g} s of closing",
                    hint="interrupt the running turn before closing, or raise the close timeout",
                ) from None
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.wait([self._writer])
        await self._release()

    async def _release(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and self._given_channel is None:
            await channel.close()

    # ---- requests ----------------------------------------------------------------------------------------------

    def say(
        self,
        text: str,
        *,
        control: cpb.TurnControl | None = None,
        request_id: str | None = None,
        **controls: Unpack[Controls],
    ) -> Turn:
        """Start a turn for `text`; a running turn is interrupted first (barge-in).

        Returns the `Turn` at once (`async for event in turn`, `await turn`); the
        request is sent in order after those made before it. Controls given here
        apply to this turn only, above every other layer; see `turn_control()`.
        `request_id` (at most 64 characters, unique within the session) is sent with
        the text and comes back on every event of its turn (`event.request_id`,
        `turn.request_id`), for matching with your own logs; None makes one.

        Raises:
            InvalidControlError: a control is out of its range or an emotion name is not known (nothing is sent).
                Awaiting the turn raises it too when the server refuses a control, such as an unknown persona.
            InvalidArgumentError: the text is empty, or `request_id` too long or already waiting for its turn
                (nothing is sent); awaiting the turn raises it when the server refuses the text, such as one over
                its length limit.
            ClosedError: the session is not open.
        """
        self._check_open()
        rid = self._request_id("say", request_id)
        if rid in self._waiting:
            raise InvalidArgumentError(
                f"request_id {rid!r} is already used by a text still waiting for its turn",
                field="request_id",
                hint="give each say() its own request_id, or leave it to the SDK",
            )
        user_text = pb.UserText(text=check_text(text), control=turn_control(control, **controls), request_id=rid)
        turn = Turn(
            text, sample_rate_hz=self.started.audio.sample_rate_hz, interrupt=self._interrupt_turn, request_id=rid
        )
        self._waiting[rid] = turn
        self._latest = turn

        def sent(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and (error := done.exception()) is not None and self._waiting.get(rid) is turn:
                del self._waiting[rid]
                turn._fail(error if isinstance(error, TTHError) else ClosedError(str(error)))

        self._enqueue(pb.ConverseRequest(text=user_text)).add_done_callback(sent)
        return turn

    @staticmethod
    def _request_id(kind: str, given: str | None) -> str:
        """The caller's request_id, checked, or a new one (unique in practice: 48 random bits)."""
        return check_request_id(given) if given is not None else f"{kind}-{secrets.token_hex(6)}"

    async def update_controls(
        self, control: cpb.TurnControl | None = None, *, request_id: str | None = None, **controls: Unpack[Controls]
    ) -> None:
        """Change the session's standing controls from the next turn on (never the running one).

        Returns once the request is sent. Everything the server would refuse is
        checked first and nothing is sent then: ranges and names here, a persona id
        against the server's catalogue (one `ListModels` call per session). Should
        the server refuse it all the same, its session-level `ErrorEvent` carries
        this update's `request_id` (None makes one) and no turn is affected.

        Raises:
            InvalidControlError: a value is out of its range, or an emotion name or persona id is not known.
            ClosedError: the session is not open.
        """
        self._check_open()
        rid = self._request_id("control", request_id)
        update = turn_control(control, **controls)
        if update.character.HasField("persona_id"):
            await self._check_persona(update.character.persona_id)
        await self._enqueue(pb.ConverseRequest(control=pb.ControlUpdate(control=update, request_id=rid)))

    async def _check_persona(self, persona_id: str) -> None:
        if self._persona_ids is None:
            assert self._channel is not None
            stub = pb_grpc.ConversationServiceStub(self._channel)
            try:
                models = await stub.ListModels(pb.ListModelsRequest(), metadata=self._connection.metadata())
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, self.target) from None
            self._persona_ids = list(models.persona_ids)
        if persona_id not in self._persona_ids:
            raise InvalidControlError(
                f"persona {persona_id!r} is not known to {self.target}",
                field="persona",
                hint=f"use one of: {', '.join(self._persona_ids)}",
            )

    async def interrupt(self, played_ms: float | None = None, *, request_id: str | None = None) -> None:
        """Stop the running turn, if any. Returns once the request is sent.

        The turn then ends with `turn_interrupted`; media already in flight may
        arrive before it, none after it. `played_ms` is how much of the turn's audio
        was really played (None: the server estimates it from what it sent). The
        `turn_interrupted` belongs to the turn and carries its text's request_id;
        this interrupt's `request_id` (None makes one) only comes back on a refusal.
        """
        self._check_open()
        interrupt = pb.Interrupt(request_id=self._request_id("interrupt", request_id))
        if played_ms is not None:
            interrupt.played_ms = max(0, round(played_ms))
        await self._enqueue(pb.ConverseRequest(interrupt=interrupt))

    async def _interrupt_turn(self, turn: Turn, played_ms: float | None) -> None:
        if turn is self._latest and self.is_open and not self._closing:
            await self.interrupt(played_ms)

    def _check_open(self) -> None:
        if self._call is None:
            raise ClosedError("the session is not open", hint="use `async with Session(...)` or `await session.open()`")
        if self._ended is not None:
            raise ClosedError(f"the session has ended: {self._ended}")
        if self._closing:
            raise ClosedError("the session is closing; nothing more can be sent")

    def _enqueue(self, request: pb.ConverseRequest | None) -> asyncio.Future[None]:
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests.put_nowait((request, sent))
        return sent

    async def _write(self) -> None:
        while True:
            request, sent = await self._requests.get()
            try:
                if request is _CLOSE:
                    await self._call.done_writing()
                else:
                    await self._call.write(request)
            except grpc.RpcError as exc:
                sent.set_exception(from_rpc_error(exc, self.target))
            except Exception as exc:  # the call already ended; the reader records why
                sent.set_exception(self._ended or ClosedError(f"the session's stream has ended ({exc})"))
            else:
                sent.set_result(None)
            if request is _CLOSE:
                return

    # ---- events ------------------------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            while self._stream:
                yield self._stream.popleft()
            if self._ended is not None:
                if self._stream_error is not None:
                    raise self._stream_error
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._stream_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._stream_waiters.remove(waiter)

    async def _read(self) -> None:
        while True:
            try:
                while (response := await self._call.read()) is not grpc.aio.EOF:
                    self._dispatch(response)
                code = await self._call.code()
                if code is grpc.StatusCode.OK:
                    self._end(ClosedError("the server ended the session before the turn's terminal event"))
                    return
                details, trailers = await self._call.details(), await self._call.trailing_metadata()
                error: TTHError = status_error(code, details, self.target, trailers)
            except grpc.RpcError as exc:
                code, error = exc.code(), from_rpc_error(exc, self.target)
            except asyncio.CancelledError:
                self._end(ClosedError("the session was aborted before the turn ended; its remaining events are lost"))
                raise
            resumable = code is grpc.StatusCode.UNAVAILABLE and self._reconnect and not self._closing
            if resumable:
                resumed, refusal = await self._resume()
                if resumed:
                    continue
                error = refusal or error  # why it cannot go on: the refusal (a ResumeOutOfRangeError ...), if any
            self._end(error, broken=True)
            return

    def _dispatch(self, response: pb.ConverseResponse) -> None:
        if response.seq:
            if response.seq <= self._last_seq:
                return  # already delivered before a resume
            self._last_seq = response.seq
        for event in events_from_response(response):  # none for an event kind newer than this SDK
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        self._publish(event)
        if event.request_id:
            self._echoes_ids = True
        if event.turn_id:
            turn = self._turns.get(event.turn_id)
            if turn is None:
                turn = self._claim(event)
                if turn is not None:
                    self._turns[event.turn_id] = turn
            if turn is not None:
                turn._push(event)
                if is_terminal(event):
                    del self._turns[event.turn_id]
        elif isinstance(event, ErrorEvent) and (turn := self._claim(event)) is not None:
            # the text was refused; no turn started
            if event.error.code == pb.ERROR_CODE_INVALID_ARGUMENT:
                message = f"{self.target} refused the text: {event.error.message}"
                turn._fail(invalid_argument(message, event.error.message))
            else:
                turn._push(event, terminal=True)

    def _claim(self, event: Event) -> Turn | None:
        """The waiting `say()` that `event` answers, taken off the waiting list; None when it answers none."""
        if event.request_id:
            return self._waiting.pop(event.request_id, None)  # a control's or interrupt's id matches no say()
        if self._echoes_ids or not self._waiting:
            return None
        # A server that echoes no ids handles requests in order: the oldest text still waiting. Only a refused
        # control update names its field under "control.".
        if isinstance(event, ErrorEvent) and event.error.message.startswith("control."):
            return None
        return self._waiting.pop(next(iter(self._waiting)))

    def _publish(self, event: Event) -> None:
        if len(self._stream) >= self._max_buffered:
            self._stream.popleft()
            self.events_dropped += 1
        self._stream.append(event)
        self._wake_stream()

    def _wake_stream(self) -> None:
        waiters, self._stream_waiters = self._stream_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _end(self, reason: TTHError, *, broken: bool = False) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        self._stream_error = reason if broken else None
        for turn in [*self._waiting.values(), *self._turns.values()]:
            turn._fail(reason)
        self._waiting.clear()
        self._turns.clear()
        while not self._requests.empty():
            _, sent = self._requests.get_nowait()
            if not sent.done():
                sent.set_exception(reason)
        self._wake_stream()
