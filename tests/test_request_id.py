"""`request_id`: a client's id for a text, control or interrupt comes back on everything that answers it."""

from __future__ import annotations

import grpc

from tests.conftest import ServerFactory
from tests.wire import Conversation, arms
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
LONG_REPLY = "One two three four five six, seven eight nine ten. Eleven twelve thirteen fourteen fifteen. " * 4


async def _stub(start_server: ServerFactory, **overrides: object) -> pb_grpc.ConversationServiceStub:
    server = await start_server(**overrides)
    return pb_grpc.ConversationServiceStub(start_server.channel(server.port))


async def test_every_event_of_a_turn_carries_the_request_id_of_its_text(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    for batch_media in (False, True):
        conv = Conversation(stub)
        started = await conv.start(batch_media=batch_media)
        assert started.request_id == ""
        await conv.say("Hello!", request_id="hello-1")
        first = await conv.until_terminal()
        await conv.say("And again.")  # no id: nothing echoed
        second = await conv.until_terminal()
        assert {"text_delta", "turn_complete"} <= set(arms(first))
        assert {"media"} <= set(arms(first)) if batch_media else {"audio", "video"} <= set(arms(first))
        assert {e.request_id for e in first} == {"hello-1"}
        assert {e.request_id for e in second} == {""}
        assert await conv.finish() == grpc.StatusCode.OK


async def test_a_barge_in_ends_the_old_turn_with_its_own_request_id(start_server: ServerFactory) -> None:
    components = {"llm": {"adapter": "scripted", "options": {"reply": LONG_REPLY}}}
    stub = await _stub(start_server, session={"max_lead_ms": 100}, components=components)
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Talk for a while", request_id="a")
    await conv.until("audio")
    await conv.say("Stop, something else", request_id="b")
    old = await conv.until_terminal()
    assert old[-1].WhichOneof("event") == "turn_interrupted" and {e.request_id for e in old} == {"a"}
    await conv.until("audio")
    await conv.interrupt(request_id="stop-1")  # the interrupted turn's end is the turn's: it carries "b"
    new = await conv.until_terminal()
    assert new[-1].WhichOneof("event") == "turn_interrupted" and new[-1].turn_id != old[-1].turn_id
    assert {e.request_id for e in new} == {"b"}
    assert await conv.finish() == grpc.StatusCode.OK


async def test_refusals_of_a_text_a_control_and_an_interrupt_carry_their_request_id(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    conv = Conversation(stub)
    await conv.start()
    await conv.say("   ", request_id="empty-text")
    refused_text = await conv.until("error")
    await conv.update(request_id="bad-control", intensity=7.0)
    refused_control = await conv.until("error")
    await conv.say("Hi", request_id="bad-persona", persona_id="pirate")
    refused_persona = await conv.until("error")
    await conv.interrupt(request_id="x" * 65)
    refused_interrupt = await conv.until("error")
    for event, request_id, field in (
        (refused_text, "empty-text", "text.text"),
        (refused_control, "bad-control", "control.control.emotion.intensity"),
        (refused_persona, "bad-persona", "text.control.character.persona_id"),
        (refused_interrupt, "", "interrupt.request_id is 65 characters; the limit is 64"),
    ):
        assert event.turn_id == "" and event.error.code == pb.ERROR_CODE_INVALID_ARGUMENT
        assert event.request_id == request_id and event.error.message.startswith(field), event.error.message
    assert await conv.finish() == grpc.StatusCode.OK


async def test_a_request_id_over_64_characters_is_refused_naming_the_field_and_no_turn_starts(
    stub: pb_grpc.ConversationServiceStub,
) -> None:
    conv = Conversation(stub)
    await conv.start()
    await conv.say("Hello!", request_id="r" * 65)
    refused = await conv.next()
    assert refused.WhichOneof("event") == "error" and refused.turn_id == "" and refused.request_id == ""
    assert refused.error.code == pb.ERROR_CODE_INVALID_ARGUMENT
    assert "text.request_id is 65 characters; the limit is 64" in refused.error.message
    await conv.update(request_id="c" * 100, speech_rate=1.1)
    assert "control.request_id is 100 characters; the limit is 64" in (await conv.until("error")).error.message
    await conv.say("Hello!", request_id="r" * 64)  # exactly at the limit: a turn, echoed whole
    events = await conv.until_terminal()
    assert events[-1].WhichOneof("event") == "turn_complete" and {e.request_id for e in events} == {"r" * 64}
    assert await conv.finish() == grpc.StatusCode.OK
    assert [e for e in conv.events if e.WhichOneof("event") == "turn_complete"] == [events[-1]]


async def test_replayed_events_after_a_resume_keep_their_request_id(start_server: ServerFactory) -> None:
    stub = await _stub(start_server, session=UNPACED)
    conv = Conversation(stub)
    session_id = (await conv.start()).session_id
    await conv.say("Hello!", request_id="before-drop")
    first = await conv.until("audio")
    conv.call.cancel()  # the connection drops mid-turn
    resumed = Conversation(stub)
    await resumed.start(session_id=session_id, resume_after_seq=first.seq)
    events = await resumed.until_terminal()
    assert events[0].seq == first.seq + 1 and {e.request_id for e in events} == {"before-drop"}
    assert await resumed.finish() == grpc.StatusCode.OK
