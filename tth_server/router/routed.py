"""Routed adapters: a stage's chain behind the stage's own adapter base, so the pipeline cannot tell the difference.

A routed adapter is built once; each turn uses a view of it bound to that turn's
`TurnRoutes` (`for_turn`), which shares its chain (providers and breakers) and
records what served the turn. A fallback whose sample rate differs from the
primary's (which the session announced) is resampled, so the stream's audio
format never changes.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Self, TypeVar

from adapters.base import (
    Adapter,
    Capabilities,
    ControlMapping,
    HealthStatus,
    LLMAdapter,
    LLMRequest,
    RealtimeAdapter,
    RealtimeConversation,
    Stage,
    TTSAdapter,
)
from adapters.controls import Controls
from adapters.errors import ProviderError
from adapters.logs import log
from adapters.media import AudioChunk
from adapters.resample import Resampler
from tth_server.router.breaker import BreakerState
from tth_server.router.budget import aclose
from tth_server.router.chain import Chain, Provider
from tth_server.router.routes import TurnRoutes

A = TypeVar("A")
T = TypeVar("T")


class RoutedBase(Adapter):
    """What every routed adapter shares: its chain, the turn it is bound to, lifecycle, health, the primary's name."""

    chain: Chain
    name: str
    routes: TurnRoutes | None = None  # the turn this view is bound to; None outside a turn

    def __init__(self, chain: Chain) -> None:
        super().__init__(chain.providers[0].adapter.name, {})  # the stage's adapter base, next in the MRO
        self.chain = chain
        # A mode is a class attribute on the adapter bases; a routed adapter reports its primary's.
        setattr(self, "mode", chain.providers[0].adapter.mode)  # noqa: B010

    def for_turn(self, routes: TurnRoutes) -> Self:
        """This adapter bound to one turn's record: the same chain, providers and breakers."""
        view = copy.copy(self)
        view.routes = routes
        return view

    @property
    def primary(self) -> Adapter:
        return self.chain.providers[0].adapter

    @property
    def fallbacks(self) -> list[Adapter]:
        return [p.adapter for p in self.chain.providers[1:]]

    @property
    def model(self) -> str:
        return self.primary.model

    def capabilities(self) -> Capabilities:
        return self.primary.capabilities()

    def map_controls(self, controls: Controls) -> ControlMapping:
        """The mapping of the provider expected to serve (the primary unless its circuit is open)."""
        return self.chain.first_available(self.routes).adapter.map_controls(controls)

    async def start(self) -> None:
        await asyncio.gather(*(p.adapter.start() for p in self.chain.providers))

    async def aclose(self) -> None:
        await asyncio.gather(*(p.adapter.aclose() for p in self.chain.providers), return_exceptions=True)

    async def health(self) -> HealthStatus:
        """Healthy while some provider can serve; the detail names open circuits and who serves."""
        notes: list[str] = []
        serving: list[str] = []
        statuses = []
        for p in self.chain.providers:
            try:
                status = await p.adapter.health()
            except Exception as exc:
                status = HealthStatus(False, f"health check failed: {type(exc).__name__}")
            statuses.append(status)
            ok = status.healthy and p.breaker.state is not BreakerState.OPEN
            if ok:
                serving.append(p.name)
            if not ok or p.breaker.state is not BreakerState.CLOSED:
                detail = status.detail or ("unhealthy" if not status.healthy else "")
                notes.append(
                    f"{p.name}: {detail}; {p.breaker.describe()}" if detail else f"{p.name}: {p.breaker.describe()}"
                )
        if not notes:
            return statuses[0]
        if serving:
            notes.append(f"serving from {serving[0]}")
        return HealthStatus(bool(serving), "; ".join(notes))


class RoutedLLM(RoutedBase, LLMAdapter):
    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        def call(p: Provider) -> AsyncIterator[str]:
            assert isinstance(p.adapter, LLMAdapter)
            return p.adapter.stream(request)

        return self.chain.stream(call, self.routes)


class RoutedTTS(RoutedBase, TTSAdapter):
    @property
    def sample_rate_hz(self) -> int:
        return _rate(self.primary)

    def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        rate = self.sample_rate_hz

        def call(p: Provider) -> AsyncIterator[AudioChunk]:
            tts = p.adapter
            assert isinstance(tts, TTSAdapter)
            own = tts.map_controls(mapping.controls)
            note_mapping(self.routes, Stage.TTS, p, own)
            return _at_rate(tts.synthesize(text, own), tts.sample_rate_hz, rate)

        return self.chain.stream(call, self.routes)


