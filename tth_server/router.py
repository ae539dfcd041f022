"""The provider router: every stage's adapter behind time budgets, retries, breakers and a fallback chain.

`route()` builds a stage's primary adapter and its fallbacks (`components.<stage>.fallback`,
each `{adapter, options}`) through the registry and wraps them in a routed
adapter that implements the same base, so the pipeline cannot tell the difference.
For every provider call the router

1. skips providers whose circuit is open (after `failure_threshold` consecutive
   failures it stays open for `cooldown_s`, then lets exactly one trial call
   through: success closes it, failure opens it again);
2. enforces the stage's budget: the first output within `first_byte_ms`, and no
   more than `total_ms` spent waiting on the provider over the call (time the
   pipeline holds output back for pacing does not count). For the avatar the
   first frame is timed from the first audio it could draw from;
3. on a failure *before the provider produced any output*, retries the same
   provider (`retries` times, for retryable errors: 5xx, 429 with a Retry-After
   up to `max_retry_after_ms`, dropped connections; never for timeouts, since
   waiting again on a hung provider only spends the budget twice), then moves
   down the fallback chain;
4. on a failure *after output was delivered*, gives up: the turn fails with
   exactly one error. Nothing already sent is ever sent again and a voice never
   changes in the middle of a sentence. Each TTS call is one sentence or clause,
   so a later sentence of the same turn may still fall back; once one has, the
   rest of the turn stays with that provider (one voice per turn, as far as can be).
   The avatar is the exception: a face that fails mid-turn (a provider avatar's
   connection dropping, say) is replaced by the next in the chain from the next
   frame on, drawn from the turn's audio, so the turn goes on with the fallback
   in its metrics and no frame slot is sent twice.

Errors arrive classified (`adapters.errors.ProviderError`) and keep their category,
so `tth_server.errors` maps them to one error code table. The turn's metrics say
which provider served each stage and whether a fallback fired: the pipeline opens
a `TurnRoutes` record per turn (`begin_turn`), the routed adapters write into it,
and `TurnRoutes.apply` stamps the turn's `StageTiming`s.

A fallback whose sample rate differs from the primary's (which the session
announced) is resampled, so the stream's audio format never changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from adapters import registry
from adapters.base import (
    Adapter,
    AvatarAdapter,
    AvatarConnections,
    AvatarInput,
    Capabilities,
    ControlMapping,
    HealthStatus,
    LLMAdapter,
    LLMRequest,
    Mode,
    RealtimeAdapter,
    RealtimeConversation,
    Stage,
    TTSAdapter,
)
from adapters.controls import Controls
from adapters.errors import ErrorCategory, ProviderError
from adapters.logs import log
from adapters.media import AudioChunk, RenderSettings, VideoFrame
from adapters.resample import Resampler
from tth_server import metrics
from tth_server.config import ComponentConfig, RouterSettings, StageBudget
from tth_server.events import StageTiming

T = TypeVar("T")


# ---- circuit breaker --------------------------------------------------------------------------------------------


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """closed -> (threshold consecutive failures) -> open -> (cooldown) -> half-open: one trial -> closed | open."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial = False

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one call at a time (the trial)."""
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.cooldown_s:
                return False
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            if self._trial:
                return False
            self._trial = True
        return True

    def settle(self, ok: bool | None) -> None:
        """Record a call's outcome: True success, False failure, None no verdict (cancelled, caller's fault)."""
        trial, self._trial = self._trial, False
        if ok is None:
            return
        if ok:
            self.state, self.failures = BreakerState.CLOSED, 0
            return
        self.failures += 1
        if trial or self.failures >= self.threshold:
            self.state, self._opened_at = BreakerState.OPEN, self._clock()

    def retry_in_s(self) -> float:
        return max(0.0, self.cooldown_s - (self._clock() - self._opened_at)) if self.state is BreakerState.OPEN else 0.0

    def describe(self) -> str:
        if self.state is BreakerState.OPEN:
            return f"circuit open after {self.failures} failures, trial in {self.retry_in_s():.0f} s"
        if self.state is BreakerState.HALF_OPEN:
            return "circuit half-open (trial call)"
        return "circuit closed"


# ---- what served the turn -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class TurnRoutes:
    """Which provider served each stage in one turn, and whether a fallback fired."""

    first: dict[Stage, str] = field(default_factory=dict)
    fallback_used: set[Stage] = field(default_factory=set)
    preferred: dict[Stage, int] = field(default_factory=dict)
    mappings: list[tuple[Stage, ControlMapping]] = field(default_factory=list)

    def served(self, stage: Stage, name: str, index: int) -> None:
        self.first.setdefault(stage, name)
        self.preferred[stage] = index
        if index > 0:
            self.fallback_used.add(stage)

    def apply(self, stages: list[StageTiming]) -> None:
        """Stamp the turn's stage timings with the provider that served first and the fallback flag."""
        for timing in stages:
            if timing.stage in self.first:
                timing.adapter = self.first[timing.stage]
            timing.fallback_used = timing.fallback_used or timing.stage in self.fallback_used


