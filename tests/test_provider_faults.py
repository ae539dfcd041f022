"""The fault matrix, end to end: a real TTH server, a real gRPC client, fake providers on 127.0.0.1.

For every networked provider and every fault (401, 429 with Retry-After, 500, a
hang before the first byte, a connection dropped mid-stream, a malformed event)
the turn ends with exactly one terminal event. A fault before any output is
served by the configured fallback within the stage's budget (turn_complete says
so); a fault after output fails the turn, and nothing already sent is repeated.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests.conftest import ServerFactory
from tests.fakes.anthropic import KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.elevenlabs import KEY as ELEVENLABS_KEY
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.http import Faults
from tests.fakes.openai import KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI
from tests.fakes.realtime import FakeRealtime, RealtimeFaults
from tests.wire import Conversation, arms, is_terminal
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

BUDGET_MS = 400
UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
FALLBACK_REPLY = "Fallback speaking now."
ROUTER = {
    "retries": 1,
    "retry_backoff_ms": 20,
    "max_retry_after_ms": 500,
    "budgets": {s: {"first_byte_ms": BUDGET_MS, "total_ms": 10_000} for s in ("llm", "tts", "avatar", "realtime")},
}
STAGE = {"llm": pb.STAGE_LLM, "tts": pb.STAGE_TTS, "realtime": pb.STAGE_REALTIME}

# fault name -> (HTTP Faults, Realtime faults, served by the fallback?)
FAULTS: dict[str, tuple[Faults, RealtimeFaults, bool]] = {
    "401": (Faults(status=401), RealtimeFaults(handshake_status=401), True),
    "429 retry-after": (Faults(status=429, retry_after="30"), RealtimeFaults(handshake_status=429), True),
    "500": (Faults(status=500), RealtimeFaults(handshake_status=500), True),
    "hang": (Faults(hang=True), RealtimeFaults(hang=True), True),
    "dropped mid-stream": (Faults(drop_after=4), RealtimeFaults(drop_after_deltas=3), False),
    "malformed": (Faults(malformed_after=4), RealtimeFaults(malformed_after_deltas=3), False),
}


@dataclass
class Setup:
    stage: str
    overrides: dict[str, Any]
    primary_reply: str
    fallback_reply: str
    calls: Any  # () -> int: provider calls so far


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("ELEVENLABS_API_KEY", ELEVENLABS_KEY)


@pytest.fixture
async def fakes() -> AsyncIterator[list[Any]]:
    started: list[Any] = []
    yield started
    for fake in started:
        await fake.aclose()


SCRIPTED_FALLBACK = [{"adapter": "scripted", "options": {"reply": FALLBACK_REPLY, "hints": False}}]
TONE_FALLBACK = [{"adapter": "tone_tts"}]
LLM_REPLY = "Hello there! It is lovely to hear from you. How can I help today?"


async def setup(provider: str, fault: str, fakes: list[Any]) -> Setup:
    http, realtime, _ = FAULTS[fault]
    if provider == "openai_chat":
        fake = await FakeOpenAI(chat_faults=http, reply=LLM_REPLY).start()
        fakes.append(fake)
        llm = {"adapter": "openai_chat", "options": {"base_url": fake.url}, "fallback": SCRIPTED_FALLBACK}
        return Setup("llm", {"components": {"llm": llm}}, LLM_REPLY, FALLBACK_REPLY, lambda: fake.chat_calls)
    if provider == "anthropic":
        claude = await FakeAnthropic(faults=http, reply=LLM_REPLY).start()
        fakes.append(claude)
        llm = {"adapter": "anthropic", "options": {"base_url": claude.url}, "fallback": SCRIPTED_FALLBACK}
        return Setup("llm", {"components": {"llm": llm}}, LLM_REPLY, FALLBACK_REPLY, lambda: claude.calls)
    reply = "Short and sweet."
    llm_fixed = {"adapter": "scripted", "options": {"reply": reply, "hints": False}}
    if provider == "openai_tts":
        fake = await FakeOpenAI(speech_faults=_tts_faults(http), speech_piece=4800).start()
        fakes.append(fake)
        tts = {"adapter": "openai_tts", "options": {"base_url": fake.url}, "fallback": TONE_FALLBACK}
        return Setup("tts", {"components": {"llm": llm_fixed, "tts": tts}}, reply, reply, lambda: fake.speech_calls)
    if provider == "elevenlabs":
        eleven = await FakeElevenLabs(faults=_tts_faults(http), piece=3200).start()
        fakes.append(eleven)
        tts = {"adapter": "elevenlabs", "options": {"base_url": eleven.url}, "fallback": TONE_FALLBACK}
        return Setup("tts", {"components": {"llm": llm_fixed, "tts": tts}}, reply, reply, lambda: eleven.calls)
    assert provider == "openai_realtime"
    primary = await FakeRealtime(faults=realtime, reply=LLM_REPLY).start()
    spare = await FakeRealtime(reply=FALLBACK_REPLY).start()
    fakes += [primary, spare]
    rt = {
        "adapter": "openai_realtime",
        "options": {"url": primary.url},
        "fallback": [{"adapter": "openai_realtime", "options": {"url": spare.url}}],
    }
    overrides = {"components": {"llm": None, "tts": None, "realtime": rt}}
    return Setup("realtime", overrides, LLM_REPLY, FALLBACK_REPLY, lambda: primary.connections)


def _tts_faults(http: Faults) -> Faults:
    # Audio comes in larger pieces than text: drop after the first piece so audio was already sent.
    if http.drop_after is not None:
        return Faults(drop_after=1)
    if http.malformed_after is not None:
        return Faults(drop_after=1)  # PCM has no framing to corrupt; a cut stream is its malformed case
    return http


PROVIDERS = ["openai_chat", "anthropic", "openai_tts", "elevenlabs", "openai_realtime"]


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_fault_ends_the_turn_once_falls_back_in_budget_and_repeats_nothing(
    provider: str, fault: str, fakes: list[Any], start_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await setup(provider, fault, fakes)
    server = await start_server(session=UNPACED, router=ROUTER, **s.overrides)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        conv = Conversation(stub)
        await conv.start()
        started = time.monotonic()
        await conv.say("Hello!")
        events = await conv.until_terminal()
        elapsed_ms = (time.monotonic() - started) * 1000
        models = await stub.ListModels(pb.ListModelsRequest())
        status = await conv.finish()
    assert status == grpc.StatusCode.OK
    assert sum(map(is_terminal, events)) == 1 and is_terminal(events[-1])
    text = "".join(e.text_delta.text for e in events if e.WhichOneof("event") == "text_delta")
    audio = [e.audio for e in events if e.WhichOneof("event") == "audio"]
    for before, after in itertools.pairwise(audio):  # one clock, no chunk twice
        assert after.timestamp_ms == pytest.approx(before.timestamp_ms + before.duration_ms)
    video = [e.video.frame_index for e in events if e.WhichOneof("event") == "video"]
    assert video == list(range(len(video)))

    served_by_fallback = FAULTS[fault][2]
    if served_by_fallback:
        assert arms(events)[-1] == "turn_complete", events[-1]
        done = events[-1].turn_complete
        assert done.text == s.fallback_reply and text.strip() == s.fallback_reply
        timing = next(t for t in done.metrics.stages if t.stage == STAGE[s.stage])
        assert timing.fallback_used and (timing.adapter != provider or s.stage == "realtime")
        assert elapsed_ms < BUDGET_MS + 1500  # the fallback fired within the stage's budget
        if fault == "hang":
            assert s.calls() == 1  # a hung provider is not retried
    else:
        assert events[-1].WhichOneof("event") == "error" and events[-1].turn_id
        assert events[-1].error.code in (pb.ERROR_CODE_UNAVAILABLE,)
        if s.stage in ("llm", "realtime"):
            assert text and s.primary_reply.startswith(text)  # what was sent, once, and nothing after it
            assert FALLBACK_REPLY not in text
        else:
            assert audio  # audio had been sent before the provider dropped
        assert s.calls() == 1  # output had been sent: no retry
    printed = capsys.readouterr()
    for key in (OPENAI_KEY, ANTHROPIC_KEY, ELEVENLABS_KEY):
        assert key not in printed.out + printed.err
        assert key not in str(events[-1]) and key not in str(models)


@pytest.mark.parametrize("provider", ["openai_chat", "openai_tts"])
async def test_a_429_with_a_short_retry_after_is_retried_on_the_same_provider(
    provider: str, fakes: list[Any], start_server: ServerFactory
) -> None:
    faults = Faults(status=429, retry_after="0.2", times=1)
    fake = await FakeOpenAI(
        chat_faults=faults if provider == "openai_chat" else Faults(times=0),
        speech_faults=faults if provider == "openai_tts" else Faults(times=0),
    ).start()
    fakes.append(fake)
    components: dict[str, Any] = {
        "llm": {"adapter": "openai_chat", "options": {"base_url": fake.url}, "fallback": SCRIPTED_FALLBACK},
        "tts": {"adapter": "openai_tts", "options": {"base_url": fake.url}, "fallback": TONE_FALLBACK},
    }
    server = await start_server(session=UNPACED, router=ROUTER, components=components)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        await conv.say("Hello!")
        events = await conv.until_terminal()
    done = events[-1].turn_complete
    assert arms(events)[-1] == "turn_complete"
    assert not any(t.fallback_used for t in done.metrics.stages)
    assert {t.adapter for t in done.metrics.stages if t.stage in (pb.STAGE_LLM, pb.STAGE_TTS)} == {
        "openai_chat",
        "openai_tts",
    }
    assert (fake.chat_calls if provider == "openai_chat" else fake.speech_calls) >= 2


async def test_without_a_fallback_a_provider_error_keeps_its_code_and_retry_hint(
    fakes: list[Any], start_server: ServerFactory
) -> None:
    fake = await FakeOpenAI(chat_faults=Faults(status=429, retry_after="30")).start()
    fakes.append(fake)
    server = await start_server(
        session=UNPACED,
        router=ROUTER,
        components={"llm": {"adapter": "openai_chat", "options": {"base_url": fake.url}}},
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        await conv.say("Hello!")
        events = await conv.until_terminal()
        await conv.say("Again")  # the session survives
        again = await conv.until_terminal()
    error = events[-1].error
    assert error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED and error.retryable and error.retry_after_ms == 30_000
    assert OPENAI_KEY not in error.message
    assert sum(map(is_terminal, again)) == 1


async def test_a_hung_provider_without_a_fallback_fails_with_deadline_exceeded_on_budget(
    fakes: list[Any], start_server: ServerFactory
) -> None:
    fake = await FakeOpenAI(speech_faults=Faults(hang=True)).start()
    fakes.append(fake)
    server = await start_server(
        session=UNPACED, router=ROUTER, components={"tts": {"adapter": "openai_tts", "options": {"base_url": fake.url}}}
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        started = time.monotonic()
        await conv.say("Hello!")
        events = await conv.until_terminal()
    assert events[-1].error.code == pb.ERROR_CODE_DEADLINE_EXCEEDED
    assert BUDGET_MS / 1000 <= time.monotonic() - started < BUDGET_MS / 1000 + 1.0
