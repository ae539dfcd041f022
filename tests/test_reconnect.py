"""Reconnect without loss: a dropped stream detaches its session, and a resume replays exactly what was missed."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import grpc
import pytest

from tests.conftest import ServerFactory
from tests.wire import Conversation, arms, is_terminal
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.config import load_config
from tth_server.errors import AttachRefused
from tth_server.server import RunningServer, serve
from tth_server.session import Session

UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
LONG_REPLY = (
    "One two three four five six, seven eight nine ten. Eleven twelve thirteen fourteen. "
    "Fifteen sixteen seventeen eighteen nineteen twenty. Twenty-one twenty-two twenty-three."
)


def _llm(reply: str = LONG_REPLY) -> dict[str, object]:
    return {"llm": {"adapter": "scripted", "options": {"reply": reply, "hints": False}}}


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _error(conv: Conversation, **config: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conv.start(**config)
    return err.value


def _check_whole_turn(events: list[pb.ConverseResponse]) -> pb.ConverseResponse:
    """One turn's events, as a client pieced them together: nothing missing, nothing twice; returns the terminal."""
    turn_id = events[0].turn_id
    assert {e.turn_id for e in events} == {turn_id}
    assert sum(map(is_terminal, events)) == 1 and is_terminal(events[-1])
    audio = [e.audio for e in events if e.HasField("audio")]
    assert audio[0].timestamp_ms == 0
    for a, b in itertools.pairwise(audio):  # audio is never dropped: contiguous on the turn's clock
        assert b.timestamp_ms == pytest.approx(a.timestamp_ms + a.duration_ms)
    frames = [e.video.frame_index for e in events if e.HasField("video")]
    assert frames == sorted(set(frames))  # video may drop under backpressure, but never repeats
    return events[-1]


@pytest.mark.parametrize("drop", ["cancel", "close_channel"])
async def test_a_dropped_stream_resumes_with_exactly_the_events_it_missed(
    start_server: ServerFactory, drop: str
) -> None:
    # Paced media and a small queue: while nobody reads, the turn stalls and drops frames, as with a slow client.
    server = await start_server(session={"max_lead_ms": 100, "outbox_capacity": 16}, components=_llm())
    channel = start_server.channel(server.port)
    first = Conversation(pb_grpc.ConversationServiceStub(channel))
    started = await first.start()
    session_id = started.session_id
    await first.say("Count for me.", speech_rate=3.0)  # about 4 s of speech
    while len([e for e in first.events if e.HasField("audio")]) < 5:
        await first.next()
    seen = list(first.events)
    last = seen[-1].seq
    if drop == "cancel":
        first.call.cancel()
    else:
        await channel.close()
    session = server.runtime.sessions.get(session_id)
    assert session is not None
    await _until(lambda: not session.attached)
    await asyncio.sleep(0.8)  # the turn goes on meanwhile, until its unsent events fill the queue
    assert len(session.outbox) >= 16 and session.state.value != "idle"

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as again:
        second = Conversation(pb_grpc.ConversationServiceStub(again))
        resumed = await second.start(session_id=session_id, resume_after_seq=last)
        assert resumed.WhichOneof("event") == "started" and resumed.seq == 0
        assert resumed.started.session_id == session_id and resumed.started.persona_id == started.started.persona_id
        assert resumed.started.resumed.lossless and resumed.started.resumed.last_seq >= last
        rest = await second.until_terminal()
        # The sequence goes on where the client left it: nothing skipped, nothing twice.
        assert [e.seq for e in rest] == list(range(last + 1, last + 1 + len(rest)))
        whole = seen + rest
        assert [e.seq for e in whole] == list(range(1, len(whole) + 1))
        terminal = _check_whole_turn(whole[1:])  # everything after started is the turn's
        assert terminal.WhichOneof("event") == "turn_complete"
        text = "".join(e.text_delta.text for e in whole if e.HasField("text_delta"))
        assert " ".join(text.split()) == " ".join(terminal.turn_complete.text.split()) == LONG_REPLY
        # The resumed stream is an ordinary one: another turn, then a clean close.
        await second.say("Again!")
        await second.until("audio")
        await second.interrupt()
        assert arms(await second.until_terminal())[-1] == "turn_interrupted"
        assert await second.finish() == grpc.StatusCode.OK
    assert session_id not in server.runtime.sessions


