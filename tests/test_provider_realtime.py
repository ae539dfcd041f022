"""`openai_realtime` against a fake Realtime API over WebSocket, alone and as a TTH session's stage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import grpc
import pytest

from adapters.base import LLMRequest, Message
from adapters.controls import ControlPatch, Controls, EmotionLabel, resolve
from adapters.errors import ErrorCategory, ProviderError
from adapters.media import AudioChunk
from adapters.openai.realtime import OpenAIRealtime, OpenAIRealtimeConversation
from tests.conftest import ServerFactory
from tests.fakes.openai import KEY, pcm_for
from tests.fakes.realtime import FakeRealtime, RealtimeFaults
from tests.wire import Conversation, arms, is_terminal
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtime]:
    server = await FakeRealtime().start()
    yield server
    await server.aclose()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def controls(**fields: Any) -> Controls:
    return resolve([("turn", ControlPatch(**fields))])


def request(text: str = "Hello", history: tuple[Message, ...] = ()) -> LLMRequest:
    return LLMRequest("You are Alex.", text, history)


async def opened(fake: FakeRealtime, **options: Any) -> tuple[OpenAIRealtime, OpenAIRealtimeConversation]:
    adapter = OpenAIRealtime("openai_realtime", {"url": fake.url, **options})
    conversation = await adapter.open("You are Alex.", adapter.map_controls(controls()))
    return adapter, conversation


async def collect(
    conversation: OpenAIRealtimeConversation, req: LLMRequest, adapter: OpenAIRealtime, c: Controls | None = None
) -> tuple[str, bytes, list[AudioChunk]]:
    text, chunks = "", []
    async for item in conversation.respond(req, adapter.map_controls(c or controls())):
        if isinstance(item, str):
            text += item
        else:
            chunks.append(item)
    return text, b"".join(c.pcm for c in chunks), chunks


@pytest.mark.parametrize("api", ["ga", "beta"])
async def test_one_reply_is_its_transcript_and_its_audio(fake: FakeRealtime, api: str) -> None:
    adapter, conversation = await opened(fake, api=api)
    try:
        text, pcm, chunks = await collect(conversation, request(), adapter)
    finally:
        await conversation.aclose()
    assert text.strip() == fake.reply
    assert pcm == b"".join(pcm_for(w + " ", 12.0) for w in fake.reply.split(" "))
    assert all(len(c.pcm) % 2 == 0 and c.sample_rate_hz == 24000 for c in chunks)
    update = fake.of_type("session.update")[0]["session"]
    if api == "ga":
        assert update["type"] == "realtime" and update["audio"]["output"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        assert update["audio"]["output"]["voice"] == "coral" and update["audio"]["input"]["turn_detection"] is None
    else:
        assert (
            update["output_audio_format"] == "pcm16" and update["voice"] == "coral" and update["turn_detection"] is None
        )
    assert update["instructions"] == "You are Alex."
    item = fake.of_type("conversation.item.create")[-1]["item"]
    assert item == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}
    assert len(fake.of_type("response.create")) == 1


async def test_an_interrupted_reply_is_cancelled_and_truncated_and_the_next_one_is_clean(fake: FakeRealtime) -> None:
    fake.delta_delay_s = 0.02
    adapter, conversation = await opened(fake)
    try:
        stream = cast(
            AsyncGenerator[str | AudioChunk, None], conversation.respond(request(), adapter.map_controls(controls()))
        )
        audio_ms = 0.0
        async for item in stream:
            if isinstance(item, AudioChunk):
                audio_ms = item.end_ms
                if audio_ms > 100:
                    break
        await stream.aclose()  # what cancelling the turn does
        await conversation.truncate(60.0)
        await asyncio.sleep(0.1)
        cancel = fake.of_type("response.cancel")
        assert len(cancel) == 1 and cancel[0]["response_id"].startswith("resp_")
        truncate = fake.of_type("conversation.item.truncate")[0]
        assert (
            truncate["audio_end_ms"] == 60
            and truncate["content_index"] == 0
            and truncate["item_id"].startswith("item_")
        )
        fake.delta_delay_s = 0.0
        text, _, _ = await collect(conversation, request("Again"), adapter)
        assert text.strip() == fake.reply  # nothing from the cancelled reply leaks into this one
    finally:
        await conversation.aclose()


async def test_the_voice_is_set_until_the_session_speaks_then_emotion_rides_the_instructions(
    fake: FakeRealtime,
) -> None:
    adapter, conversation = await opened(fake)
    try:
        await collect(conversation, request(), adapter, controls(label=EmotionLabel.HAPPY))
        await collect(conversation, LLMRequest("Now sad.", "Go on"), adapter, controls(label=EmotionLabel.SAD))
    finally:
        await conversation.aclose()
    updates = [e["session"] for e in fake.of_type("session.update")]
    assert updates[0]["audio"]["output"]["voice"] == "coral"  # open: neutral
    assert updates[1]["audio"]["output"]["voice"] == "shimmer"  # first reply, before any audio: happy
    assert "voice" not in updates[2]["audio"]["output"] and updates[2]["instructions"] == "Now sad."


async def test_a_fresh_conversation_is_seeded_with_the_history(fake: FakeRealtime) -> None:
    adapter, conversation = await opened(fake)
    history = (Message("user", "Earlier"), Message("assistant", "An answer"))
    try:
        await collect(conversation, request("Now", history), adapter)
    finally:
        await conversation.aclose()
    items = [e["item"] for e in fake.of_type("conversation.item.create")]
    assert [(i["role"], i["content"][0]["type"], i["content"][0]["text"]) for i in items] == [
        ("user", "input_text", "Earlier"),
        ("assistant", "output_text", "An answer"),
        ("user", "input_text", "Now"),
    ]


@pytest.mark.parametrize(
    ("status", "category"), [(401, ErrorCategory.AUTH), (500, ErrorCategory.SERVER), (429, ErrorCategory.RATE_LIMIT)]
)
async def test_a_refused_handshake_is_classified(fake: FakeRealtime, status: int, category: ErrorCategory) -> None:
    fake.faults = RealtimeFaults(handshake_status=status)
    with pytest.raises(ProviderError) as err:
        await opened(fake)
    assert err.value.category is category and err.value.status == status


async def test_a_wrong_key_is_auth_and_nothing_listening_is_connectivity(
    fake: FakeRealtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-realtime")
    with pytest.raises(ProviderError) as err:
        await opened(fake)
    assert err.value.category is ErrorCategory.AUTH and "sk-wrong-realtime" not in str(err.value)
    adapter = OpenAIRealtime("openai_realtime", {"url": "ws://127.0.0.1:9/v1/realtime"})
    with pytest.raises(ProviderError) as err:
        await adapter.open("x", adapter.map_controls(controls()))
    assert err.value.category is ErrorCategory.CONNECTIVITY


@pytest.mark.parametrize(
    ("faults", "category"),
    [
        (RealtimeFaults(drop_after_deltas=3), ErrorCategory.CONNECTIVITY),
        (RealtimeFaults(malformed_after_deltas=3), ErrorCategory.SERVER),
        (RealtimeFaults(error_after_deltas=3), ErrorCategory.RATE_LIMIT),
    ],
)
async def test_mid_response_faults_fail_after_the_output_already_given(
    fake: FakeRealtime, faults: RealtimeFaults, category: ErrorCategory
) -> None:
    fake.faults = faults
    adapter, conversation = await opened(fake)
    got: list[str | AudioChunk] = []
    try:
        with pytest.raises(ProviderError) as err:
            async for item in conversation.respond(request(), adapter.map_controls(controls())):
                got.append(item)
        assert err.value.category is category
        assert [type(g).__name__ for g in got][:2] == ["str", "AudioChunk"]
        if category is ErrorCategory.CONNECTIVITY:
            assert conversation.closed
            with pytest.raises(ProviderError):
                await collect(conversation, request(), adapter)
    finally:
        await conversation.aclose()


# ---- as a TTH session's combined stage -------------------------------------------------------------------------


def realtime_profile(fake: FakeRealtime, **router: Any) -> dict[str, Any]:
    return {
        "session": UNPACED,
        "components": {
            "llm": None,
            "tts": None,
            "realtime": {"adapter": "openai_realtime", "options": {"url": fake.url}},
            "avatar": {"adapter": "stub_avatar"},
        },
        "router": {"budgets": {"realtime": {"first_byte_ms": 2000}}, **router},
    }


async def test_a_realtime_session_streams_text_audio_video_and_reports_the_stage(
    fake: FakeRealtime, start_server: ServerFactory
) -> None:
    server = await start_server(**realtime_profile(fake))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        conv = Conversation(stub)
        started = await conv.start()
        assert started.started.audio.sample_rate_hz == 24000
        for text in ("Hi!", "And again"):
            await conv.say(text)
            events = await conv.until_terminal()
            assert sum(map(is_terminal, events)) == 1 and arms(events)[-1] == "turn_complete"
            assert {"text_delta", "audio", "video"} <= set(arms(events))
            done = events[-1].turn_complete
            assert done.text == fake.reply
            timing = [s for s in done.metrics.stages if s.stage == pb.STAGE_REALTIME]
            assert len(timing) == 1 and timing[0].adapter == "openai_realtime" and not timing[0].fallback_used
            assert any(a.stage == pb.STAGE_REALTIME and a.field == "emotion.label" for a in done.control_report.applied)
        models = await stub.ListModels(pb.ListModelsRequest())
        assert sorted(s.stage for s in models.stages) == [pb.STAGE_AVATAR, pb.STAGE_REALTIME]
        assert KEY not in str(models)
    assert fake.connections == 1  # one conversation for the session's two turns
    assert "[happy]" not in fake.of_type("session.update")[0]["session"]["instructions"]


async def test_a_connection_lost_between_turns_is_reopened_and_seeded_with_the_history(
    fake: FakeRealtime, start_server: ServerFactory
) -> None:
    server = await start_server(**realtime_profile(fake))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        await conv.say("First question")
        assert arms(await conv.until_terminal())[-1] == "turn_complete"
        fake.drop_connections()
        await asyncio.sleep(0.05)
        await conv.say("Second question")
        events = await conv.until_terminal()
    assert arms(events)[-1] == "turn_complete" and sum(map(is_terminal, events)) == 1
    assert fake.connections == 2
    items = [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in fake.of_type("conversation.item.create")]
    assert items == [
        ("user", "First question"),
        ("user", "First question"),
        ("assistant", fake.reply),
        ("user", "Second question"),
    ]


async def test_an_interrupt_truncates_the_reply_at_the_audio_the_client_played(
    fake: FakeRealtime, start_server: ServerFactory
) -> None:
    fake.delta_delay_s = 0.03
    server = await start_server(**realtime_profile(fake))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        await conv.say("Tell me a story")
        received = 0.0
        while received < 150:
            event = await conv.next()
            if event.WhichOneof("event") == "audio":
                received = event.audio.timestamp_ms + event.audio.duration_ms
        await conv.interrupt(played_ms=120)
        events = await conv.until_terminal()
        assert events[-1].WhichOneof("event") == "turn_interrupted" and sum(map(is_terminal, events)) == 1
        assert events[-1].turn_interrupted.played_ms == 120
    await asyncio.sleep(0.1)
    assert [e["audio_end_ms"] for e in fake.of_type("conversation.item.truncate")] == [120]
    assert len(fake.of_type("response.cancel")) == 1
