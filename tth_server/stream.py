"""A session's numbered events and the one stream that reads them: the cursor, replay and media batching.

Every event a session sends is numbered with the session's own `seq` as it is
handed to a stream, and kept in a bounded `ReplayBuffer`, so a stream that
resumes after a dropped connection continues the sequence and first gets
exactly what its client missed. One stream is attached at a time (an
`Attachment`); attaching another takes the session from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tth_server.errors import AttachReason, AttachRefused
from tth_server.events import AudioOut, Event, MediaBatch, Outgoing, Started, VideoOut
from tth_server.outbox import Outbox, ReplayBuffer, gather_media


def _opens_turn(event: AudioOut | VideoOut) -> bool:
    """The turn's first audio: it leaves at once, whatever else is about to be ready."""
    return isinstance(event, AudioOut) and event.chunk.timestamp_ms == 0.0


@dataclass(frozen=True, slots=True)
class Resumed:
    """How a stream that attached to a session already under way picks it up."""

    lossless: bool  # every event after the client's resume_after_seq follows, with its original seq
    last_seq: int  # the session's last seq before this stream attached
    detail: str = ""  # why not lossless


class Attachment:
    """One stream's hold on a session: where it is in the session's sequence, and whether it still holds it."""

    __slots__ = ("active", "batch_media", "cursor", "replaced", "resumed", "started_seq")

    def __init__(self, cursor: int, started_seq: int, resumed: Resumed | None = None) -> None:
        self.cursor = cursor  # the seq of the last event this stream was given
        self.started_seq = started_seq  # 1 on the session's first stream, 0 (outside the sequence) on later ones
        self.resumed = resumed
        self.active = True
        self.replaced = False  # another stream resumed the session and took over
        self.batch_media = False  # the stream takes consecutive media events as one MediaBatch

    def is_active(self) -> bool:
        return self.active


class EventStream:
    """A session's outbox and replay buffer, and the stream attached to them, if any."""

    def __init__(self, outbox: Outbox, replay: ReplayBuffer) -> None:
        self.outbox = outbox
        self.replay = replay
        self._attachment: Attachment | None = None

    @property
    def attached(self) -> bool:
        return self._attachment is not None

    def check_resume(self, after: int) -> None:
        """Raise AttachRefused unless every event after seq `after` is still held for replay."""
        replay = self.replay
        if after > replay.last_seq:
            raise AttachRefused(
                AttachReason.OUT_OF_RANGE,
                f"config.resume_after_seq {after} is ahead of the session's last event (seq {replay.last_seq})",
            )
        if not replay.holds_after(after):
            gone = replay.first_seq - 1 - after
            raise AttachRefused(
                AttachReason.OUT_OF_RANGE,
                f"config.resume_after_seq {after} is too old: the {gone} events after it are no longer held "
                f"(a session keeps its last {replay.max_events} events, at most {replay.max_bytes} bytes: "
                "session.replay_events, session.replay_bytes); attach with config.session_id alone to go on "
                "without them, or start a new session",
            )

    def attach(self, after: int | None, resumed: Resumed | None, started: Callable[[], Started]) -> Attachment:
        """Give the events to a new stream, taking them from the attached one, if any.

        On the first stream the event `started()` makes is seq 1; later streams get the events
        after seq `after` (None: only new ones), then new ones.
        """
        old = self._attachment
        if old is not None:
            old.active, old.replaced = False, True
            self.outbox.wake_reader()
        if self.replay.last_seq == 0:
            attachment = Attachment(0, 1)
            attachment.cursor = self.replay.append(started())
        else:
            attachment = Attachment(self.replay.last_seq if after is None else after, 0, resumed)
        self._attachment = attachment
        return attachment

    def detach(self, attachment: Attachment) -> None:
        attachment.active = False
        if self._attachment is attachment:
            self._attachment = None

    async def next_event(self, attachment: Attachment) -> tuple[int, Outgoing] | None:
        """The stream's next event and its seq: held ones it missed first, then new ones.

        None once the outbox has closed and sent everything, or the stream lost
        the session to another. Each new event is numbered and kept for replay as
        it is handed out, so a stream that drops right after loses nothing. On a
        stream that batches media, a media event comes with the media events of
        its turn that are ready right behind it, as one `MediaBatch` numbered
        with the seq of its last; nothing waits for a batch to fill.
        """
        if not attachment.active:
            return None
        if attachment.cursor < self.replay.last_seq:
            if not self.replay.holds_after(attachment.cursor):
                return None  # the session ended under this stream and let go of its events
            attachment.cursor += 1
            event: Event = self.replay.after(attachment.cursor - 1)
        else:
            queued = await self.outbox.get(attachment.is_active)
            if queued is None:
                return None
            event = queued
            attachment.cursor = self.replay.append(event)
        if attachment.batch_media and isinstance(event, AudioOut | VideoOut):
            if attachment.cursor == self.replay.last_seq and not _opens_turn(event):
                # The frames for audio just released are drawn in this same loop iteration: let them join it.
                await asyncio.sleep(0)
            batch = self._batch(attachment, event)  # moves the cursor to the batch's last event
            return attachment.cursor, batch
        return attachment.cursor, event

    def _batch(self, attachment: Attachment, first: AudioOut | VideoOut) -> MediaBatch:
        """`first` and the media of its turn ready right behind it (held for replay, or queued)."""

        def take() -> AudioOut | VideoOut | None:
            if attachment.cursor < self.replay.last_seq:
                held = self.replay.after(attachment.cursor) if self.replay.holds_after(attachment.cursor) else None
                if not isinstance(held, AudioOut | VideoOut) or held.turn_id != first.turn_id:
                    return None
                attachment.cursor += 1
                return held
            queued = self.outbox.get_media_nowait(first.turn_id)
            if queued is not None:
                attachment.cursor = self.replay.append(queued)
            return queued

        return gather_media(first, take)
