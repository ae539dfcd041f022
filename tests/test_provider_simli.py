"""`simli_avatar` against a fake Simli (REST + signalling WebSocket + WebRTC video) on 127.0.0.1, through TTH."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from adapters.simli.avatar import SimliAvatar
from tests.conftest import ServerFactory
from tests.fakes.simli import KEY, FakeSimli
from tests.fakes.webrtc import IDLE_LEVEL, loopback_ice
from tests.wire import Conversation, arms, is_terminal
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.config import ConfigError

SHORT = "Hi. Good to see you, my friend."
BRIEF = "Hi there."
LONG = "Once upon a time there was a quiet village by the sea, and every morning the old keeper lit the lamp."
UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SIMLI_API_KEY", KEY)
    monkeypatch.setenv("SIMLI_FACE_ID", "face-test-1")
    with loopback_ice():
        yield


@pytest.fixture
async def fake() -> AsyncIterator[FakeSimli]:
    server = await FakeSimli().start()
    yield server
    await server.aclose()


def profile(fake: FakeSimli, reply: str = BRIEF, session: dict[str, Any] | None = None, **options: Any) -> Any:
    return {
        "session": session or UNPACED,
        "components": {
            "llm": {"adapter": "scripted", "options": {"reply": reply, "hints": False}},
            "tts": {"adapter": "tone_tts", "options": {"sample_rate_hz": 24000, "chunk_ms": 40}},
            "avatar": {
                "adapter": "simli_avatar",
                "options": {"base_url": fake.url, "ws_url": fake.ws_url, **options},
                "fallback": [{"adapter": "stub_avatar"}],
            },
        },
        "router": {"retries": 1, "retry_backoff_ms": 10, "budgets": {"avatar": {"first_byte_ms": 3000}}},
    }


async def turn(conv: Conversation, text: str = "Hello") -> list[pb.ConverseResponse]:
    await conv.say(text)
    events = await conv.until_terminal()
    assert sum(map(is_terminal, events)) == 1
    return events


def videos(events: list[pb.ConverseResponse]) -> list[pb.VideoFrame]:
    return [e.video for e in events if e.WhichOneof("event") == "video"]


def avatar_timing(events: list[pb.ConverseResponse]) -> Any:
    done = events[-1].turn_complete
    (timing,) = [s for s in done.metrics.stages if s.stage == pb.STAGE_AVATAR]
    return timing


def level_per_frame(events: list[pb.ConverseResponse], frame_ms: float) -> list[float]:
    """The RMS of our audio in each frame's 40 ms."""
    audio = b"".join(e.audio.data for e in events if e.WhichOneof("event") == "audio")
    rate = next(e.audio.sample_rate_hz for e in events if e.WhichOneof("event") == "audio")
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    step = int(rate * frame_ms / 1000)
    return [float(np.sqrt(np.mean(samples[i : i + step] ** 2))) for i in range(0, len(samples) - step + 1, step)]


def brightness(frame: pb.VideoFrame) -> float:
    return float(np.median(np.asarray(Image.open(io.BytesIO(frame.data)).convert("L"))))


async def test_a_turn_gets_simlis_frames_on_its_clock_and_the_lips_follow_the_speech(
    fake: FakeSimli, start_server: ServerFactory
) -> None:
    server = await start_server(**profile(fake, SHORT))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        events = await turn(conv)
    assert arms(events)[-1] == "turn_complete"
    frames = videos(events)
    assert [f.frame_index for f in frames] == list(range(len(frames)))
    assert all(f.data[:2] == b"\xff\xd8" and (f.width, f.height) == (256, 256) for f in frames)
    audio_ms = events[-1].turn_complete.metrics.audio_ms
    assert frames[-1].timestamp_ms < audio_ms <= frames[-1].timestamp_ms + 2 * 40
    timing = avatar_timing(events)
    assert timing.adapter == "simli_avatar" and not timing.fallback_used
    assert events[-1].turn_complete.metrics.avatar_first_frame_ms > 0
    assert events[-1].turn_complete.metrics.drift_max_ms <= 20
    # Brightness is the fake's mouth: it follows the level of the audio the face plays in each frame.
    levels = level_per_frame(events, 40)
    n = min(len(levels), len(frames))
    lit = [brightness(f) for f in frames[:n]]
    assert min(lit) >= IDLE_LEVEL - 3 and max(lit) > IDLE_LEVEL + 40
    assert np.corrcoef(levels[:n], lit)[0, 1] > 0.8
    assert fake.token_bodies == [
        {"faceId": "face-test-1", "handleSilence": True, "maxSessionLength": 600, "maxIdleTime": 30}
    ]
    # Our 24 kHz speech went in resampled to Simli's 16 kHz: 2 bytes a sample.
    assert abs(fake.audio_bytes - audio_ms * 16 * 2) < 16 * 2 * 5