_turn: ContextVar[TurnRoutes | None] = ContextVar("tth_turn_routes", default=None)


def begin_turn() -> TurnRoutes:
    """Open the record for the turn running in this task (and the tasks it starts)."""
    routes = TurnRoutes()
    _turn.set(routes)
    return routes


# ---- the chain ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Provider:
    adapter: Adapter
    index: int
    breaker: Breaker

    @property
    def name(self) -> str:
        return self.adapter.name


class Chain:
    """A stage's providers in order, with the policy that moves between them."""

    def __init__(
        self,
        stage: Stage,
        adapters: list[Adapter],
        settings: RouterSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.budget: StageBudget = settings.budgets.get(stage.value, StageBudget())
        b = settings.breaker
        self.providers = [
            Provider(a, i, Breaker(b.failure_threshold, b.cooldown_s, clock)) for i, a in enumerate(adapters)
        ]

    def order(self) -> list[Provider]:
        """Providers to try: the one that already served this turn first, then the chain in order."""
        routes = _turn.get()
        start = routes.preferred.get(self.stage, 0) if routes else 0
        return [*self.providers[start:], *self.providers[:start]]

    def first_available(self) -> Provider:
        for provider in self.order():
            if provider.breaker.state is not BreakerState.OPEN or provider.breaker.retry_in_s() == 0:
                return provider
        return self.providers[0]

    def retry_delay_s(self, error: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before trying the same provider again, or None to move on."""
        if not error.retryable or error.category is ErrorCategory.TIMEOUT or attempt >= self.settings.retries:
            return None
        backoff: float = self.settings.retry_backoff_ms / 1000 * 2.0**attempt
        if error.retry_after_s is not None:
            if error.retry_after_s * 1000 > self.settings.max_retry_after_ms:
                return None
            return max(error.retry_after_s, backoff)
        return backoff

    async def stream(self, call: Callable[[Provider], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Items of the first provider call that succeeds, under the stage's budget and policy."""
        errors: list[ProviderError] = []
        for provider in self.order():
            attempt = 0
            while provider.breaker.allow():
                verdict: bool | None = None
                delay: float | None = None
                sent = False
                try:
                    async for item in budgeted(call(provider), self.budget, provider.name):
                        if not sent:
                            sent = True
                            routes = _turn.get()
                            if routes is not None:
                                routes.served(self.stage, provider.name, provider.index)
                        yield item
                    verdict = True
                    return
                except ProviderError as exc:
                    verdict = None if exc.category is ErrorCategory.INVALID_REQUEST else False
                    metrics.provider_error(self.stage.value, provider.name, exc)
                    if sent:
                        log.warning(
                            "provider failed mid-stream", stage=self.stage.value, adapter=provider.name, error=str(exc)
                        )
                        raise
                    errors.append(exc)
                    delay = self.retry_delay_s(exc, attempt)
                    log.warning(
                        "provider failed",
                        stage=self.stage.value,
                        adapter=provider.name,
                        error=str(exc),
                        next="retry" if delay is not None else "next provider",
                    )
                    if delay is None:
                        break
                finally:
                    provider.breaker.settle(verdict)
                attempt += 1
                await asyncio.sleep(delay)
        raise self.exhausted(errors)

    def exhausted(self, errors: list[ProviderError]) -> ProviderError:
        """The error a turn fails with once no provider could serve."""
        if len(errors) == 1:
            return errors[0]
        if not errors:
            wait = min((p.breaker.retry_in_s() for p in self.providers), default=0.0)
            names = ", ".join(p.name for p in self.providers)
            return ProviderError(
                ErrorCategory.CONNECTIVITY,
                f"{self.stage.value}: every provider's circuit is open ({names})",
                retryable=True,
                retry_after_s=wait or None,
            )
        last = errors[-1]
        tried = "; ".join(str(e) for e in errors)
        waits = [e.retry_after_s for e in errors if e.retry_after_s]
        return ProviderError(
            last.category,
            f"{self.stage.value}: every provider failed: {tried}",
            retryable=last.retryable,
            retry_after_s=min(waits) if waits else None,
            status=last.status,
        )


async def budgeted(it: AsyncIterator[T], budget: StageBudget, provider: str) -> AsyncIterator[T]:
    """`it`, failing with a TIMEOUT ProviderError past the first-output or total budget.

    The total counts only time spent waiting inside the provider's iterator, not
    time the consumer takes between items.
    """
    first_s = budget.first_byte_ms / 1000 or None
    total_s = budget.total_ms / 1000 or None
    waited, first = 0.0, True
    try:
        while True:
            limit: float | None = None
            why = ""
            if first and first_s is not None:
                limit, why = first_s, f"no first output within {budget.first_byte_ms:g} ms"
            if total_s is not None and (limit is None or total_s - waited < limit):
                limit, why = total_s - waited, f"the call took over {budget.total_ms:g} ms of provider time"
            started = time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, limit) if limit is not None else None) as timer:
                    item = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not timer.expired():
                    raise
                raise ProviderError(ErrorCategory.TIMEOUT, why, provider=provider) from None
            waited += time.monotonic() - started
            first = False
            yield item
    finally:
        await _aclose(it)


