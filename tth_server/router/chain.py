"""A stage's providers in order, and the one loop that tries them: retries, breakers, fallbacks, exhaustion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from adapters.base import Adapter, Stage
from adapters.errors import ErrorCategory, ProviderError
from adapters.logs import log
from tth_server import metrics
from tth_server.config import RouterSettings, StageBudget
from tth_server.router.breaker import Breaker, BreakerState
from tth_server.router.budget import aclose, budgeted
from tth_server.router.routes import TurnRoutes

T = TypeVar("T")


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

    def order(self, routes: TurnRoutes | None = None) -> list[Provider]:
        """Providers to try: the one that already served the turn first, then the chain in order."""
        start = routes.preferred.get(self.stage, 0) if routes is not None else 0
        return [*self.providers[start:], *self.providers[:start]]

    def first_available(self, routes: TurnRoutes | None = None) -> Provider:
        for provider in self.order(routes):
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

    async def stream(
        self,
        call: Callable[[Provider], AsyncIterator[T]],
        routes: TurnRoutes | None = None,
        *,
        timed: Callable[[AsyncIterator[T], Provider], AsyncIterator[T]] | None = None,
        resume: bool = False,
    ) -> AsyncGenerator[T, None]:
        """Items of the first provider call that succeeds, under the stage's budget and policy.

        A call that fails before delivering anything is retried on the same provider
        (`retry_delay_s`) or handed to the next whose circuit lets it through. A
        failure after items were delivered ends the stream with that error; with
        `resume`, the next provider takes over instead, without a retry, and `call`
        must make it start after what was delivered. `timed` holds each call to the
        stage's budget (`budgeted` by default). `routes`, the turn's record, learns
        which provider served and is asked which to try first.
        """
        hold = timed or self._budgeted
        errors: list[ProviderError] = []
        delivered = False  # by any provider: nothing delivered is ever asked for again
        for provider in self.order(routes):
            attempt = 0
            while provider.breaker.allow():
                verdict: bool | None = None
                delay: float | None = None
                items: AsyncIterator[T] | None = None
                sent = False  # by this call
                try:
                    items = hold(call(provider), provider)
                    async for item in items:
                        if not sent:
                            sent = delivered = True
                            if routes is not None:
                                routes.served(self.stage, provider.name, provider.index)
                        yield item
                    verdict = True
                    return
                except ProviderError as exc:
                    verdict = None if exc.category is ErrorCategory.INVALID_REQUEST else False
                    metrics.provider_error(self.stage.value, provider.name, exc)
                    if delivered and not resume:
                        log.warning(
                            "provider failed mid-stream", stage=self.stage.value, adapter=provider.name, error=str(exc)
                        )
                        raise
                    errors.append(exc)
                    delay = None if delivered else self.retry_delay_s(exc, attempt)
                    then = "next provider, from the next item" if delivered else "next provider"
                    log.warning(
                        "provider failed",
                        stage=self.stage.value,
                        adapter=provider.name,
                        error=str(exc),
                        next="retry" if delay is not None else then,
                    )
                    if delay is None:
                        break
                finally:
                    provider.breaker.settle(verdict)
                    if items is not None:
                        await aclose(items)
                attempt += 1
                await asyncio.sleep(delay)
        raise self.exhausted(errors)

    def _budgeted(self, it: AsyncIterator[T], provider: Provider) -> AsyncIterator[T]:
        return budgeted(it, self.budget, provider.name)

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
