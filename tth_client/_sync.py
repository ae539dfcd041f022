"""The synchronous SDK: the async implementation, driven from a background event loop thread.

`SyncClient`, `SyncSession` and `SyncTurn` hold their async counterparts and run
every call on one private event loop in a daemon thread, so both APIs share one
implementation and behave alike. Blocking calls accept no coroutine work from
the loop thread itself (that would deadlock) and say so.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import TypeVar, Unpack

from tth_client._channel import Connection
from tth_client._client import Client, HealthStatus
from tth_client._controls import Controls
from tth_client._events import Event
from tth_client._session import Session
from tth_client._turn import Turn, TurnResult
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb

__all__ = ["SyncClient", "SyncSession", "SyncTurn"]

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread, and a way to run coroutines on it and wait."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tth-client-loop", daemon=True)
        self._thread.start()
        self.users = 0  # objects sharing the loop; the last to close stops it

    def run(self, work: Awaitable[T], timeout_s: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("the sync TTH client cannot be called from its own event loop; use the async API there")

        async def wrapper() -> T:
            return await work

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        try:
            return future.result(timeout_s)
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncTurn:
    """A turn, synchronously: `for event in turn`, `turn.result()`, `turn.interrupt()`.

    Same guarantees as `Turn`; iterating again starts from the first event.
    """

    def __init__(self, turn: Turn, loop: _Loop) -> None:
        self._turn = turn
        self._loop = loop

    def __repr__(self) -> str:
        return repr(self._turn)

    @property
    def turn_id(self) -> str:
        return self._turn.turn_id

    @property
    def request_id(self) -> str:
        return self._turn.request_id

    @property
    def done(self) -> bool:
        return self._turn.done

    def __iter__(self) -> Iterator[Event]:
        events = self._turn.__aiter__()
        while True:
            try:
                yield self._loop.run(anext(events))
            except StopAsyncIteration:
                return

    def result(self, timeout_s: float | None = None) -> TurnResult:
        """Wait for the terminal event and return the whole turn (see `Turn.result`)."""
        return self._loop.run(self._turn.result(), timeout_s)

    def interrupt(self, played_ms: float | None = None) -> None:
        """Stop this turn if it still runs (see `Turn.interrupt`)."""
        self._loop.run(self._turn.interrupt(played_ms))


class SyncSession:
    """A `Session`, synchronously: `with SyncSession(...) as session`.

    Same arguments (except `channel`) and guarantees as `Session`; every call blocks
    until its async counterpart returns.
    """

    def __init__(
        self,
        connection: str | Connection | None = None,
        *,
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
        self._loop: _Loop | None = None
        self._owns_loop = True
        self._session: Session | None = None

        def factory() -> Session:
            return Session(
                connection,
                persona=persona,
                default_control=default_control,
                render=render,
                session_id=session_id,
                open_timeout_s=open_timeout_s,
                max_buffered_events=max_buffered_events,
                reconnect=reconnect,
                reconnect_timeout_s=reconnect_timeout_s,
                portrait=portrait,
                resume_after_seq=resume_after_seq,
            )

        self._factory: Callable[[], Session] = factory

    @classmethod
    def _on(cls, loop: _Loop, factory: Callable[[], Session]) -> SyncSession:
        """A session made by `factory` on an existing loop (a `SyncClient`'s)."""
        session = cls()
        session._loop, session._owns_loop, session._factory = loop, False, factory
        return session

    def __enter__(self) -> SyncSession:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _async(self) -> tuple[Session, _Loop]:
        if self._session is None or self._loop is None:
            raise RuntimeError("the session is not open; use `with SyncSession(...)` or call open()")
        return self._session, self._loop

    @property
    def session_id(self) -> str:
        return self._async()[0].session_id

    @property
    def started(self) -> pb.SessionStarted:
        return self._async()[0].started

    def open(self) -> SyncSession:
        """Open the stream and wait for `started` (see `Session.open`)."""
        if self._loop is None:
            self._loop = _Loop()
        self._loop.users += 1

        async def make_and_open() -> Session:
            return await self._factory().open()

        try:
            self._session = self._loop.run(make_and_open())
        except BaseException:
            self._release()
            raise
        return self

    def say(
        self,
        text: str,
        *,
        control: cpb.TurnControl | None = None,
        request_id: str | None = None,
        **controls: Unpack[Controls],
    ) -> SyncTurn:
        """Start a turn (see `Session.say`)."""
        session, loop = self._async()

        async def say() -> Turn:
            return session.say(text, control=control, request_id=request_id, **controls)

        return SyncTurn(loop.run(say()), loop)

    def update_controls(
        self, control: cpb.TurnControl | None = None, *, request_id: str | None = None, **controls: Unpack[Controls]
    ) -> None:
        """Change the standing controls from the next turn on (see `Session.update_controls`)."""
        session, loop = self._async()
        loop.run(session.update_controls(control, request_id=request_id, **controls))

    def interrupt(self, played_ms: float | None = None, *, request_id: str | None = None) -> None:
        """Stop the running turn (see `Session.interrupt`)."""
        session, loop = self._async()
        loop.run(session.interrupt(played_ms, request_id=request_id))

    def __iter__(self) -> Iterator[Event]:
        session, loop = self._async()
        events = session.__aiter__()
        while True:
            try:
                yield loop.run(anext(events))
            except StopAsyncIteration:
                return

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Half-close and wait for the running turn to finish (see `Session.close`)."""
        if self._session is not None and self._loop is not None:
            try:
                self._loop.run(self._session.close(timeout_s))
            finally:
                self._release()

    def abort(self) -> None:
        """Cancel the call at once (see `Session.abort`)."""
        if self._session is not None and self._loop is not None:
            try:
                self._loop.run(self._session.abort())
            finally:
                self._release()

    def _release(self) -> None:
        if self._loop is not None:
            self._loop.users -= 1
            if self._owns_loop and self._loop.users <= 0:
                self._loop.stop()
                self._loop = None


class SyncClient:
    """A `Client`, synchronously: `with SyncClient(...) as client`. Same arguments and guarantees as `Client`."""

    def __init__(
        self,
        connection: str | Connection | None = None,
        *,
        timeout_s: float | None = 30.0,
    ) -> None:
        self._loop = _Loop()
        self._loop.users += 1

        async def make() -> Client:
            client = Client(
                connection,
                timeout_s=timeout_s,
            )
            client.channel  # noqa: B018 - open the channel on the loop that will use it
            return client

        self._client = self._loop.run(make())

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def target(self) -> str:
        return self._client.target

    def close(self) -> None:
        """Close the channel and stop the loop thread (see `Client.close`)."""
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self._client.close())
        finally:
            self._loop.users -= 1
            if self._loop.users <= 0:
                self._loop.stop()

    def list_models(self) -> pb.ListModelsResponse:
        """See `Client.list_models`."""
        return self._loop.run(self._client.list_models())

    def create_session(
        self,
        *,
        default_control: cpb.TurnControl | None = None,
        render: cpb.RenderOptions | None = None,
        **controls: Unpack[Controls],
    ) -> pb.CreateSessionResponse:
        """See `Client.create_session`."""
        return self._loop.run(self._client.create_session(default_control=default_control, render=render, **controls))

    def health(self, service: str = "") -> HealthStatus:
        """See `Client.health`."""
        return self._loop.run(self._client.health(service))

    def generate(
        self,
        text: str,
        *,
        control: cpb.TurnControl | None = None,
        render: cpb.RenderOptions | None = None,
        portrait: bytes | None = None,
        **controls: Unpack[Controls],
    ) -> SyncTurn:
        """See `Client.generate`."""

        async def generate() -> Turn:
            return self._client.generate(text, control=control, render=render, portrait=portrait, **controls)

        return SyncTurn(self._loop.run(generate()), self._loop)

    def session(
        self,
        *,
        persona: str | None = None,
        default_control: cpb.TurnControl | None = None,
        render: cpb.RenderOptions | None = None,
        session_id: str | None = None,
        open_timeout_s: float = 10.0,
        max_buffered_events: int = 10_000,
        reconnect: bool = True,
        reconnect_timeout_s: float = 30.0,
        portrait: bytes | None = None,
    ) -> SyncSession:
        """A `SyncSession` on this client's channel (see `Client.session`); open it with `with`."""

        def factory() -> Session:
            return self._client.session(
                persona=persona,
                default_control=default_control,
                render=render,
                session_id=session_id,
                open_timeout_s=open_timeout_s,
                max_buffered_events=max_buffered_events,
                reconnect=reconnect,
                reconnect_timeout_s=reconnect_timeout_s,
                portrait=portrait,
            )

        return SyncSession._on(self._loop, factory)
