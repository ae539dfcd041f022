"""Batched media (`SessionConfig.batch_media`): the same chunks and frames in fewer messages, resumable."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import grpc
import pytest

from tests.conftest import ServerFactory
from tests.wire import Conversation, is_terminal
from tth_client import AudioEvent, VideoEvent, events_from_response
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_client.v1 import media_pb2 as mpb

REPLY = "The tide came in slowly. Boats rocked at the pier, and the gulls called over the water."
LLM = {"llm": {"adapter": "scripted", "options": {"reply": REPLY, "hints": False}}}
Response = pb.ConverseResponse | pb.GenerateResponse


def _items(response: Response) -> int:
    """How many events of the session's sequence a response carries."""
    if response.HasField("media"):
        return len(response.media.audio) + len(response.media.video)
    return 1


def _media(events: Sequence[Response]) -> tuple[bytes, list[tuple[int, float]], list[mpb.AudioChunk]]:
    """A turn's speech (PCM), its frames (index, time) and its audio chunks, from either kind of stream."""
    audio: list[mpb.AudioChunk] = []
    frames: list[mpb.VideoFrame] = []
    for e in events:
        if e.HasField("media"):
            audio += e.media.audio
            frames += e.media.video
        elif e.HasField("audio"):
            audio.append(e.audio)
        elif e.HasField("video"):
            frames.append(e.video)
    return b"".join(a.data for a in audio), [(f.frame_index, f.timestamp_ms) for f in frames], audio


