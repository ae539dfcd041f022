"""Session state between streams: what a replica needs to continue a session another replica started.

A `SessionStore` keeps each session's `SessionRecord` (persona, default and pending
controls, history, render settings, the owner's key id, where its event sequence
stands, and the turn it was running). Sessions save it when they are created, when
a turn starts, before a turn's terminal event is sent, on each control update, and
once more when a shutting-down replica ends them; `MemoryStore` (the default)
keeps it in this process, `RedisStore` in Redis, shared by every replica.

Ownership is fenced by an epoch. `claim` (a replica taking a session over) bumps
it; a save or delete carrying an older epoch is refused, so a replica that lost a
session to another can never overwrite the new owner's state: its `save` returns
False and it ends its copy of the session. In a shared store `delete` leaves a
tombstone (the epoch, for `ttl_s`), so a stale owner cannot bring back a session
another replica has ended either; a record that is simply missing (it expired, or
the store was down when the session began) is written afresh.

Replayable events are not stored: they stay in the replica that sent them (see
`tth_server.outbox.ReplayBuffer`). A session restored from the store continues its
history and controls, not its unsent media.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from adapters.base import Message
from adapters.controls import ControlPatch, EmotionLabel
from adapters.errors import ConfigError
from adapters.media import RenderSettings
from tth_server.config import StoreSettings
from tth_server.pipeline import SegmentPolicy

FORMAT = 2  # bumped when SessionRecord's JSON changes; `from_json` reads every format in READABLE_FORMATS
# 1: before running_request_id. A key the record lacks takes the field's default, and a key this version
# does not know is ignored, so a record from a replica one version apart loads either way.
READABLE_FORMATS = frozenset({1, 2})


class StoreError(Exception):
    """The store could not be reached or answered nonsense; the message says which and where."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Everything about a session that outlives the process running it."""

    session_id: str
    key_id: str
    persona_id: str
    defaults: ControlPatch
    pending: ControlPatch
    history: tuple[Message, ...]
    render: RenderSettings
    segments: SegmentPolicy
    lead_ms: float
    turns: int = 0
    last_seq: int = 0  # the seq of the last event the session had sent when this was saved
    running_turn_id: str = ""  # a turn without a terminal event the client can have seen
    running_request_id: str = ""  # the client's request_id of the text that started running_turn_id
    sealed: bool = False  # saved by a replica ending the session: nothing was sent after last_seq
    created_at: float = field(default_factory=time.time)  # unix time, for limits.session_max_s
    epoch: int = 0  # ownership fence; set by the store, not part of the JSON

    def to_json(self) -> str:
        data = asdict(self)
        del data["epoch"]
        data["format"] = FORMAT
        data["history"] = [[m.role, m.text] for m in self.history]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, epoch: int) -> SessionRecord:
        data: dict[str, Any] = json.loads(text)
        if data.pop("format", None) not in READABLE_FORMATS:
            raise StoreError(f"stored session {data.get('session_id')!r} has an unknown format")
        known = {f.name for f in fields(cls)}
        return cls(
            **{
                **{k: v for k, v in data.items() if k in known},
                "defaults": _patch(data["defaults"]),
                "pending": _patch(data["pending"]),
                "history": tuple(Message(role, text) for role, text in data["history"]),
                "render": RenderSettings(**data["render"]),
                "segments": SegmentPolicy(**data["segments"]),
                "epoch": epoch,
            }
        )


def _patch(data: dict[str, Any]) -> ControlPatch:
    label = data.get("label")
    return ControlPatch(**{**data, "label": EmotionLabel(label) if label is not None else None})


class SessionStore(ABC):
    """Saves, claims and deletes session state; every method may raise StoreError."""

    shared = False  # True when other replicas see the same state

    async def start(self) -> None:
        """Connect; raises ConfigError when the store cannot be reached."""

    async def aclose(self) -> None:
        """Release connections; safe to call twice."""

    @abstractmethod
    async def save(self, state: SessionRecord) -> bool:
        """Store `state`, unless a newer owner (a higher epoch) claimed or ended the session: then False."""

    @abstractmethod
    async def load(self, session_id: str) -> SessionRecord | None:
        """The stored state, or None; ownership does not change."""

    @abstractmethod
    async def epoch(self, session_id: str) -> int | None:
        """The epoch of the session's record or tombstone; None when the store knows nothing of it."""

    @abstractmethod
    async def claim(self, session_id: str) -> SessionRecord | None:
        """Take ownership: the stored state with a new, higher epoch, or None when there is none."""

    @abstractmethod
    async def delete(self, session_id: str, epoch: int) -> None:
        """Forget the session, unless a newer owner (a higher epoch) claimed it."""


