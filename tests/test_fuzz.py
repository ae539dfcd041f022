"""Bad input never crashes, hangs or harms other sessions: thousands of malformed messages, one healthy session."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random

import grpc
import pytest

from tests.conftest import ServerFactory
from tests.wire import Conversation, arms
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

CONVERSE = "/tth.v1.ConversationService/Converse"


def _wild_control(rng: random.Random) -> cpb.TurnControl:
    values = [math.nan, math.inf, -math.inf, -1e9, 1e9, -0.0, 0.5, 5.0, -5.0]
    return cpb.TurnControl(
        emotion=cpb.EmotionControl(
            label=rng.choice([0, 1, 3, 7, 8, 99, -1]), intensity=rng.choice(values), valence=rng.choice(values)
        ),
        character=cpb.CharacterControl(
            speech_rate=rng.choice(values),
            persona_id=rng.choice(["", "x" * 300, "casual"]),
            motion_gain=rng.choice(values),
        ),
    )


def _message(rng: random.Random) -> bytes:
    """One request's bytes: random garbage, a broken real message, or a real message with wild values."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 1:
        text = pb.ConverseRequest(text=pb.UserText(text="hello " * rng.randrange(1, 50))).SerializeToString()
        return text[: rng.randrange(1, len(text))]  # truncated
    if kind == 2:
        return pb.ConverseRequest(config=pb.SessionConfig(persona_id=rng.choice(["", "nobody"]))).SerializeToString()
    if kind == 3:
        text = rng.choice(["", " ", "\x00\x01", "é" * 5000, "[happy]" * 10, "hi"])
        return pb.ConverseRequest(text=pb.UserText(text=text, control=_wild_control(rng))).SerializeToString()
    if kind == 4:
        return pb.ConverseRequest(control=pb.ControlUpdate(control=_wild_control(rng))).SerializeToString()
    return pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=rng.randrange(0, 2**32))).SerializeToString()


async def _fuzz_session(channel: grpc.aio.Channel, rng: random.Random, count: int) -> grpc.StatusCode:
    """A session that starts properly, then receives `count` random and malformed messages."""
    call = channel.stream_stream(CONVERSE, request_serializer=lambda b: b, response_deserializer=lambda b: b)()

    async def drain() -> None:
        async for _ in call:
            pass

    reading = asyncio.ensure_future(drain())
    await call.write(pb.ConverseRequest(config=pb.SessionConfig()).SerializeToString())
    for _ in range(count):
        await call.write(_message(rng))
    await call.done_writing()
    await asyncio.wait_for(reading, 60)
    return await call.code()


async def _fuzz_first_message(channel: grpc.aio.Channel, rng: random.Random) -> grpc.StatusCode:
    """A call whose only message is random: the server must answer, never crash or hang.

    (The call sends one message and half-closes: grpc's Python client reports its own
    INTERNAL when it writes after the server has ended a call, hiding the server's status.)
    """
    call = channel.stream_stream(CONVERSE, request_serializer=lambda b: b, response_deserializer=lambda b: b)()
    await call.write(_message(rng))
    await call.done_writing()
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in call:
            pass
    return await asyncio.wait_for(call.code(), 30)


async def test_thousands_of_malformed_messages_leave_a_healthy_session_unharmed(start_server: ServerFactory) -> None:
    server = await start_server(
        session={"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}, limits={"turns_per_minute_per_key": 0}
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)

        async def healthy() -> list[str]:
            conv = Conversation(stub)
            await conv.start()
            outcomes = []
            for text in ("Hello!", "How are you?", "Tell me a joke", "Thanks!", "Bye"):
                await conv.say(text)
                outcomes.append(arms(await conv.until_terminal())[-1])
            assert await conv.finish() == grpc.StatusCode.OK
            return outcomes

        rng = random.Random(20261121)
        sessions = [_fuzz_session(channel, random.Random(rng.random()), 150) for _ in range(20)]
        firsts = [_fuzz_first_message(channel, random.Random(rng.random())) for _ in range(300)]
        outcome, *codes = await asyncio.wait_for(asyncio.gather(healthy(), *sessions, *firsts), 120)
        assert outcome == ["turn_complete"] * 5
        assert set(codes[: len(sessions)]) == {grpc.StatusCode.OK}  # bad messages are in-stream errors
        assert set(codes[len(sessions) :]) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
        assert grpc.StatusCode.INVALID_ARGUMENT in codes
        # Still serving afterwards, for everyone.
        assert (await stub.ListModels(pb.ListModelsRequest())).profile == "mock"


async def test_garbage_first_message_is_invalid_argument_and_later_garbage_an_in_stream_error(
    stub: pb_grpc.ConversationServiceStub, start_server: ServerFactory
) -> None:
    server = await start_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.stream_stream(
            CONVERSE, request_serializer=lambda b: b, response_deserializer=pb.ConverseResponse.FromString
        )
        call = raw()
        await call.write(b"\xff\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in str(err.value.details())

        call = raw()
        await call.write(pb.ConverseRequest(config=pb.SessionConfig()).SerializeToString())
        assert (await call.read()).WhichOneof("event") == "started"
        await call.write(b"\x12\xff")
        error = await call.read()
        assert error.WhichOneof("event") == "error" and error.error.code == pb.ERROR_CODE_INVALID_ARGUMENT
        await call.write(pb.ConverseRequest(text=pb.UserText(text="Hi!")).SerializeToString())
        while (event := await call.read()).WhichOneof("event") not in ("turn_complete", "error"):
            pass
        assert event.WhichOneof("event") == "turn_complete"
        unary = channel.unary_unary(
            "/tth.v1.ConversationService/ListModels", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(b"\x0a\xff\xff")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversized_messages_are_refused_and_long_text_named_with_its_limit(start_server: ServerFactory) -> None:
    server = await start_server(server={"max_message_bytes": 65536})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        await conv.say("x" * 4001)
        error = await conv.next()
        assert "text.text is 4001 characters; the limit is 4000" in error.error.message
        await conv.say("x" * 100_000)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await conv.next()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
