"""A provider's circuit breaker: after enough consecutive failures, calls skip the provider for a cooldown."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


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
