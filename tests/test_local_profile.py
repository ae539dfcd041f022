"""The default `local` profile end to end: real speech and a lip-synced face, no key, no network."""

from __future__ import annotations

import asyncio
import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerFactory
from tests.wire import Conversation, control
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_client.v1 import media_pb2 as mpb
from tth_server.config import load_config

UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}


@pytest.fixture
async def local(start_server: ServerFactory) -> pb_grpc.ConversationServiceStub:
    server = await start_server("local", session=UNPACED)
    channel = start_server.channel(server.port)
    return pb_grpc.ConversationServiceStub(channel)


async def _generate(stub: pb_grpc.ConversationServiceStub, text: str, **controls: object) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(text=text, control=control(**controls))
    return [event async for event in stub.Generate(request)]


def _pcm(events: list[pb.GenerateResponse]) -> np.ndarray:
    return np.frombuffer(b"".join(e.audio.data for e in events if e.HasField("audio")), dtype="<i2")


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z0-9']+", text)]


def test_local_is_the_default_profile() -> None:
    config = load_config(env={})
    assert config.profile == "local"
    assert (config.components["tts"].adapter, config.components["avatar"].adapter) == ("piper_tts", "face_avatar")


async def test_a_local_turn_is_real_speech_with_word_marks_and_a_face_covering_it(
    local: pb_grpc.ConversationServiceStub,
) -> None:
    events = await _generate(local, "Hello there!")
    reply = events[-1].turn_complete.text
    pcm = _pcm(events).astype(np.float64)
    rate = events[0].started.audio.sample_rate_hz
    assert rate == 22050
    # Speech has energy and pauses: loud 20 ms windows and quiet ones.
    frames = pcm[: len(pcm) // 441 * 441].reshape(-1, 441)
    rms = np.sqrt((frames**2).mean(axis=1))
    assert np.percentile(rms, 90) > 1000 and np.percentile(rms, 10) < 200
    # The word marks spell out the reply, in order, inside the audio.
    marks = [m for e in events if e.HasField("audio") for m in e.audio.marks if m.type == mpb.SPEECH_MARK_TYPE_WORD]
    assert [w for m in marks for w in _words(m.text)] == _words(reply)
    audio_ms = len(pcm) * 1000 / rate
    assert all(0 <= m.timestamp_ms < audio_ms for m in marks)
    # Frames cover the audio within one frame and decode at the requested size.
    video = [e.video for e in events if e.HasField("video")]
    assert len(video) == math.ceil(audio_ms / 40 - 1e-9)
    assert all(abs(v.drift_ms) <= 20 for v in video)
    assert Image.open(io.BytesIO(video[0].data)).size == (256, 256)


def _face(events: list[pb.GenerateResponse]) -> np.ndarray:
    first = next(e.video for e in events if e.HasField("video"))
    return np.asarray(Image.open(io.BytesIO(first.data)).convert("L"), dtype=np.float64)


async def test_emotions_and_personas_change_both_voice_and_face(local: pb_grpc.ConversationServiceStub) -> None:
    happy = await _generate(local, "Hi!", label="happy", intensity=1.0)
    sad = await _generate(local, "Hi!", label="sad", intensity=1.0)

    def tts_detail(events: list[pb.GenerateResponse]) -> str:
        report = events[-1].turn_complete.control_report
        return next(a.detail for a in report.applied if a.field == "emotion.label" and a.stage == pb.STAGE_TTS)

    assert tts_detail(happy) != tts_detail(sad)
    assert np.abs(_face(happy) - _face(sad)).mean() > 1.0
    casual = await _generate(local, "Hi!", persona_id="casual")
    professional = await _generate(local, "Hi!", persona_id="professional")
    assert np.abs(_face(casual) - _face(professional)).mean() > 5.0


async def test_many_concurrent_local_sessions_each_get_their_own_speech(
    local: pb_grpc.ConversationServiceStub,
) -> None:
    async def one(i: int) -> tuple[str, list[str]]:
        conv = Conversation(local)
        await conv.start()
        await conv.say(f"What about topic number {i}?")
        events = await conv.until_terminal()
        await conv.finish()
        marks = [m.text for e in events if e.HasField("audio") for m in e.audio.marks if m.type == 1]
        assert events[-1].WhichOneof("event") == "turn_complete"
        return events[-1].turn_complete.text, marks

    results = await asyncio.gather(*(one(i) for i in range(12)))
    for reply, marks in results:
        assert [w for m in marks for w in _words(m)] == _words(reply)
    assert len({reply for reply, _ in results}) > 1