class MemoryStore(SessionStore):
    """State in this process: one replica, nothing shared."""

    def __init__(self) -> None:
        self._states: dict[str, SessionRecord] = {}

    async def save(self, state: SessionRecord) -> bool:
        current = self._states.get(state.session_id)
        if current is not None and current.epoch > state.epoch:
            return False
        self._states[state.session_id] = state
        return True

    async def load(self, session_id: str) -> SessionRecord | None:
        return self._states.get(session_id)

    async def epoch(self, session_id: str) -> int | None:
        current = self._states.get(session_id)
        return None if current is None else current.epoch

    async def claim(self, session_id: str) -> SessionRecord | None:
        current = self._states.get(session_id)
        if current is None:
            return None
        claimed = replace(current, epoch=current.epoch + 1)
        self._states[session_id] = claimed
        return claimed

    async def delete(self, session_id: str, epoch: int) -> None:
        # No tombstone: in one process no other copy of the session can outlive it.
        current = self._states.get(session_id)
        if current is not None and current.epoch <= epoch:
            del self._states[session_id]

    def __len__(self) -> int:
        return len(self._states)


# Each script runs atomically in Redis, so check-then-write cannot interleave with another replica.
_SAVE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and tonumber(epoch) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {epoch, state}
"""
_DELETE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and tonumber(epoch) <= tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], 'state')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisStore(SessionStore):
    """State in Redis, one hash per session (`epoch`, `state` as JSON), expiring `ttl_s` after its last write.

    An ended session's hash keeps only `epoch` (a tombstone) until it expires.
    """

    shared = True

    def __init__(self, settings: StoreSettings) -> None:
        try:
            from redis.asyncio import Redis
        except ImportError:
            raise ConfigError("store.kind redis needs the redis package: pip install 'tth[redis]'") from None
        self._settings = settings
        self._ttl_ms = int(settings.ttl_s * 1000)
        self._redis = Redis.from_url(
            settings.url,
            decode_responses=True,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
        )
        self._save = self._redis.register_script(_SAVE)
        self._claim = self._redis.register_script(_CLAIM)
        self._delete = self._redis.register_script(_DELETE)

    def _key(self, session_id: str) -> str:
        return self._settings.key_prefix + session_id

    async def _call(self, what: str, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self._settings.timeout_s)
        except TimeoutError:
            limit = self._settings.timeout_s
            raise StoreError(f"redis at store.url did not answer {what} within {limit:g} s") from None
        except Exception as exc:  # redis-py's ConnectionError, ResponseError ... name the operation, not the URL
            raise StoreError(f"redis at store.url failed {what}: {type(exc).__name__}: {exc}") from None

    async def start(self) -> None:
        try:
            await self._call("PING", self._redis.ping())
        except StoreError as exc:
            raise ConfigError(f"store.url: cannot reach redis: {exc}") from None

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def save(self, state: SessionRecord) -> bool:
        args: list[str | int] = [state.epoch, state.to_json(), self._ttl_ms]
        return bool(await self._call("a save", self._save(keys=[self._key(state.session_id)], args=args)))

    async def load(self, session_id: str) -> SessionRecord | None:
        found = await self._call("a load", self._redis.hgetall(self._key(session_id)))
        if not found or "state" not in found:
            return None
        return SessionRecord.from_json(found["state"], int(found.get("epoch", 0)))

    async def epoch(self, session_id: str) -> int | None:
        found = await self._call("an epoch lookup", self._redis.hget(self._key(session_id), "epoch"))
        return None if found is None else int(found)

    async def claim(self, session_id: str) -> SessionRecord | None:
        found = await self._call("a claim", self._claim(keys=[self._key(session_id)], args=[self._ttl_ms]))
        if not found:
            return None
        epoch, text = found
        return SessionRecord.from_json(text, int(epoch))

    async def delete(self, session_id: str, epoch: int) -> None:
        await self._call("a delete", self._delete(keys=[self._key(session_id)], args=[epoch, self._ttl_ms]))


def make_store(settings: StoreSettings) -> SessionStore:
    return RedisStore(settings) if settings.kind == "redis" else MemoryStore()
