"""The session's bounded outbound queue, with media-aware backpressure.

Producers of text and audio wait while the queue is full, so a slow reader
slows the turn down instead of growing memory; video frames are dropped instead
(and counted per turn), because a late face is worth less than late speech.
Control events (started, terminal events, errors) are never dropped and never
wait. `purge(turn_id)` removes a turn's queued events, so nothing of an
interrupted turn is sent after its `turn_interrupted`.

A `ReplayBuffer` holds the last events a session sent, numbered by the session's
`seq`, so a stream that resumes the session after a dropped connection gets
exactly what its client missed.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable

from tth_server.events import AudioOut, Event, TextOut, TurnCompleted, VideoOut


class Outbox:
    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._items: deque[Event] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self.dropped: Counter[str] = Counter()  # video frames dropped, by turn id

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, event: TextOut | AudioOut) -> None:
        """Queue text or audio, waiting while the queue is full."""
        while len(self._items) >= self._capacity and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        self._append(event)
        await asyncio.sleep(0)

    def offer_video(self, event: VideoOut) -> bool:
        """Queue a frame, or drop and count it when the queue is full."""
        if len(self._items) >= self._capacity:
            self.dropped[event.turn_id] += 1
            return False
        self._append(event)
        return True

    def put_control(self, event: Event) -> None:
        """Queue an event that must never be dropped or delayed by backpressure."""
        self._append(event)

    def purge(self, turn_id: str) -> int:
        """Remove every queued event of `turn_id`; returns how many video frames that took back."""
        kept: deque[Event] = deque()
        frames = 0
        for event in self._items:
            if getattr(event, "turn_id", "") != turn_id:
                kept.append(event)
            elif isinstance(event, VideoOut):
                frames += 1
        self._items = kept
        self._wake_writers()
        return frames

    def close(self) -> None:
        """No more events will come; `get` returns None once the queue is empty."""
        self._closed = True
        self._readable.set()
        self._writable.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def wake_reader(self) -> None:
        """Make a waiting `get` look at its `reading` callback again (its stream is being replaced)."""
        self._readable.set()

    async def get(self, reading: Callable[[], bool] | None = None) -> Event | None:
        """The next event; None once closed and empty, or as soon as `reading()` turns False."""
        while not self._items:
            if self._closed or (reading is not None and not reading()):
                return None
            self._readable.clear()
            await self._readable.wait()
        if reading is not None and not reading():
            return None
        event = self._items.popleft()
        self._wake_writers()
        return event

    def _append(self, event: Event) -> None:
        self._items.append(event)
        self._readable.set()

    def _wake_writers(self) -> None:
        if len(self._items) < self._capacity:
            self._writable.set()


def _size(event: Event) -> int:
    """Roughly how many bytes an event holds on to."""
    if isinstance(event, AudioOut):
        return len(event.chunk.pcm) + 64
    if isinstance(event, VideoOut):
        return len(event.frame.data) + 64
    if isinstance(event, TextOut | TurnCompleted):
        return len(event.text) + 256
    return 256


class ReplayBuffer:
    """The last events a session sent, by seq: at most `max_events` of them, and about `max_bytes`.

    `append` numbers each event sent with the session's next seq, so the
    sequence belongs to the session, not to a stream, and continues across
    resumes. The newest event is always kept, whatever its size.
    """

    def __init__(self, max_events: int, max_bytes: int, last_seq: int = 0) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[tuple[Event, int]] = deque()
        self._bytes = 0
        self.last_seq = last_seq  # the seq of the newest event; 0 before the first

    @property
    def first_seq(self) -> int:
        """The seq of the oldest event held (last_seq + 1 when none is)."""
        return self.last_seq - len(self._events) + 1

    def append(self, event: Event) -> int:
        size = _size(event)
        self._events.append((event, size))
        self._bytes += size
        self.last_seq += 1
        while len(self._events) > 1 and (len(self._events) > self.max_events or self._bytes > self.max_bytes):
            self._bytes -= self._events.popleft()[1]
        return self.last_seq

    def holds_after(self, seq: int) -> bool:
        """True when every event after `seq` is still held."""
        return self.first_seq - 1 <= seq <= self.last_seq

    def after(self, seq: int) -> Event:
        """The event numbered seq + 1, which must be held."""
        return self._events[seq + 1 - self.first_seq][0]

    def clear(self) -> None:
        self._events.clear()
        self._bytes = 0