@pytest.mark.parametrize("paced", [True, False], ids=["paced", "unpaced"])
async def test_a_batching_stream_gets_the_same_speech_and_frames_in_fewer_messages(
    start_server: ServerFactory, paced: bool
) -> None:
    session = {"max_lead_ms": 300} if paced else {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
    server = await start_server(session=session, components=LLM)
    turns = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for batch in (False, True):
            conv = Conversation(pb_grpc.ConversationServiceStub(channel))
            await conv.start(batch_media=batch)
            await conv.say("Tell me about the harbour.")
            turns[batch] = await conv.until_terminal()
            assert await conv.finish() == grpc.StatusCode.OK

    plain, batched = turns[False], turns[True]
    assert not any(e.HasField("media") for e in plain)
    assert not any(e.HasField("audio") or e.HasField("video") for e in batched)  # one form per stream
    assert _media(batched)[:2] == _media(plain)[:2]  # the same speech, sample for sample, and the same frames
    _, frames, audio = _media(batched)
    assert audio[0].timestamp_ms == 0 and len(frames) >= 25
    for a, b in itertools.pairwise(audio):  # contiguous on the turn's clock, in order
        assert b.timestamp_ms == pytest.approx(a.timestamp_ms + a.duration_ms)
    assert [i for i, _ in frames] == list(range(len(frames)))
    # The point of it: several media events per message.
    media_messages = [e for e in batched if e.HasField("media")]
    assert len(media_messages) * 2 <= sum(map(_items, media_messages))
    # The first audio leaves alone, at once: nothing waits for a batch to fill.
    first = media_messages[0]
    assert len(first.media.audio) == 1 and not first.media.video
    # Numbering: a batch of n takes n numbers and carries its last; the terminal event comes last.
    for prev, nxt in itertools.pairwise(batched):
        assert nxt.seq == prev.seq + _items(nxt)
    assert is_terminal(batched[-1]) and batched[-1].HasField("turn_complete")


async def test_a_resume_after_a_batch_replays_exactly_what_follows_it_in_either_form(
    start_server: ServerFactory,
) -> None:
    server = await start_server(session={"max_lead_ms": 200, "outbox_capacity": 64}, components=LLM)
    channel = start_server.channel(server.port)
    first = Conversation(pb_grpc.ConversationServiceStub(channel))
    session_id = (await first.start(batch_media=True)).session_id
    await first.say("Tell me about the harbour.")
    while sum(e.HasField("media") for e in first.events) < 4:
        await first.next()
    seen = list(first.events)
    await channel.close()  # the connection drops after a batch

    for batch in (False, True):  # the form is the stream's choice, not the session's
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as again:
            second = Conversation(pb_grpc.ConversationServiceStub(again))
            started = await second.start(session_id=session_id, resume_after_seq=seen[-1].seq, batch_media=batch)
            assert started.started.resumed.lossless
            rest = await second.until_terminal()
            second.call.cancel()  # drop again, so the next form can resume from the same point
        whole = seen + rest
        for prev, nxt in itertools.pairwise(whole):  # nothing skipped, nothing twice
            assert nxt.seq == prev.seq + _items(nxt)
        media_arms = {e.WhichOneof("event") for e in rest} & {"media", "audio", "video"}
        assert media_arms == ({"media"} if batch else {"audio", "video"})
        _, frames, audio = _media(whole)
        for a, b in itertools.pairwise(audio):
            assert b.timestamp_ms == pytest.approx(a.timestamp_ms + a.duration_ms)
        assert [i for i, _ in frames] == sorted(set(i for i, _ in frames))
        assert whole[-1].HasField("turn_complete")
        assert " ".join(whole[-1].turn_complete.text.split()) == REPLY


def test_the_sdk_unpacks_a_batch_into_events_in_order_on_the_media_clock() -> None:
    response = pb.ConverseResponse(session_id="s", turn_id="t", seq=9)
    for ts in (0.0, 40.0):
        response.media.audio.add(data=b"\0\0" * 960, sample_rate_hz=24000, timestamp_ms=ts, duration_ms=40.0)
    for i, ts in enumerate((0.0, 40.0, 80.0)):
        response.media.video.add(data=b"jpeg", frame_index=i, timestamp_ms=ts)
    events = events_from_response(response)
    assert [type(e) for e in events] == [AudioEvent, VideoEvent, AudioEvent, VideoEvent, VideoEvent]
    assert [(e.session_id, e.turn_id, e.seq) for e in events] == [("s", "t", seq) for seq in range(5, 10)]
    times = [e.audio.timestamp_ms for e in events if isinstance(e, AudioEvent)]
    times += [e.video.timestamp_ms for e in events if isinstance(e, VideoEvent)]
    assert sorted(times) == [0.0, 0.0, 40.0, 40.0, 80.0]


@pytest.mark.parametrize("batch", [False, True], ids=["per-event", "batched"])
async def test_paced_media_never_runs_more_than_the_lead_ahead_of_real_time(
    start_server: ServerFactory, batch: bool
) -> None:
    lead_ms = 300.0
    server = await start_server(session={"max_lead_ms": lead_ms}, components=LLM)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start(batch_media=batch)  # balanced latency mode: the lead is session.max_lead_ms
        await conv.say("Tell me about the harbour.")
        zero: float | None = None
        ahead: list[float] = []  # how far ahead of real time each chunk and frame arrived, in ms
        loop = asyncio.get_running_loop()
        while not is_terminal(event := await conv.next()):
            _, frames, audio = _media([event])
            times = [a.timestamp_ms for a in audio] + [t for _, t in frames]
            if not times:
                continue
            now = loop.time() * 1000
            zero = now if zero is None else zero
            ahead += [t - (now - zero) for t in times]
        await conv.finish()
    assert len(ahead) > 100
    # The clock starts with the first audio; nothing arrives earlier than the lead allows (20 ms for the network).
    assert max(ahead) <= lead_ms + 20
    # ... and media is sent ahead, not just in time: the lead is used.
    assert sorted(ahead)[len(ahead) // 2] > lead_ms * 0.3


async def test_the_frames_of_a_tick_leave_with_its_audio_however_long_the_face_takes_to_draw(
    start_server: ServerFactory,
) -> None:
    # The local face draws a frame in about a millisecond, so frames drawn only once their audio had left
    # trailed it in messages of their own. Drawn ahead, they leave with it: past the first lead (sent at once,
    # as it is made), every media message that is not the turn's tail carries audio and the frames for it.
    lead_ms = 300.0
    components = {**LLM, "avatar": {"adapter": "face_avatar"}}
    server = await start_server(session={"max_lead_ms": lead_ms}, components=components)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start(batch_media=True)
        await conv.say("Tell me about the harbour.")
        events = await conv.until_terminal()
        await conv.finish()
    paced = [e.media for e in events if e.HasField("media") and min(_times(e)) >= lead_ms]
    last_audio = max(i for i, m in enumerate(paced) if m.audio)
    assert last_audio >= 10
    assert all(m.audio and m.video for m in paced[:last_audio])
    # ... and each message's frames are those of its own stretch of audio, give or take the frame in flight.
    for m in paced[:last_audio]:
        start, end = m.audio[0].timestamp_ms, m.audio[-1].timestamp_ms + m.audio[-1].duration_ms
        assert all(start - 40 <= f.timestamp_ms < end + 40 for f in m.video)


def _times(response: pb.ConverseResponse) -> list[float]:
    return [a.timestamp_ms for a in response.media.audio] + [f.timestamp_ms for f in response.media.video]


async def test_generate_with_batch_media_sends_the_same_turn_in_fewer_responses_numbered_alike(
    start_server: ServerFactory,
) -> None:
    server = await start_server(components=LLM)
    turns: dict[bool, list[pb.GenerateResponse]] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        for batch in (False, True):
            request = pb.GenerateRequest(text="Tell me about the harbour.", batch_media=batch)
            turns[batch] = [r async for r in stub.Generate(request)]

    plain, batched = turns[False], turns[True]
    assert not any(r.HasField("media") for r in plain)
    assert not any(r.HasField("audio") or r.HasField("video") for r in batched)
    assert _media(batched)[:2] == _media(plain)[:2]  # the same speech, sample for sample, and the same frames
    assert len(batched) * 3 < len(plain)
    # Numbered as the per-event form is: a batch of n takes n numbers and carries its last.
    assert [r.seq for r in batched][:1] == [1] and batched[0].HasField("started")
    for prev, nxt in itertools.pairwise(batched):
        assert nxt.seq == prev.seq + _items(nxt)
    assert batched[-1].HasField("turn_complete")
    # The SDK unpacks a Generate batch as it does a Converse one.
    events = [e for r in batched for e in events_from_response(r)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert b"".join(e.audio.data for e in events if isinstance(e, AudioEvent)) == _media(plain)[0]
