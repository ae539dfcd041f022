"""The session's bounded outbound queue, with media-aware backpressure.

Producers of text and audio wait while the queue is full, so a slow reader
slows the turn down instead of growing memory; video frames are dropped instead
(and counted per turn), because a late face is worth less than late speech.
Control events (started, terminal events, errors) are never dropped and never
wait. `purge(turn_id)` removes a turn's queued events, so nothing of an
interrupted turn is sent after its `turn_interrupted`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque

from tth_server.events import AudioOut, Event, TextOut, VideoOut


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

    async def get(self) -> Event | None:
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        event = self._items.popleft()
        self._wake_writers()
        return event

    def _append(self, event: Event) -> None:
        self._items.append(event)
        self._readable.set()

    def _wake_writers(self) -> None:
        if len(self._items) < self._capacity:
            self._writable.set()