async def test_a_session_nobody_resumes_expires_and_frees_its_slot(start_server: ServerFactory) -> None:
    server = await start_server(
        session={"max_lead_ms": 100, "resume_window_s": 0.3},
        limits={"max_sessions_per_key": 1},
        components=_llm(),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        conv = Conversation(stub)
        session_id = (await conv.start()).session_id
        await conv.say("Count for me.")
        await conv.until("audio")
        session = server.runtime.sessions.get(session_id)
        assert isinstance(session, Session)
        refused = await _error(Conversation(stub))  # the one slot is taken ...
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        conv.call.cancel()
        await _until(lambda: not session.attached)
        assert session_id in server.runtime.sessions  # ... and stays taken while the session waits
        await _until(lambda: session_id not in server.runtime.sessions, timeout_s=5.0)
        assert session.closed and session.state.value == "closed"  # the running turn was interrupted
        assert server.runtime.limits.active_sessions == 0 and session.replay.first_seq > session.replay.last_seq
        assert await server.runtime.store.load(session_id) is None
        gone = await _error(Conversation(stub), session_id=session_id, resume_after_seq=3)
        assert gone.code() == grpc.StatusCode.NOT_FOUND and "expired" in str(gone.details())
        assert (await Conversation(stub).start()).WhichOneof("event") == "started"  # the slot is free again


async def test_a_resume_that_races_the_expiry_is_refused_rather_than_attached_to_a_dying_session(
    start_server: ServerFactory,
) -> None:
    server = await start_server(session=UNPACED)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        session_id = (await conv.start()).session_id
        conv.call.cancel()
        table = server.runtime.sessions
        session = table.get(session_id)
        assert session is not None
        await _until(lambda: not session.attached)
        table._expire(session)  # the resume window ends in the same loop turn as a resume arrives
        with pytest.raises(AttachRefused) as refused:
            await table.attach(session_id, "anonymous", 1)
        assert refused.value.reason == "not_found"
        await _until(lambda: session_id not in table)


async def test_a_resume_after_events_no_longer_held_is_refused_saying_how_many(start_server: ServerFactory) -> None:
    server = await start_server(session={**UNPACED, "replay_events": 8}, components=_llm("Hello there, friend."))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        conv = Conversation(stub)
        session_id = (await conv.start()).session_id
        await conv.say("Hi!")
        last = (await conv.until_terminal())[-1].seq
        assert last > 12
        conv.call.cancel()
        old = await _error(Conversation(stub), session_id=session_id, resume_after_seq=1)
        assert old.code() == grpc.StatusCode.OUT_OF_RANGE
        details = str(old.details())
        assert f"the {last - 9} events after it are no longer held" in details and "session.replay_events" in details
        ahead = await _error(Conversation(stub), session_id=session_id, resume_after_seq=last + 5)
        assert ahead.code() == grpc.StatusCode.OUT_OF_RANGE and f"(seq {last})" in str(ahead.details())
        # The oldest resume still possible replays all eight events held, in order.
        oldest = Conversation(stub)
        assert (await oldest.start(session_id=session_id, resume_after_seq=last - 8)).started.resumed.lossless
        replayed = [await oldest.next() for _ in range(8)]
        assert [e.seq for e in replayed] == list(range(last - 7, last + 1))
        assert [e.SerializeToString() for e in replayed] == [e.SerializeToString() for e in conv.events[-8:]]
        assert await oldest.finish() == grpc.StatusCode.OK


async def test_a_resume_takes_the_session_over_from_a_stream_still_attached(start_server: ServerFactory) -> None:
    server = await start_server(session=UNPACED)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        old = Conversation(stub)
        session_id = (await old.start()).session_id
        await old.say("Hello!")
        last = (await old.until_terminal())[-1].seq
        plain = await _error(Conversation(stub), session_id=session_id)
        assert plain.code() == grpc.StatusCode.NOT_FOUND and "resume_after_seq" in str(plain.details())
        new = Conversation(stub)
        started = await new.start(session_id=session_id, resume_after_seq=last)
        assert started.seq == 0 and started.started.resumed.last_seq == last
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await old.next()
        assert err.value.code() == grpc.StatusCode.ABORTED and "another stream resumed" in str(err.value.details())
        await new.say("Still there?")
        events = await new.until_terminal()
        assert events[0].seq == last + 1 and arms(events)[-1] == "turn_complete"
        assert await new.finish() == grpc.StatusCode.OK


async def test_attaching_without_resume_after_seq_goes_on_without_replay(start_server: ServerFactory) -> None:
    server = await start_server(session=UNPACED)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        conv = Conversation(stub)
        session_id = (await conv.start()).session_id
        await conv.say("Hello!")
        last = (await conv.until_terminal())[-1].seq
        conv.call.cancel()
        session = server.runtime.sessions.get(session_id)
        assert session is not None
        await _until(lambda: not session.attached)
        again = Conversation(stub)
        started = await again.start(session_id=session_id)
        assert started.seq == 0 and not started.started.resumed.lossless
        assert started.started.resumed.last_seq == last and "resume_after_seq" in started.started.resumed.detail
        await again.say("Hi again!")
        assert (await again.next()).seq == last + 1
        await again.until_terminal()
        assert await again.finish() == grpc.StatusCode.OK


async def test_a_half_close_still_ends_the_session_for_good(start_server: ServerFactory) -> None:
    server = await start_server(session=UNPACED)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        conv = Conversation(stub)
        session_id = (await conv.start()).session_id
        await conv.say("Hello!")
        await conv.until_terminal()
        assert await conv.finish() == grpc.StatusCode.OK
        assert session_id not in server.runtime.sessions and server.runtime.limits.active_sessions == 0
        gone = await _error(Conversation(stub), session_id=session_id, resume_after_seq=conv.events[-1].seq)
        assert gone.code() == grpc.StatusCode.NOT_FOUND
        bad = await _error(Conversation(stub), resume_after_seq=3)
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs config.session_id" in str(bad.details())


async def test_only_the_key_that_made_a_session_can_resume_it() -> None:
    config = load_config("mock", env={"TTH_API_KEYS": "key-a,key-b"}, overrides={"session": UNPACED})
    server: RunningServer = await serve(config, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ConversationServiceStub(channel)
            conv = Conversation(stub, "key-a")
            session_id = (await conv.start()).session_id
            conv.call.cancel()
            stranger = await _error(Conversation(stub, "key-b"), session_id=session_id, resume_after_seq=1)
            assert stranger.code() == grpc.StatusCode.NOT_FOUND
            owner = Conversation(stub, "key-a")
            assert (await owner.start(session_id=session_id, resume_after_seq=1)).started.resumed.lossless
            assert await owner.finish() == grpc.StatusCode.OK
    finally:
        await server.stop(0)
