"""The routed avatar: a face drawn from the turn's audio, taken over by the next provider when it fails.

The audio an avatar call reads is kept on a tape, so a retry or a fallback draws
from the first audio. A face that fails mid-turn (a provider avatar's connection
dropping, say) is replaced by the next in the chain from the next frame on, so
no frame slot is sent twice. The first frame is timed from the first audio the
provider could draw from, not from the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Generic, TypeVar

from adapters.base import AvatarAdapter, AvatarConnections, AvatarInput, ControlMapping, Stage
from adapters.controls import Controls
from adapters.errors import ErrorCategory, ProviderError
from adapters.media import RenderSettings, VideoFrame
from tth_server.router.breaker import BreakerState
from tth_server.router.budget import aclose
from tth_server.router.chain import Provider
from tth_server.router.routed import RoutedBase, note_mapping

T = TypeVar("T")


class _Tape(Generic[T]):
    """Keeps the audio an avatar call has read, so a retry or fallback can start from the beginning.

    A pump task reads the source; readers replay from the start. The whole turn's
    audio is kept (a fallback taking over mid-turn draws the frames after the last
    one delivered, and a face needs the audio before them to get there).
    """

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._items: list[T] = []
        self._done = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self.first_at: float | None = None
        self.on_first: Callable[[float], None] | None = None
        self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async for item in self._source:
                if self.first_at is None:
                    self.first_at = asyncio.get_running_loop().time()
                    if self.on_first is not None:
                        self.on_first(self.first_at)
                self._items.append(item)
                self._wake()
        except Exception as exc:
            self._error = exc
        finally:
            self._done = True
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def reader(self) -> AsyncIterator[T]:
        i = 0
        while True:
            changed = self._changed
            if i < len(self._items):
                item = self._items[i]
                i += 1
                yield item
                continue
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            await changed.wait()

    async def aclose(self) -> None:
        self._pump.cancel()
        await asyncio.wait([self._pump])


class RoutedAvatar(RoutedBase, AvatarAdapter):
    def session_started(self, connections: AvatarConnections) -> bool:
        """Open the session's connection ahead for the provider expected to serve its first turn.

        Only while that provider's circuit is closed: with it open, the first turn
        goes to the fallback; half-open, the first turn is the trial. A failure
        to connect is not counted here: the first turn meets it as its own first
        attempt (`AvatarConnections.connection`), so the breaker counts it once
        and the router retries or falls back as for any other failure.
        """
        provider = self.chain.first_available(self.routes)
        if provider.breaker.state is not BreakerState.CLOSED:
            return False
        avatar = provider.adapter
        assert isinstance(avatar, AvatarAdapter)
        return avatar.session_started(connections)

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        tape: _Tape[AvatarInput] = _Tape(audio)
        resume_ms: float | None = None  # after a mid-turn failure: frames before this were delivered already

        def call(provider: Provider) -> AsyncIterator[VideoFrame]:
            avatar = provider.adapter
            assert isinstance(avatar, AvatarAdapter)
            return _after(avatar.render(self._remapped(tape, provider), settings), resume_ms)

        def timed(frames: AsyncIterator[VideoFrame], provider: Provider) -> AsyncIterator[VideoFrame]:
            return self._first_in_budget(frames, tape, provider.name)

        try:
            async with aclosing(self.chain.stream(call, self.routes, timed=timed, resume=True)) as frames:
                async for frame in frames:
                    resume_ms = frame.timestamp_ms + settings.frame_ms / 2
                    yield frame
        finally:
            await tape.aclose()

    async def _remapped(self, tape: _Tape[AvatarInput], provider: Provider) -> AsyncIterator[AvatarInput]:
        last: tuple[Controls, ControlMapping] | None = None
        async for item in tape.reader():
            if last is None or last[0] != item.mapping.controls:
                own = provider.adapter.map_controls(item.mapping.controls)
                note_mapping(self.routes, Stage.AVATAR, provider, own)
                last = (item.mapping.controls, own)
            yield AvatarInput(item.chunk, last[1])

    async def _first_in_budget(
        self, frames: AsyncIterator[VideoFrame], tape: _Tape[AvatarInput], name: str
    ) -> AsyncIterator[VideoFrame]:
        """`frames`, the first of them within first_byte_ms of the first audio the provider could draw from."""
        try:
            first = await self._first_frame(frames, tape, name)
            if first is None:
                return
            yield first
            async for frame in frames:
                yield frame
        finally:
            await aclose(frames)

    async def _first_frame(
        self, frames: AsyncIterator[VideoFrame], tape: _Tape[AvatarInput], name: str
    ) -> VideoFrame | None:
        budget_s = self.chain.budget.first_byte_ms / 1000
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(None) as timer:
                if budget_s:
                    if tape.first_at is not None:
                        timer.reschedule(loop.time() + budget_s)
                    else:
                        tape.on_first = lambda at: timer.reschedule(max(at, started) + budget_s)
                try:
                    return await anext(frames)
                except StopAsyncIteration:
                    return None
        except TimeoutError:
            if not timer.expired():
                raise
            raise ProviderError(
                ErrorCategory.TIMEOUT, f"no first frame within {self.chain.budget.first_byte_ms:g} ms", provider=name
            ) from None
        finally:
            tape.on_first = None


async def _after(frames: AsyncIterator[VideoFrame], resume_ms: float | None) -> AsyncIterator[VideoFrame]:
    """`frames` from `resume_ms` on (all of them when None): a fallback's frames after the ones delivered."""
    try:
        async for frame in frames:
            if resume_ms is None or frame.timestamp_ms >= resume_ms:
                yield frame
    finally:
        await aclose(frames)
