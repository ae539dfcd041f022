"""Bad input that used to kill its session: huge echoed values, and errors a client never reads.

Each test reproduces one case of issue 19 through a real server: a value echoed
into an error must not push the error past the message or metadata limits, and a
client that ignores its responses must not grow the server's outbox without bound.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from tests.conftest import ServerFactory
from tests.wire import Conversation, arms
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.errors import ECHO_CHARS, echo
from tth_server.server import RunningServer
from tth_server.session import Session

CONVERSE = "/tth.v1.ConversationService/Converse"
UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
SHORT = 400  # no error message about one field needs more characters than this


def test_a_long_value_is_quoted_by_its_first_characters_and_its_length() -> None:
    assert echo("casual") == "'casual'"
    quoted = echo("a" * 20_000)
    assert quoted.startswith(repr("a" * ECHO_CHARS)) and "20000 characters" in quoted
    assert len(quoted) < 2 * ECHO_CHARS


async def test_a_4_mb_persona_in_a_control_is_an_in_stream_error_and_the_session_goes_on(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    conv = Conversation(stub)
    await conv.start()
    huge = "a" * 4_194_200  # the request fits server.max_message_bytes (4 MiB); an error echoing it would not
    update = cpb.TurnControl(character=cpb.CharacterControl(persona_id=huge))
    await conv.call.write(pb.ConverseRequest(control=pb.ControlUpdate(control=update)))
    error = await conv.next()
    assert error.WhichOneof("event") == "error" and error.error.code == pb.ERROR_CODE_INVALID_ARGUMENT
    message = error.error.message
    assert "control.control.character.persona_id" in message and "4194200 characters" in message
    assert len(message) < SHORT
    await conv.say("Hello!")
    assert arms(await conv.until_terminal())[-1] == "turn_complete"
    assert await conv.finish() == grpc.StatusCode.OK


async def test_a_20_kb_persona_is_invalid_argument_with_a_short_message_on_every_rpc(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    long_id = "a" * 20_000  # echoed whole, the status would pass grpc-core's 16 KiB metadata limit

    def check(err: grpc.aio.AioRpcError, field: str) -> None:
        details = str(err.details())
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, details[:200]
        assert field in details and "20000 characters" in details and len(details) < SHORT

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await Conversation(stub).start(persona_id=long_id)
    check(err.value, "config.persona_id")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSession(pb.CreateSessionRequest(persona_id=long_id))
    check(err.value, "persona_id")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [r async for r in stub.Generate(pb.GenerateRequest(text="Hi!", persona_id=long_id))]
    check(err.value, "persona_id")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await Conversation(stub).start(session_id=long_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(str(err.value.details())) < SHORT


def _only_session(server: RunningServer) -> Session:
    (session,) = server.runtime.sessions.values()
    return session


async def test_a_client_that_never_reads_its_errors_is_ended_and_the_outbox_stays_bounded(
    start_server: ServerFactory,
) -> None:
    limit = 32
    server = await start_server(session={**UNPACED, "max_unread_events": limit}, limits={"turns_per_minute_per_key": 0})
    # A small receive window, as a client that never reads soon has: the server's writes back up sooner.
    window = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=window) as channel:
        call = channel.stream_stream(
            CONVERSE, request_serializer=lambda b: b, response_deserializer=pb.ConverseResponse.FromString
        )()
        await call.write(pb.ConverseRequest(config=pb.SessionConfig()).SerializeToString())
        for _ in range(1000):  # the session opens once the server has read the config (no response is read)
            if server.runtime.sessions.values():
                break
            await asyncio.sleep(0.01)
        flooded = _only_session(server)
        peak = 0

        async def flood() -> None:
            nonlocal peak
            for _ in range(100_000):  # one-byte malformed messages; none of the responses is read
                await call.write(b"\x0a")
                peak = max(peak, len(flooded.outbox))

        writer = asyncio.ensure_future(flood())
        healthy = Conversation(pb_grpc.ConversationServiceStub(channel))
        await healthy.start()
        outcomes = []
        for text in ("Hello!", "How are you?", "Bye"):
            await healthy.say(text)
            outcomes.append(arms(await healthy.until_terminal())[-1])
        assert outcomes == ["turn_complete"] * 3
        # The server stops reading the flood once it ends the session, so the writer stalls or fails; either way
        # it is done writing as far as this test is concerned.
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(writer), 60)
        peak = max(peak, flooded.outbox.peak_controls)
        assert peak <= limit + 2, f"the outbox held {peak} events"  # the limit, plus the terminal events of a turn
        assert flooded.ended is not None and "session.max_unread_events" in flooded.ended.message
        writer.cancel()
        events = []
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for event in call:
                events.append(event)
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{limit} events" in str(await call.details())
        # What the transport had taken before the end reached the client (its own buffers, not the server's):
        # the session's start, then one error per message the server read before it stopped reading.
        assert arms(events)[0] == "started" and set(arms(events)[1:]) == {"error"}
        assert len(events) < 100_000
        assert await healthy.finish() == grpc.StatusCode.OK
