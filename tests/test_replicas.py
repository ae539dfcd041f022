"""Several replicas share session state in Redis: a session started on one continues on another.

The tests start their own redis-server (found on PATH; `scripts/redis.sh install`
installs it) on a free port, and real `tth-server` processes. Run as a module,
this file is such a server with one extra LLM adapter, `history_echo`, which
says how much history it was given, so a test can see it survive a replica.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from adapters.base import LLMAdapter, LLMRequest, Message
from adapters.controls import ControlPatch, EmotionLabel
from adapters.errors import ConfigError
from adapters.media import RenderSettings
from tests.conftest import ServerFactory
from tests.wire import Conversation, arms, control, is_terminal
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.config import StoreSettings, load_config
from tth_server.pipeline import SegmentPolicy
from tth_server.store import MemoryStore, RedisStore, SessionRecord, SessionStore

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "redis-server is not installed: run scripts/redis.sh install (apt-get install -y redis-server)"


class HistoryEcho(LLMAdapter):
    """Replies with who it is told it is, how much history it got and the last user text in it; "slowly" slows it."""

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        users = [m.text for m in request.history if m.role == "user"]
        persona = request.system_prompt.split(",")[0]  # "You are Sam, speaking aloud ..."
        reply = f"{persona}. I remember {len(request.history)} messages. You last said: {users[-1] if users else 'no'}."
        slow = "slowly" in request.user_text
        if slow:
            reply += " And now I will keep on talking for quite a while, one word at a time." * 3
        for token in reply.split(" "):
            if slow:
                await asyncio.sleep(0.05)
            yield token + " "


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free port, no persistence; the tests fail (not skip) when it is missing."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(INSTALL)
    port = _free_port()
    args = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("redis-server did not start") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    proc, url = _redis_server()
    yield url
    proc.terminate()
    proc.wait(10)


def _record(session_id: str) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        key_id="k-test",
        persona_id="casual",
        defaults=ControlPatch(speech_rate=1.2),
        pending=ControlPatch(label=EmotionLabel.SAD, intensity=0.7),
        history=(Message("user", "Hello"), Message("assistant", "Hi! [sad] ünïcode")),
        render=RenderSettings(15, 128, 96),
        segments=SegmentPolicy(1, 200, False),
        lead_ms=250.0,
        turns=3,
        last_seq=42,
        running_turn_id="t-1",
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    redis = RedisStore(StoreSettings(kind="redis", url=request.getfixturevalue("redis_url"), ttl_s=60))
    await redis.start()
    yield redis
    await redis.aclose()


async def test_a_store_keeps_sessions_whole_and_fences_an_owner_that_lost_one(store: SessionStore) -> None:
    record = _record(f"s-{time.monotonic_ns()}")
    sid = record.session_id
    assert await store.epoch(sid) is None
    assert await store.save(record)
    assert await store.load(sid) == record and await store.epoch(sid) == 0
    claimed = await store.claim(sid)  # another replica takes it over
    assert claimed is not None and claimed.epoch == 1 and replace(claimed, epoch=0) == record
    assert not await store.save(replace(record, turns=4))  # the old owner is fenced off ...
    await store.delete(sid, record.epoch)  # ... and cannot delete it either
    assert await store.save(replace(claimed, turns=5))
    assert (await store.load(sid)) == replace(record, turns=5, epoch=1)
    await store.delete(sid, claimed.epoch)
    assert await store.load(sid) is None and await store.claim(sid) is None
    if store.shared:  # a tombstone: the stale owner cannot bring back a session another replica ended
        assert await store.epoch(sid) == 1 and not await store.save(record)


async def test_redis_records_expire_after_ttl_and_a_missing_redis_fails_at_start(redis_url: str) -> None:
    short = RedisStore(StoreSettings(kind="redis", url=redis_url, ttl_s=0.2))
    await short.start()
    record = _record("s-short-lived")
    assert await short.save(record)
    await asyncio.sleep(0.5)
    assert await short.load(record.session_id) is None
    await short.aclose()
    nowhere = RedisStore(StoreSettings(kind="redis", url=f"redis://127.0.0.1:{_free_port()}/0", timeout_s=1))
    with pytest.raises(ConfigError, match=r"store\.url: cannot reach redis"):
        await nowhere.start()
    await nowhere.aclose()
    with pytest.raises(ConfigError, match=r"store.kind must be one of 'memory' or 'redis', got"):
        load_config("mock", env={"TTH_STORE__KIND": "etcd"})


async def test_a_session_goes_on_when_redis_goes_away(start_server: ServerFactory) -> None:
    proc, url = _redis_server()
    try:
        store = {"kind": "redis", "url": url, "timeout_s": 0.3}
        server = await start_server(store=store, session={"max_lead_ms": 1_000_000})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            conv = Conversation(pb_grpc.ConversationServiceStub(channel))
            await conv.start()
            await conv.say("Hello!")
            assert arms(await conv.until_terminal())[-1] == "turn_complete"
            proc.kill()
            proc.wait(10)
            await conv.update(label="happy")  # saves now fail: logged, and the session goes on here
            await conv.say("Still there?")
            assert arms(await conv.until_terminal())[-1] == "turn_complete"
            assert await conv.finish() == grpc.StatusCode.OK
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_session_moved_between_live_replicas_is_fenced_on_the_one_that_lost_it(
    redis_url: str, start_server: ServerFactory
) -> None:
    shared = {"store": {"kind": "redis", "url": redis_url}, "session": {"max_lead_ms": 1_000_000}}
    a, b = await start_server(**shared), await start_server(**shared)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
    ):
        conv = Conversation(pb_grpc.ConversationServiceStub(to_a))
        session_id = (await conv.start()).session_id
        await conv.say("Hello!")
        last = (await conv.until_terminal())[-1].seq
        conv.call.cancel()  # A keeps the session, waiting for a resume ...
        on_b = Conversation(pb_grpc.ConversationServiceStub(to_b))  # ... but the client comes back on B
        started = (await on_b.start(session_id=session_id, resume_after_seq=last - 3)).started
        assert not started.resumed.lossless and started.resumed.last_seq >= last - 3
        await on_b.say("Hello from B!")
        events = await on_b.until_terminal()
        assert events[0].seq == started.resumed.last_seq + 1 and arms(events)[-1] == "turn_complete"
        # Back on A: A sees that B owns the session now, drops its stale copy and takes the session back.
        again = Conversation(pb_grpc.ConversationServiceStub(to_a))
        back = (await again.start(session_id=session_id, resume_after_seq=events[-1].seq)).started
        assert back.resumed.last_seq == events[-1].seq and a.runtime.sessions.get(session_id) is not None
        await again.say("And A again.")
        assert arms(await again.until_terminal())[-1] == "turn_complete"
        await on_b.say("B?")  # B's copy is fenced off at its next save and ends
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while True:
                await on_b.next()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "resumed on another replica" in str(err.value.details())
        assert await again.finish() == grpc.StatusCode.OK


async def listening_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    """The port a server started with `--listen 127.0.0.1:0` reports in its JSON log (no race for a free port)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if (port := _reported_port(log)) is not None:
            return port
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server did not start:\n{_tail(log)}")


