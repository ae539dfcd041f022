"""A provider call held to its stage's time budget: the first output in time, and a cap on the time spent waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from adapters.errors import ErrorCategory, ProviderError
from tth_server.config import StageBudget

T = TypeVar("T")


async def budgeted(it: AsyncIterator[T], budget: StageBudget, provider: str) -> AsyncIterator[T]:
    """`it`, failing with a TIMEOUT ProviderError past the first-output or total budget.

    The total counts only time spent waiting inside the provider's iterator, not
    time the consumer takes between items. Time is the event loop's, the clock
    its timeouts run on.
    """
    loop = asyncio.get_running_loop()
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
            started = loop.time()
            try:
                async with asyncio.timeout(max(0.0, limit) if limit is not None else None) as timer:
                    item = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not timer.expired():
                    raise
                raise ProviderError(ErrorCategory.TIMEOUT, why, provider=provider) from None
            waited += loop.time() - started
            first = False
            yield item
    finally:
        await aclose(it)


async def aclose(it: Any) -> None:
    """Close an async iterator that has `aclose` (an async generator), now rather than when it is collected."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