async def test_three_turns_use_one_simli_session(fake: FakeSimli, start_server: ServerFactory) -> None:
    server = await start_server(**profile(fake))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        for text in ("Hello", "How are you?", "Thanks"):
            events = await turn(conv, text)
            assert arms(events)[-1] == "turn_complete" and len(videos(events)) > 10
            assert videos(events)[0].frame_index == 0
            assert avatar_timing(events).adapter == "simli_avatar" and not avatar_timing(events).fallback_used
        assert await conv.finish() == grpc.StatusCode.OK
    await asyncio.sleep(0.1)
    assert (fake.token_requests, fake.sessions_started) == (1, 1)
    assert fake.skips == 0


async def test_barge_in_skips_simlis_buffer_and_no_old_frame_follows_the_interrupt(
    fake: FakeSimli, start_server: ServerFactory
) -> None:
    server = await start_server(**profile(fake, LONG, session={"max_lead_ms": 300}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        await conv.say("Tell me a story")
        first = ""
        seen = 0
        while seen < 10:
            event = await conv.next()
            first = first or event.turn_id
            seen += event.WhichOneof("event") == "video"
        await conv.say("Stop, a question")  # barge-in
        after: list[pb.ConverseResponse] = []
        while len(videos([e for e in after if e.turn_id != first])) < 5:  # the new turn's face is speaking
            after.append(await conv.next())
    cut = next(i for i, e in enumerate(after) if e.WhichOneof("event") == "turn_interrupted")
    assert after[cut].turn_id == first
    assert not [e for e in after[cut:] if e.turn_id == first and e.WhichOneof("event") in ("video", "audio")]
    assert fake.skips >= 1 and fake.sessions_started == 1


FAULTS = {
    "bad key (401)": ({"key": "another-key"}, "auth"),
    "rate limited (429, Retry-After too long to wait)": ({"token_status": 429, "retry_after": "30"}, "rate_limit"),
    "signalling socket drops mid-turn": ({"drop_after_frames": 8}, "connectivity"),
    "an ERROR from Simli mid-turn": ({"error_after_frames": 8}, "server"),
    "no frame within the first-frame budget": ({"mute": True}, "timeout"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_simli_fault_falls_back_to_the_local_face_from_the_next_frame(
    fault: str, fake: FakeSimli, start_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    knobs, category = FAULTS[fault]
    for name, value in knobs.items():
        setattr(fake, name, value)
    config = profile(fake)
    config["router"]["budgets"]["avatar"]["first_byte_ms"] = 800
    server = await start_server(**config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        events = await turn(conv)
    assert arms(events)[-1] == "turn_complete"
    frames = videos(events)
    assert [f.frame_index for f in frames] == list(range(len(frames)))  # every slot once: nothing sent twice
    assert frames[-1].timestamp_ms < events[-1].turn_complete.metrics.audio_ms
    timing = avatar_timing(events)
    assert timing.adapter == ("simli_avatar" if "mid-turn" in fault else "stub_avatar") and timing.fallback_used
    if "mid-turn" in fault:
        assert brightness(frames[3]) > 0 and fake.sessions_started == 1  # simli's frames came first
    logged = capsys.readouterr()
    assert f"{category}:" in logged.out + logged.err
    assert KEY not in logged.out + logged.err


async def test_a_short_rate_limit_is_retried_on_simli(fake: FakeSimli, start_server: ServerFactory) -> None:
    fake.token_status, fake.retry_after, fake.fault_times = 429, "0", 1
    server = await start_server(**profile(fake))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        events = await turn(conv)
    assert avatar_timing(events).adapter == "simli_avatar" and not avatar_timing(events).fallback_used
    assert fake.token_requests == 2


async def test_a_session_simli_ended_for_idleness_is_reopened_on_the_next_turn(
    fake: FakeSimli, start_server: ServerFactory
) -> None:
    server = await start_server(**profile(fake, max_idle_time_s=0.3))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        assert arms(await turn(conv))[-1] == "turn_complete"
        await asyncio.sleep(0.6)
        events = await turn(conv)
    assert avatar_timing(events).adapter == "simli_avatar" and not avatar_timing(events).fallback_used
    assert fake.sessions_started == 2


def test_simli_needs_its_key_its_face_and_the_webrtc_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMLI_FACE_ID")
    with pytest.raises(ConfigError, match="SIMLI_FACE_ID"):
        SimliAvatar("simli_avatar", {})
    monkeypatch.delenv("SIMLI_API_KEY")
    with pytest.raises(ConfigError, match="SIMLI_API_KEY"):
        SimliAvatar("simli_avatar", {"face_id": "f"})
    monkeypatch.setitem(sys.modules, "aiortc", None)
    with pytest.raises(ConfigError, match=r'pip install "tth\[webrtc\]"'):
        SimliAvatar("simli_avatar", {"face_id": "f"})
