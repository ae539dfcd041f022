"""Pacing: media held back to a bounded lead ahead of real time, released on one tick grid for the whole process."""

from __future__ import annotations

import asyncio
import math
import time
import weakref

# Per event loop: (tick length, tick number) -> the futures waiting for that tick, across all turns.
_TICKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[float, int], list[asyncio.Future[None]]]]
_TICKS = weakref.WeakKeyDictionary()


def _tick(number: int, length_s: float, now: float) -> asyncio.Future[None]:
    """A future done at tick `number` of the process's grid of `length_s` ticks (one timer per tick)."""
    loop = asyncio.get_running_loop()
    ticks = _TICKS.get(loop)
    if ticks is None:
        ticks = _TICKS[loop] = {}
    key = (length_s, number)
    waiters = ticks.get(key)
    if waiters is None:
        waiters = ticks[key] = []
        loop.call_at(loop.time() + number * length_s - now, _release, ticks, key)
    waiter = loop.create_future()
    waiters.append(waiter)
    return waiter


def _release(ticks: dict[tuple[float, int], list[asyncio.Future[None]]], key: tuple[float, int]) -> None:
    for waiter in ticks.pop(key, ()):
        if not waiter.done():  # a waiter cancelled meanwhile (its turn was interrupted) is skipped
            waiter.set_result(None)


class Pacer:
    """Holds media back to at most `lead_ms` ahead of real time on the turn's clock.

    The clock's zero is the moment the first audio chunk is released. With
    `lead_ms=None` nothing is held back. Media that must wait is released on a
    grid of ticks two fifths of the lead apart, and the grid is the process's,
    not the turn's: every turn's media due in a tick leaves in the same loop
    iteration. Media stays between 3/5 of the lead and the lead ahead; the server
    wakes once per tick for all its sessions, not once per frame per stage per
    session, and a stream that batches media gets one message per tick.
    """

    def __init__(self, lead_ms: float | None) -> None:
        self._lead_s = None if lead_ms is None else lead_ms / 1000
        self._tick_s = 0.0 if lead_ms is None else max(lead_ms * 0.4 / 1000, 0.001)
        self.zero: float | None = None

    async def wait(self, timestamp_ms: float) -> None:
        if self._lead_s is None:
            return
        now = time.monotonic()
        if self.zero is None:
            self.zero = now
            return
        due = self._due_at(self.zero, self._lead_s, timestamp_ms)
        if due <= now:
            return
        await _tick(math.ceil(due / self._tick_s), self._tick_s, now)

    def due(self, timestamp_ms: float) -> bool:
        """Whether media at `timestamp_ms` may leave now."""
        if self._lead_s is None or self.zero is None:
            return True
        return self._due_at(self.zero, self._lead_s, timestamp_ms) <= time.monotonic()

    @staticmethod
    def _due_at(zero: float, lead_s: float, timestamp_ms: float) -> float:
        """When media at `timestamp_ms` may leave, on the monotonic clock: one lead before it plays."""
        return zero + timestamp_ms / 1000 - lead_s

    async def ahead(self, timestamp_ms: float) -> None:
        """Wait until media at `timestamp_ms` is one tick from leaving: how far ahead the stages make it."""
        await self.wait(timestamp_ms - self._tick_s * 1000)

    def elapsed_ms(self) -> float:
        return 0.0 if self.zero is None else (time.monotonic() - self.zero) * 1000
