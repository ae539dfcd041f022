"""A session's record in the store: saved in order, sealed when its replica lets go, forgotten when it ends.

A session saves its `SessionRecord` as it changes and before each terminal
event, so a replica taking it over never ends a turn twice. A store that fails
is logged and the session goes on; a save the store refuses (another replica
claimed the session since) reports the session lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from adapters.logs import log
from tth_server.events import ErrorOut, Event, TurnCompleted, TurnInterrupted
from tth_server.outbox import Outbox
from tth_server.store import SessionRecord, SessionStore, StoreError


def _is_terminal(event: Event) -> bool:
    return isinstance(event, TurnCompleted | TurnInterrupted) or (isinstance(event, ErrorOut) and bool(event.turn_id))


async def last_words(outbox: Outbox) -> tuple[bool, str]:
    """Empty the closed `outbox` of a session this replica lets go of (it is shutting down).

    Events still queued will never be sent from here: returns whether none was
    (the resume is then lossless, and the record sealed), and the turn whose
    terminal event was among them, if any (that turn counts as lost).
    """
    unsent, lost = False, ""
    while (event := await outbox.get()) is not None:
        unsent = True
        if _is_terminal(event):
            lost = event.turn_id
    return not unsent, lost


class SessionSaver:
    """Saves one session's record to `store`; calls `lost` when the store says another replica has the session."""

    def __init__(self, store: SessionStore, lost: Callable[[], None]) -> None:
        self._store = store
        self._lost = lost
        self._lock = asyncio.Lock()

    async def save(self, snapshot: Callable[[], SessionRecord]) -> None:
        """Save the record `snapshot` makes; saves land in the order their snapshots were taken."""
        async with self._lock:
            try:
                saved = await self._store.save(snapshot())
            except StoreError as exc:
                log.warning("session state not saved", error=str(exc))
                return
        if not saved:
            self._lost()

    async def forget(self, session_id: str, epoch: int) -> None:
        try:
            await self._store.delete(session_id, epoch)
        except StoreError as exc:
            log.warning("session state not deleted; it expires with store.ttl_s", error=str(exc))
