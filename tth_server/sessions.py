"""This replica's sessions: opening, attaching and resuming streams, detaching, expiry and the end.

`SessionTable` attaches streams to sessions (restoring a session from the
`SessionStore` when another replica started it), lets a session whose stream
dropped wait `session.resume_window_s` for a resume, ends a session with a
stream at its idle or length limit (`limits.session_idle_s`,
`limits.session_max_s`, with a notice `limits.end_notice_s` ahead), and ends
sessions, releasing their limits slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator

from adapters.logs import log
from tth_server.errors import AttachReason, AttachRefused, echo
from tth_server.events import ErrorCode, ErrorOut, Notice, NoticeKind
from tth_server.limits import LimitExceeded, Limits
from tth_server.session import Session, SessionServices, SessionState
from tth_server.store import StoreError
from tth_server.stream import Attachment, Resumed


def unknown_session(session_id: str) -> AttachRefused:
    return AttachRefused(
        AttachReason.NOT_FOUND,
        f"config.session_id {echo(session_id)} is not a session this caller can attach to (unknown, ended or expired)",
    )


class SessionTable:
    """This replica's sessions: opening, attaching and resuming streams, detaching, expiry and the end."""

    def __init__(self, services: SessionServices, limits: Limits) -> None:
        """`services` are what its sessions work with; `limits` admits them and sets their idle and length limits."""
        self.services = services
        self._limits = limits
        self.draining = False  # the replica is shutting down: a session left is sealed in the store, not forgotten
        self._live: dict[str, Session] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdogs: dict[str, asyncio.Task[None]] = {}  # per session with a stream: its idle and length limits

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._live

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def get(self, session_id: str) -> Session | None:
        return self._live.get(session_id)

    def values(self) -> list[Session]:
        return list(self._live.values())

    async def open(self, session: Session) -> Attachment:
        """A new session on its first stream."""
        self._hold_slot(session)
        self._live[session.id] = session
        await session.persist()
        return self._attached(session, session.attach(None, None))

    async def add_waiting(self, session: Session, timeout_s: float) -> None:
        """A session made ahead of time (CreateSession): it ends unless a stream attaches within `timeout_s`."""
        self._live[session.id] = session
        await session.persist()
        self._expire_in(session, timeout_s)

    async def attach(self, session_id: str, key_id: str, after: int | None) -> tuple[Session, Attachment]:
        """A new stream on an existing session: live here, or restored from the store.

        `after` is the client's `resume_after_seq`: the stream then gets every
        event after it (refused when they are no longer all held) and takes the
        session over from a stream still attached. Without it nothing is
        replayed, and a session attached to another stream here is refused.
        """
        session = self._live.get(session_id)
        if session is not None and not session.ending and await self._stale(session):
            self.supersede(session)
        if session is not None and session.superseded:
            session = None  # it lives on another replica now (or ended there): ask the store
        lost, restored = "", session is None
        if session is None:
            session, resumed, lost = await self._restore(session_id, key_id, after)
        elif session.key_id != key_id or session.ending:  # another key's session is, to this caller, none at all
            raise unknown_session(session_id)
        else:
            if session.attached and after is None:
                raise AttachRefused(
                    AttachReason.NOT_FOUND,
                    f"config.session_id {echo(session_id)} is attached to another stream; "
                    "set config.resume_after_seq to take it over",
                )
            if after is not None:
                session.stream.check_resume(after)
            last = session.replay.last_seq
            if last == 0:
                resumed = None
            elif after is None:
                resumed = Resumed(False, last, "config.resume_after_seq was not set, so nothing was replayed")
            else:
                resumed = Resumed(True, last)
        self._hold_slot(session)
        self._live[session.id] = session
        handle = self._expiry.pop(session.id, None)
        if handle is not None:
            handle.cancel()
        attachment = self._attached(session, session.attach(None if restored else after, resumed))
        if lost:
            message = f"turn {lost} was lost: the replica running it stopped before it ended; send the text again"
            session.outbox.put_control(ErrorOut(ErrorCode.UNAVAILABLE, message, True, 0, lost))
            await session.persist()
        return session, attachment

    def detach(self, session: Session, attachment: Attachment) -> None:
        """The stream is gone: the session waits `session.resume_window_s` for a resume, then ends."""
        session.detach(attachment)
        if session.attached:
            return  # another stream took it over
        self._unwatch(session)
        window = self.services.settings.resume_window_s
        if session.closed or self.draining or window <= 0:
            self._end_soon(session)
            return
        log.info("stream dropped; session waits for a resume", resume_window_s=window)
        self._expire_in(session, window)

    async def end(self, session: Session) -> None:
        """End the session here: interrupt its turn, free its slot and buffers, and forget it in the store.

        A replica that is shutting down leaves the session in the store instead,
        so the client can resume it on another replica.
        """
        if session.released:
            return
        session.released = True
        await self._finish(session)

    def _end_soon(self, session: Session) -> None:
        """`end`, in a task of its own; from this moment on no stream can attach to the session."""
        if not session.released:
            session.released = True
            self._spawn(self._finish(session))

    async def _finish(self, session: Session) -> None:
        if self._live.get(session.id) is session:
            handle = self._expiry.pop(session.id, None)
            if handle is not None:
                handle.cancel()
            self._unwatch(session)
        try:
            await session.close()
            if self.draining and not session.superseded:
                await session.seal()
            else:
                await session.forget()
        finally:
            if self._live.get(session.id) is session:
                del self._live[session.id]
            session.replay.clear()
            if session.holds_slot:
                session.holds_slot = False
                self._limits.close_session(session.key_id)

    def supersede(self, session: Session) -> None:
        """Another replica has the session now (or has ended it): end this copy, leaving the store alone."""
        if session.superseded:
            return
        session.superseded = True
        log.warning("session taken over by another replica; ending it here", session_id=session.id)
        if session.ended is None:
            message = "this session was resumed on another replica; this stream no longer has it"
            session.ended = ErrorOut(ErrorCode.FAILED_PRECONDITION, message)
        self._end_soon(session)

    async def aclose(self) -> None:
        """End every session without touching the store (the process is going away)."""
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        for watchdog in self._watchdogs.values():
            watchdog.cancel()
        self._watchdogs.clear()
        for session in self.values():
            await session.close()
            if session.holds_slot:
                session.holds_slot = False
                self._limits.close_session(session.key_id)
        self._live.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    async def _restore(self, session_id: str, key_id: str, after: int | None) -> tuple[Session, Resumed | None, str]:
        """Take over a session this replica does not have, from the store; with the turn it lost, if any."""
        store = self.services.store
        unknown = unknown_session(session_id)
        if len(session_id) > 128:
            raise unknown
        try:
            state = await store.load(session_id)
            if state is None or state.key_id != key_id:  # check the owner before claiming: claiming fences it
                raise unknown
            if state.sealed and after is not None and after > state.last_seq:
                raise AttachRefused(
                    AttachReason.OUT_OF_RANGE,
                    f"config.resume_after_seq {after} is ahead of the session's last event (seq {state.last_seq})",
                )
            state = await store.claim(session_id)
        except StoreError as exc:
            raise AttachRefused(
                AttachReason.UNAVAILABLE, f"cannot look up config.session_id: {exc}; retry", 1.0
            ) from None
        if state is None:
            raise unknown
        session = Session.restore(self.services, state, on_superseded=self.supersede)
        log.info("session restored from the store", session_id=session_id, epoch=state.epoch)
        if state.last_seq == 0 and not after:
            return session, None, state.running_turn_id
        session.replay.last_seq = max(state.last_seq, after or 0)
        lossless = state.sealed and after == state.last_seq
        detail = (
            ""
            if lossless
            else "the session was restored from the shared store after its replica stopped: events sent after "
            "its last save cannot be replayed; its history, controls and persona are intact"
        )
        return session, Resumed(lossless, session.replay.last_seq, detail), state.running_turn_id

    async def _stale(self, session: Session) -> bool:
        """True when, by a shared store, another replica took the session over or ended it since this one had it."""
        store = self.services.store
        if not store.shared:
            return False
        try:
            epoch = await store.epoch(session.id)
        except StoreError:
            return False  # the store is down: this copy is the best there is
        return epoch is not None and epoch > session.epoch  # a missing record (expired, never saved) is ours

    def _hold_slot(self, session: Session) -> None:
        if session.holds_slot:
            return
        try:
            self._limits.open_session(session.key_id)
        except LimitExceeded as exc:
            raise AttachRefused(AttachReason.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s) from None
        session.holds_slot = True

    def _attached(self, session: Session, attachment: Attachment) -> Attachment:
        """`attachment`, with the session's limits watched for as long as a stream has it."""
        self._unwatch(session)
        self._watchdogs[session.id] = asyncio.get_running_loop().create_task(self._watch(session))
        return attachment

    def _unwatch(self, session: Session) -> None:
        watchdog = self._watchdogs.pop(session.id, None)
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()

    async def _watch(self, session: Session) -> None:
        """End the session at its idle or length limit, with a notice `end_notice_s` ahead of either."""
        limits = self._limits.settings
        started = session.created
        warned_for = 0.0
        while True:
            now = time.monotonic()
            if session.state is not SessionState.IDLE:
                session.last_request = now  # a running turn is activity
            ends = []
            if limits.session_max_s:
                ends.append(
                    (
                        started + limits.session_max_s,
                        f"maximum length of {limits.session_max_s:g} s (limits.session_max_s)",
                    )
                )
            if limits.session_idle_s:
                ends.append(
                    (
                        session.last_request + limits.session_idle_s,
                        f"idle limit of {limits.session_idle_s:g} s with no request (limits.session_idle_s)",
                    )
                )
            if not ends:
                return
            deadline, why = min(ends)
            if now >= deadline:
                await session.end(ErrorCode.RESOURCE_EXHAUSTED, f"the session reached its {why}; start a new one")
                return
            if now >= deadline - limits.end_notice_s and abs(deadline - warned_for) > 1.0:
                warned_for = deadline
                session.notify(
                    Notice(
                        NoticeKind.SESSION_ENDING, f"the session will end at its {why}", int((deadline - now) * 1000)
                    )
                )
            next_check = deadline if now >= deadline - limits.end_notice_s else deadline - limits.end_notice_s
            await asyncio.sleep(min(1.0, max(0.01, next_check - now)))

    def _expire_in(self, session: Session, delay_s: float) -> None:
        old = self._expiry.pop(session.id, None)
        if old is not None:
            old.cancel()
        self._expiry[session.id] = asyncio.get_running_loop().call_later(delay_s, self._expire, session)

    def _expire(self, session: Session) -> None:
        self._expiry.pop(session.id, None)
        if not session.attached:
            log.info("session expired", session_id=session.id)
            self._end_soon(session)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