class RoutedRealtime(RoutedBase, RealtimeAdapter):
    @property
    def sample_rate_hz(self) -> int:
        return _rate(self.primary)

    async def open(self, system_prompt: str, mapping: ControlMapping) -> RoutedConversation:
        """A conversation that connects on its first reply, under the router's budget and fallbacks.

        It outlives the turn that opens it: each turn binds it with `for_turn`.
        """
        return RoutedConversation(self.chain, self.sample_rate_hz, _Held())


class _Held:
    """The provider conversation a session holds, shared by every turn's view of its `RoutedConversation`."""

    def __init__(self) -> None:
        self.current: tuple[Provider, RealtimeConversation] | None = None

    async def get(self, p: Provider, prompt: str, mapping: ControlMapping) -> RealtimeConversation:
        """`p`'s open conversation, opening it (and closing another provider's) when there is none."""
        if self.current is not None and self.current[0] is p and not getattr(self.current[1], "closed", False):
            return self.current[1]
        await self.drop()
        adapter = p.adapter
        assert isinstance(adapter, RealtimeAdapter)
        conversation = await adapter.open(prompt, mapping)
        self.current = (p, conversation)
        return conversation

    async def drop(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            try:
                await current[1].aclose()
            except Exception as exc:  # closing a broken connection must not mask the error that broke it
                log.warning("closing a realtime conversation failed", adapter=current[0].name, error=repr(exc))


class RoutedConversation(RealtimeConversation):
    """One session's conversation, held with whichever provider serves it.

    A provider conversation that failed is closed; the next reply reconnects (or
    falls back) and the new conversation is seeded with the session's history.
    """

    def __init__(self, chain: Chain, sample_rate_hz: int, held: _Held, routes: TurnRoutes | None = None) -> None:
        self._chain = chain
        self._rate = sample_rate_hz
        self._held = held
        self.routes = routes

    def for_turn(self, routes: TurnRoutes) -> Self:
        """This conversation bound to one turn's record: the same provider conversation."""
        return type(self)(self._chain, self._rate, self._held, routes)

    async def respond(self, request: LLMRequest, mapping: ControlMapping) -> AsyncIterator[str | AudioChunk]:
        rate = self._rate
        routes = self.routes

        async def call(p: Provider) -> AsyncIterator[str | AudioChunk]:
            adapter = p.adapter
            assert isinstance(adapter, RealtimeAdapter)
            own = adapter.map_controls(mapping.controls)
            note_mapping(routes, Stage.REALTIME, p, own)
            try:
                conversation = await self._held.get(p, request.system_prompt, own)
                async for item in _at_rate(conversation.respond(request, own), adapter.sample_rate_hz, rate):
                    yield item
            except ProviderError:
                await self._held.drop()
                raise

        try:
            async for item in self._chain.stream(call, routes):
                yield item
        except ProviderError:
            # Also after a timeout, where the provider's call was cancelled: its connection may be hung.
            await self._held.drop()
            raise

    async def truncate(self, played_ms: float) -> None:
        if self._held.current is not None:
            await self._held.current[1].truncate(played_ms)

    async def aclose(self) -> None:
        await self._held.drop()


async def _at_rate(items: AsyncIterator[T], source_hz: int, rate_hz: int) -> AsyncIterator[T | AudioChunk]:
    """`items` with their audio at `rate_hz`: a fallback speaking at another rate is resampled to the primary's."""
    try:
        if source_hz == rate_hz:
            async for item in items:
                yield item
            return
        resampler = Resampler(source_hz, rate_hz)
        async for item in items:
            yield resampler.feed(item) if isinstance(item, AudioChunk) else item
        if (tail := resampler.flush()).samples:
            yield tail
    finally:
        await aclose(items)


def _rate(speech: Adapter) -> int:
    """The sample rate of a speaking adapter (TTS or realtime): the one the session announces."""
    assert isinstance(speech, TTSAdapter | RealtimeAdapter)
    return speech.sample_rate_hz


def note_mapping(routes: TurnRoutes | None, stage: Stage, provider: Provider, mapping: ControlMapping) -> None:
    """A fallback's own control mapping, for the turn's control report (the primary's is the pipeline's)."""
    if provider.index > 0 and routes is not None:
        routes.mappings.append((stage, mapping))


def for_turn(adapter: A, routes: TurnRoutes) -> A:
    """`adapter` (or a routed conversation) bound to the turn that `routes` records; anything unrouted as it is."""
    if isinstance(adapter, RoutedBase):
        return adapter.for_turn(routes)
    if isinstance(adapter, RoutedConversation):
        return adapter.for_turn(routes)
    return adapter