async def _aclose(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


# ---- routed adapters -----------------------------------------------------------------------------------------------


class _Routed:
    """What every routed adapter shares: the chain, lifecycle, health and the primary's identity."""

    chain: Chain
    name: str

    def _setup(self, chain: Chain) -> None:
        self.chain = chain
        # A mode is a class attribute on the adapter bases; a routed adapter reports its primary's.
        setattr(self, "mode", chain.providers[0].adapter.mode)  # noqa: B010

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
        return self.chain.first_available().adapter.map_controls(controls)

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


class RoutedLLM(_Routed, LLMAdapter):
    def __init__(self, chain: Chain) -> None:
        LLMAdapter.__init__(self, chain.providers[0].adapter.name, {})
        self._setup(chain)

    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        def call(p: Provider) -> AsyncIterator[str]:
            assert isinstance(p.adapter, LLMAdapter)
            return p.adapter.stream(request)

        return self.chain.stream(call)


class RoutedTTS(_Routed, TTSAdapter):
    def __init__(self, chain: Chain) -> None:
        TTSAdapter.__init__(self, chain.providers[0].adapter.name, {})
        self._setup(chain)

    @property
    def sample_rate_hz(self) -> int:
        primary = self.primary
        assert isinstance(primary, TTSAdapter)
        return primary.sample_rate_hz

    def synthesize(self, text: str, mapping: ControlMapping) -> AsyncIterator[AudioChunk]:
        rate = self.sample_rate_hz

        async def call(p: Provider) -> AsyncIterator[AudioChunk]:
            tts = p.adapter
            assert isinstance(tts, TTSAdapter)
            own = tts.map_controls(mapping.controls)
            if p.index > 0:
                _note_mapping(Stage.TTS, own)
            resampler = Resampler(tts.sample_rate_hz, rate) if tts.sample_rate_hz != rate else None
            async for chunk in tts.synthesize(text, own):
                yield resampler.feed(chunk) if resampler else chunk
            if resampler and (tail := resampler.flush()).samples:
                yield tail

        return self.chain.stream(call)


class RoutedRealtime(_Routed, RealtimeAdapter):
    def __init__(self, chain: Chain) -> None:
        RealtimeAdapter.__init__(self, chain.providers[0].adapter.name, {})
        self._setup(chain)

    @property
    def sample_rate_hz(self) -> int:
        primary = self.primary
        assert isinstance(primary, RealtimeAdapter)
        return primary.sample_rate_hz

    async def open(self, system_prompt: str, mapping: ControlMapping) -> RoutedConversation:
        """A conversation that connects on its first reply, under the router's budget and fallbacks."""
        return RoutedConversation(self)


class RoutedConversation(RealtimeConversation):
    """One session's conversation, held with whichever provider serves it.

    A provider conversation that failed is closed; the next reply reconnects (or
    falls back) and the new conversation is seeded with the session's history.
    """

    def __init__(self, routed: RoutedRealtime) -> None:
        self._routed = routed
        self._current: tuple[Provider, RealtimeConversation] | None = None

    async def _conversation(self, p: Provider, prompt: str, mapping: ControlMapping) -> RealtimeConversation:
        if self._current is not None and self._current[0] is p and not getattr(self._current[1], "closed", False):
            return self._current[1]
        await self._drop()
        adapter = p.adapter
        assert isinstance(adapter, RealtimeAdapter)
        conversation = await adapter.open(prompt, mapping)
        self._current = (p, conversation)
        return conversation

    async def _drop(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            try:
                await current[1].aclose()
            except Exception as exc:  # closing a broken connection must not mask the error that broke it
                log.warning("closing a realtime conversation failed", adapter=current[0].name, error=repr(exc))

    async def respond(self, request: LLMRequest, mapping: ControlMapping) -> AsyncIterator[str | AudioChunk]:
        rate = self._routed.sample_rate_hz

        async def call(p: Provider) -> AsyncIterator[str | AudioChunk]:
            adapter = p.adapter
            assert isinstance(adapter, RealtimeAdapter)
            own = adapter.map_controls(mapping.controls)
            if p.index > 0:
                _note_mapping(Stage.REALTIME, own)
            resampler = Resampler(adapter.sample_rate_hz, rate) if adapter.sample_rate_hz != rate else None
            try:
                conversation = await self._conversation(p, request.system_prompt, own)
                async for item in conversation.respond(request, own):
                    yield resampler.feed(item) if resampler and isinstance(item, AudioChunk) else item
                if resampler and (tail := resampler.flush()).samples:
                    yield tail
            except ProviderError:
                await self._drop()
                raise

        try:
            async for item in self._routed.chain.stream(call):
                yield item
        except ProviderError:
            # Also after a timeout, where the provider's call was cancelled: its connection may be hung.
            await self._drop()
            raise

    async def truncate(self, played_ms: float) -> None:
        if self._current is not None:
            await self._current[1].truncate(played_ms)

    async def aclose(self) -> None:
        await self._drop()


def _note_mapping(stage: Stage, mapping: ControlMapping) -> None:
    routes = _turn.get()
    if routes is not None:
        routes.mappings.append((stage, mapping))


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


class RoutedAvatar(_Routed, AvatarAdapter):
    def __init__(self, chain: Chain) -> None:
        AvatarAdapter.__init__(self, chain.providers[0].adapter.name, {})
        self._setup(chain)

    def session_started(self, connections: AvatarConnections) -> bool:
        """Open the session's connection ahead for the provider expected to serve its first turn.

        Only while that provider's circuit is closed: with it open, the first turn
        goes to the fallback; half-open, the first turn is the trial. A failure
        to connect is not counted here: the first turn meets it as its own first
        attempt (`AvatarConnections.connection`), so the breaker counts it once
        and the router retries or falls back as for any other failure.
        """
        provider = self.chain.first_available()
        if provider.breaker.state is not BreakerState.CLOSED:
            return False
        avatar = provider.adapter
        assert isinstance(avatar, AvatarAdapter)
        return avatar.session_started(connections)

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        tape: _Tape[AvatarInput] = _Tape(audio)
        try:
            async for frame in self._frames(tape, settings):
                yield frame
        finally:
            await tape.aclose()

    async def _frames(self, tape: _Tape[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        chain = self.chain
        errors: list[ProviderError] = []
        resume_ms: float | None = None  # after a mid-turn failure: frames before this were delivered already
        for provider in chain.order():
            attempt = 0
            while provider.breaker.allow():
                verdict: bool | None = None
                delay: float | None = None
                avatar = provider.adapter
                assert isinstance(avatar, AvatarAdapter)
                frames = _after(avatar.render(self._remapped(tape, provider), settings), resume_ms)
                try:
                    first = await self._first_frame(frames, tape, provider.name)
                    if first is None:
                        verdict = True
                        return
                    routes = _turn.get()
                    if routes is not None:
                        routes.served(Stage.AVATAR, provider.name, provider.index)
                    resume_ms = first.timestamp_ms + settings.frame_ms / 2
                    yield first
                    async for frame in frames:
                        resume_ms = frame.timestamp_ms + settings.frame_ms / 2
                        yield frame
                    verdict = True
                    return
                except ProviderError as exc:
                    verdict = None if exc.category is ErrorCategory.INVALID_REQUEST else False
                    metrics.provider_error(Stage.AVATAR.value, provider.name, exc)
                    errors.append(exc)
                    delay = chain.retry_delay_s(exc, attempt) if resume_ms is None else None
                    log.warning(
                        "avatar provider failed",
                        adapter=provider.name,
                        error=str(exc),
                        resume_ms=resume_ms,
                        next="retry" if delay is not None else "next provider",
                    )
                    if delay is None:
                        break
                finally:
                    provider.breaker.settle(verdict)
                    await _aclose(frames)
                attempt += 1
                await asyncio.sleep(delay)
        raise chain.exhausted(errors)

    async def _remapped(self, tape: _Tape[AvatarInput], provider: Provider) -> AsyncIterator[AvatarInput]:
        last: tuple[Controls, ControlMapping] | None = None
        async for item in tape.reader():
            if last is None or last[0] != item.mapping.controls:
                own = provider.adapter.map_controls(item.mapping.controls)
                if provider.index > 0:
                    _note_mapping(Stage.AVATAR, own)
                last = (item.mapping.controls, own)
            yield AvatarInput(item.chunk, last[1])

    async def _first_frame(
        self, frames: AsyncIterator[VideoFrame], tape: _Tape[AvatarInput], name: str
    ) -> VideoFrame | None:
        """The first frame, within first_byte_ms of the first audio the provider could draw from."""
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
        await _aclose(frames)


# ---- building ------------------------------------------------------------------------------------------------------

_ROUTED: dict[Stage, Callable[[Chain], Adapter]] = {
    Stage.LLM: RoutedLLM,
    Stage.TTS: RoutedTTS,
    Stage.AVATAR: RoutedAvatar,
    Stage.REALTIME: RoutedRealtime,
}


def route(stage: str, component: ComponentConfig, settings: RouterSettings) -> Adapter:
    """The stage's adapter: primary and fallbacks built through the registry, behind the router.

    An in-process adapter (mode local) with no fallback is returned as it is, unless
    `router.route_local` is set: there is no provider to time out or trip a breaker
    on, and its fault knobs then behave exactly as configured.
    """
    where = f"components.{stage}"
    adapters = [registry.create(stage, component.adapter, component.options, where)]
    for i, entry in enumerate(component.fallback):
        adapters.append(registry.create(stage, entry.adapter, entry.options, f"{where}.fallback[{i}]"))
    if len(adapters) == 1 and adapters[0].mode is Mode.LOCAL and not settings.route_local:
        return adapters[0]
    return _ROUTED[Stage(stage)](Chain(Stage(stage), adapters, settings))


__all__ = [
    "Breaker",
    "BreakerState",
    "Chain",
    "Provider",
    "Resampler",
    "RoutedAvatar",
    "RoutedConversation",
    "RoutedLLM",
    "RoutedRealtime",
    "RoutedTTS",
    "TurnRoutes",
    "begin_turn",
    "budgeted",
    "route",
]