def _reported_port(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"server started"' in line:
            return int(json.loads(line)["port"])
    return None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


class Replica:
    """A `tth-server` process (this module as __main__) sharing `redis_url`."""

    def __init__(self, redis_url: str, log: Path, **env: str) -> None:
        self.log = log
        environment = {
            **os.environ,
            "TTH_STORE__KIND": "redis",
            "TTH_STORE__URL": redis_url,
            "TTH_COMPONENTS__LLM__ADAPTER": "history_echo",
            "TTH_SESSION__MAX_LEAD_MS": "1000000",  # unpaced: turns take no longer than their making
            "TTH_SERVER__GRACE_PERIOD_S": "2",
            "TTH_LOG__FORMAT": "json",
            **env,
        }
        args = [sys.executable, "-m", "tests.test_replicas", "--profile", "mock", "--listen", "127.0.0.1:0"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
        self.channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> pb_grpc.ConversationServiceStub:
        assert self.channel is not None
        return pb_grpc.ConversationServiceStub(self.channel)

    async def ready(self) -> Replica:
        port = await listening_port(self.log, self.proc)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        await asyncio.wait_for(self.channel.channel_ready(), 30)
        return self

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.channel is not None:
            await self.channel.close()


@pytest.fixture
async def replicas(redis_url: str, tmp_path: Path) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        await replica.stop()


async def _two(redis_url: str, tmp_path: Path, started: list[Replica]) -> tuple[Replica, Replica]:
    started += [Replica(redis_url, tmp_path / "a.log"), Replica(redis_url, tmp_path / "b.log")]
    a, b = await asyncio.gather(*(r.ready() for r in started))
    return a, b


def _tts(report: pb.ControlReport, name: str) -> pb.AppliedControl:
    return next(a for a in report.applied if a.field == name and a.stage == pb.STAGE_TTS)


async def test_a_session_goes_on_on_another_replica_after_its_own_is_killed(
    redis_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    a, b = await _two(redis_url, tmp_path, replicas)
    conv = Conversation(a.stub)
    session_id = (await conv.start(persona_id="casual")).session_id
    await conv.say("Hello there")
    assert "You are Sam. I remember 0 messages" in (await conv.until_terminal())[-1].turn_complete.text
    await conv.update(label="sad", speech_rate=0.8)
    await conv.say("Tell me something slowly")  # this turn dies with its replica
    lost_turn = (await conv.until("audio")).turn_id
    last = conv.events[-1].seq
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)

    resumed = Conversation(b.stub)
    started = await resumed.start(session_id=session_id, resume_after_seq=last)
    assert started.seq == 0 and started.started.session_id == session_id
    assert started.started.persona_id == "casual" and started.started.persona_name == "Sam"
    assert not started.started.resumed.lossless and "restored from the shared store" in started.started.resumed.detail
    assert started.started.resumed.last_seq >= last
    lost = await resumed.next()  # the dead replica's turn gets its one terminal event here
    assert is_terminal(lost) and lost.turn_id == lost_turn and lost.seq == started.started.resumed.last_seq + 1
    assert lost.error.code == pb.ERROR_CODE_UNAVAILABLE and lost.error.retryable

    await resumed.say("What do you remember?")
    events = await resumed.until_terminal()
    assert arms(events)[-1] == "turn_complete" and events[0].seq == lost.seq + 1
    done = events[-1].turn_complete
    assert "You are Sam. I remember 2 messages. You last said: Hello there." in done.text  # the lost turn left none
    assert (_tts(done.control_report, "emotion.label").value, _tts(done.control_report, "emotion.label").source) == (
        "sad",
        "pending",
    )
    assert _tts(done.control_report, "character.speech_rate").value == "0.8"
    assert await resumed.finish() == grpc.StatusCode.OK
    with pytest.raises(grpc.aio.AioRpcError) as err:  # ended on B: gone for every replica
        await Conversation(b.stub).start(session_id=session_id, resume_after_seq=1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_replica_shutting_down_hands_its_sessions_over_without_loss(
    redis_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    a, b = await _two(redis_url, tmp_path, replicas)
    created = await a.stub.CreateSession(pb.CreateSessionRequest(persona_id="excited", default_control=control()))
    conv = Conversation(b.stub)  # made on A, attached on B
    first = await conv.start(session_id=created.session_id)
    assert first.seq == 1 and first.started.persona_id == "excited" and not first.started.HasField("resumed")
    await conv.say("Hello there")
    await conv.until_terminal()
    b.proc.send_signal(signal.SIGTERM)  # B drains: the stream ends with UNAVAILABLE, the session stays in Redis
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            await conv.next()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert arms(conv.events)[-1] == "notice"
    last = conv.events[-1].seq
    assert b.proc.wait(20) == 0

    resumed = Conversation(a.stub)
    started = await resumed.start(session_id=created.session_id, resume_after_seq=last)
    assert started.started.resumed.lossless and started.started.resumed.last_seq == last
    await resumed.say("And now?")
    events = await resumed.until_terminal()
    assert events[0].seq == last + 1 and "I remember 2 messages" in events[-1].turn_complete.text
    assert await resumed.finish() == grpc.StatusCode.OK


if __name__ == "__main__":
    from adapters import registry
    from tth_server.cli import main

    registry.register("history_echo", HistoryEcho)
    sys.exit(main())
