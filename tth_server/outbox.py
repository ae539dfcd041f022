"""The session's bounded outbound queue, with media-aware backpressure.

Producers of text and audio wait while the queue is full, so a slow reader
slows the turn down instead of growing memory; video frames are dropped instead
(and counted per turn), because a late face is worth less than late speech.
Control events (terminal events, errors, notices) are never dropped and never
wait, but they are bounded too: a client that leaves `max_unread` of them
unread has stopped listening, and the outbox says so (`overflowed`); the
servicer then ends the call with RESOURCE_EXHAUSTED instead of queueing an
error for every bad request such a client goes on sending. `purge(turn_id)`
removes a turn's queued events, so nothing of an interrupted turn is sent
after its `turn_interrupted`.

Until the reader has taken a turn's first audio, a producer that queues text
or audio lets the reader run before it goes on, so the first text and the
first audio leave at once (time to first audio is the headline number). After that,
producers run on: audio chunks that queue up behind each other (the pacer
releases a few frames' worth at a time, and a turn starts with a lead's worth)
leave as one event of up to `MAX_AUDIO_MS`, contiguous on the turn's clock,
because each event costs the server and the client one gRPC message, whatever
its size. Nothing waits to be merged; only what is already queued is. A stream
that batches media goes further with `get_media_nowait`: it takes the media
queued behind an event into the same message (`Session.next_event`).

A `ReplayBuffer` holds the last events a session sent, numbered by the session's
`seq`, so a stream that resumes the session after a dropped connection gets
exactly what its client missed.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable

from adapters.media import AudioChunk, VideoFrame
from tth_server.events import AudioOut, Event, MediaBatch, TextOut, TurnCompleted, VideoOut

MAX_AUDIO_MS = 200.0  # the longest audio event made by merging queued chunks
# A stream that batches media takes the media queued behind an event into one message, up to:
MAX_BATCH_ITEMS = 64
MAX_BATCH_BYTES = 512 * 1024  # well under the 4 MiB gRPC clients accept by default
_BACKPRESSURED = (TextOut, AudioOut, VideoOut)  # what `put` and `offer_video` queue; the rest is control


def gather_media(first: AudioOut | VideoOut, take: Callable[[], AudioOut | VideoOut | None]) -> MediaBatch:
    """`first` and the media `take` hands over right behind it (None: nothing more ready), as one batch of at most
    `MAX_BATCH_ITEMS` items and about `MAX_BATCH_BYTES`. `take` hands over only media of `first`'s turn."""
    audio: list[AudioChunk] = []
    video: list[VideoFrame] = []
    size, event = 0, first
    while True:
        if isinstance(event, AudioOut):
            audio.append(event.chunk)
            size += len(event.chunk.pcm)
        else:
            video.append(event.frame)
            size += len(event.frame.data)
        if size >= MAX_BATCH_BYTES or len(audio) + len(video) >= MAX_BATCH_ITEMS:
            break
        nxt = take()
        if nxt is None:
            break
        event = nxt
    return MediaBatch(first.turn_id, tuple(audio), tuple(video))


class Outbox:
    def __init__(self, capacity: int = 256, max_unread: int = 256) -> None:
        self._capacity = capacity
        self.max_unread = max_unread  # control events queued and not yet taken, at most
        self._items: deque[Event] = deque()
        self._readers: list[asyncio.Future[None]] = []  # `get`s waiting for an event (a plain list: hot path)
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self._heard = ""  # the last turn whose audio the reader has taken
        self.dropped: Counter[str] = Counter()  # video frames dropped, by turn id
        self._controls = 0  # control events queued, not yet taken
        self.peak_controls = 0  # the most that were ever queued at once
        self.overflowed = False  # `max_unread` control events were queued at once

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, event: TextOut | AudioOut) -> None:
        """Queue text or audio, waiting while the queue is full."""
        while len(self._items) >= self._capacity and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        self._append(event)
        if event.turn_id != self._heard:
            await asyncio.sleep(0)  # until the turn's first audio is out, let the reader go first

    def offer_video(self, event: VideoOut) -> bool:
        """Queue a frame, or drop and count it when the queue is full."""
        if len(self._items) >= self._capacity:
            self.dropped[event.turn_id] += 1
            return False
        self._append(event)
        return True

    def put_control(self, event: Event) -> None:
        """Queue an event that must never be dropped or delayed by backpressure.

        The `max_unread`-th one queued while none is taken sets `overflowed`; it
        is queued all the same (a terminal event is never lost), and the owner
        ends the session, which stops further ones.
        """
        self._append(event)
        self._controls += 1
        self.peak_controls = max(self.peak_controls, self._controls)
        if self._controls >= self.max_unread:
            self.overflowed = True

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
        self._controls = sum(1 for event in kept if not isinstance(event, _BACKPRESSURED))
        self._wake_writers()
        return frames

    def close(self) -> None:
        """No more events will come; `get` returns None once the queue is empty."""
        self._closed = True
        self._wake_readers()
        self._writable.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def wake_reader(self) -> None:
        """Make a waiting `get` look at its `reading` callback again (its stream is being replaced)."""
        self._wake_readers()

    async def get(self, reading: Callable[[], bool] | None = None) -> Event | None:
        """The next event; None once closed and empty, or as soon as `reading()` turns False."""
        while not self._items:
            if self._closed or (reading is not None and not reading()):
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._readers.append(waiter)
            await waiter
        if reading is not None and not reading():
            return None
        return self._take()

    def get_media_nowait(self, turn_id: str) -> AudioOut | VideoOut | None:
        """The next event if it is audio or video of `turn_id` and already queued; else None, at once."""
        if not self._items:
            return None
        event = self._items[0]
        if not isinstance(event, AudioOut | VideoOut) or event.turn_id != turn_id:
            return None
        taken = self._take()
        assert isinstance(taken, AudioOut | VideoOut)  # _take only merges audio with audio
        return taken

    def _take(self) -> Event:
        event = self._items.popleft()
        if not isinstance(event, _BACKPRESSURED):
            self._controls -= 1
        elif type(event) is AudioOut:
            self._heard = event.turn_id
            if self._items and type(self._items[0]) is AudioOut:
                event = self._merge_audio(event)
        self._wake_writers()
        return event

    def _merge_audio(self, first: AudioOut) -> AudioOut:
        """`first` and the audio queued right behind it, of the same turn and contiguous, as one event."""
        chunk = first.chunk
        parts, marks, end = [chunk.pcm], list(chunk.marks), chunk.end_ms
        while self._items:
            nxt = self._items[0]
            if type(nxt) is not AudioOut or nxt.turn_id != first.turn_id:
                break
            c = nxt.chunk
            if c.sample_rate_hz != chunk.sample_rate_hz or abs(c.timestamp_ms - end) > 0.01:
                break
            if c.end_ms - chunk.timestamp_ms > MAX_AUDIO_MS:
                break
            self._items.popleft()
            parts.append(c.pcm)
            marks.extend(c.marks)
            end = c.end_ms
        if len(parts) == 1:
            return first
        return AudioOut(
            first.turn_id, AudioChunk(b"".join(parts), chunk.sample_rate_hz, chunk.timestamp_ms, tuple(marks))
        )

    def _append(self, event: Event) -> None:
        self._items.append(event)
        if self._readers:
            self._wake_readers()

    def _wake_readers(self) -> None:
        readers, self._readers = self._readers, []
        for waiter in readers:
            if not waiter.done():
                waiter.set_result(None)

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
