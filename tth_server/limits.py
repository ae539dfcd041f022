"""Admission limits: concurrent sessions (total and per key) and turns per minute per key.

A refused session is RESOURCE_EXHAUSTED with the limit named and when to retry;
a refused turn is an in-stream RESOURCE_EXHAUSTED error with `retry_after_ms`,
and the session goes on. Idle time and maximum session length are enforced by
the session table (`tth_server.sessions`) with the same settings.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque

from tth_server.config import LimitSettings
from tth_server.errors import ServerError
from tth_server.events import ErrorCode


class LimitExceeded(ServerError):
    """A session or a turn over one of the limits: RESOURCE_EXHAUSTED, retryable after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(ErrorCode.RESOURCE_EXHAUSTED, message, retry_after_s, retryable=True)

    @property
    def retry_after_ms(self) -> int:
        """Rounded up: a client that waits this long is admitted."""
        return int(self.retry_after_s * 1000) + 1


class Limits:
    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self._sessions: Counter[str] = Counter()
        self._turns: defaultdict[str, deque[float]] = defaultdict(deque)

    @property
    def active_sessions(self) -> int:
        return sum(self._sessions.values())

    def open_session(self, key_id: str) -> None:
        s = self.settings
        if s.max_sessions and self.active_sessions >= s.max_sessions:
            raise LimitExceeded(
                f"the server is at its limit of {s.max_sessions} sessions (limits.max_sessions); "
                "retry in a few seconds or on another replica",
                5.0,
            )
        if s.max_sessions_per_key and self._sessions[key_id] >= s.max_sessions_per_key:
            raise LimitExceeded(
                f"this API key has {s.max_sessions_per_key} open sessions, its limit "
                "(limits.max_sessions_per_key); close one first",
                5.0,
            )
        self._sessions[key_id] += 1

    def close_session(self, key_id: str) -> None:
        self._sessions[key_id] -= 1
        if self._sessions[key_id] <= 0:
            del self._sessions[key_id]

    def open_generate(self, key_id: str) -> None:
        """A `Generate` call: a session's place (give it back with `close_session`) and a turn of the key's
        budget, both or neither; raises LimitExceeded for whichever is spent."""
        self.open_session(key_id)
        try:
            self.admit_turn(key_id)
        except LimitExceeded:
            self.close_session(key_id)
            raise

    def admit_turn(self, key_id: str, now: float | None = None) -> None:
        """Count a turn against the key's per-minute budget, or raise LimitExceeded."""
        limit = self.settings.turns_per_minute_per_key
        if not limit:
            return
        now = time.monotonic() if now is None else now
        window = self._turns[key_id]
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= limit:
            retry = window[0] + 60.0 - now
            raise LimitExceeded(
                f"this API key started {limit} turns in the last minute, its limit "
                f"(limits.turns_per_minute_per_key); retry in {retry:.1f} s",
                retry,
            )
        window.append(now)
