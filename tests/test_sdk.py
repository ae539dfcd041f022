"""The SDK against a real server on port 0: turns, interrupt, control updates, sync use, every RPC, errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

import tth_client
from tests.certs import make_certs
from tests.conftest import ServerFactory
from tth_client import (
    AudioEvent,
    Client,
    ErrorEvent,
    Outcome,
    Session,
    StartedEvent,
    TurnCompleteEvent,
    TurnInterruptedEvent,
    VideoEvent,
)
from tth_client.v1 import conversation_pb2 as pb
from tth_server.config import load_config
from tth_server.server import serve

# Media unpaced (and an outbox that never drops), so a turn takes milliseconds; the paced server keeps the
# default lead, so a turn lasts as long as its speech and an interrupt reliably arrives while it runs.
UNPACED = {"session": {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}, "log": {"level": "warning"}}
PACED = {"log": {"level": "warning"}}


@pytest.fixture
async def target(start_server: ServerFactory) -> str:
    return f"127.0.0.1:{(await start_server(**UNPACED)).port}"


@pytest.fixture
async def paced_target(start_server: ServerFactory) -> str:
    return f"127.0.0.1:{(await start_server(**PACED)).port}"


@asynccontextmanager
async def _server(env: dict[str, str], **overrides: Any) -> AsyncIterator[int]:
    running = await serve(load_config("mock", env=env, overrides={**UNPACED, **overrides}), "127.0.0.1:0")
    try:
        yield running.port
    finally:
        await running.stop(0)


@pytest.fixture
def thread_target() -> Iterator[str]:
    """A server on its own event loop thread, for the blocking (sync) API."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = load_config("mock", env={}, overrides=UNPACED)
    running = asyncio.run_coroutine_threadsafe(serve(config, "127.0.0.1:0"), loop)
    server = running.result(30)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _first_audio(turn: tth_client.Turn) -> None:
    async for event in turn:
        if isinstance(event, AudioEvent):
            return
    raise AssertionError("the turn ended before any audio")


# ---- one turn -----------------------------------------------------------------------------------------------------


async def test_say_returns_the_whole_turn_text_speech_frames_metrics_and_control_report(target: str) -> None:
    async with Session(target, persona="casual") as session:
        assert session.session_id and session.started.persona_id == "casual"
        result = await session.say("Hello there!", emotion="happy", intensity=0.8)

    assert result.outcome is Outcome.COMPLETED
    assert result.turn_id.startswith("t-")
    assert result.text and result.spoken_text == result.text
    assert result.sample_rate_hz == session.started.audio.sample_rate_hz
    assert result.audio_ms == pytest.approx(result.metrics.audio_ms, abs=1)
    assert result.frames and len(result.frames) == result.metrics.frames
    applied = {(a.field, a.value, a.source) for a in result.control_report.applied}
    assert ("emotion.label", "happy", "turn") in applied
    assert result.raise_for_outcome() is result


async def test_a_turn_yields_only_its_own_events_ending_with_one_terminal_event(target: str) -> None:
    async with Session(target) as session:
        turn = session.say("Tell me a story")
        events = [event async for event in turn]
        again = [event async for event in turn]  # iterating again replays from the first event

    assert events == again
    assert {e.turn_id for e in events} == {turn.turn_id}
    assert isinstance(events[-1], TurnCompleteEvent)
    assert sum(isinstance(e, TurnCompleteEvent | TurnInterruptedEvent | ErrorEvent) for e in events) == 1
    assert any(isinstance(e, AudioEvent) for e in events) and any(isinstance(e, VideoEvent) for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)


async def test_the_session_stream_yields_every_event_in_order_from_started(target: str) -> None:
    async with Session(target) as session:
        first = session.say("One")
        second = session.say("Two")
        await first, await second
        seen = await _stream_until_end_of(session, second)

    assert isinstance(seen[0], StartedEvent)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert len(seen) == 1 + len(first.events) + len(second.events)


# ---- interrupt and barge-in ---------------------------------------------------------------------------------------


async def test_interrupt_ends_the_turn_with_turn_interrupted_and_no_media_after_it(paced_target: str) -> None:
    async with Session(paced_target) as session:
        turn = session.say("Tell me a long story about the sea")
        await _first_audio(turn)
        await turn.interrupt(played_ms=20)
        result = await turn
        after = session.say("And now?")
        await _first_audio(after)
        await after.interrupt()
        next_result = await after
        stream = await _stream_until_end_of(session, after)

    assert result.outcome is Outcome.INTERRUPTED
    assert result.interruption is not None
    assert result.interruption.reason == pb.INTERRUPT_REASON_CLIENT
    assert result.interruption.played_ms <= 20
    assert isinstance(turn.events[-1], TurnInterruptedEvent)
    cut = next(i for i, e in enumerate(stream) if isinstance(e, TurnInterruptedEvent))
    assert all(e.turn_id != turn.turn_id for e in stream[cut + 1 :])
    assert next_result.turn_id != result.turn_id and next_result.audio_ms > 0


async def _stream_until_end_of(session: Session, turn: tth_client.Turn) -> list[tth_client.Event]:
    """The session stream's events up to and including `turn`'s terminal event."""
    seen = []
    async for event in session:
        seen.append(event)
        if event.turn_id == turn.turn_id and isinstance(event, TurnCompleteEvent | TurnInterruptedEvent | ErrorEvent):
            return seen
    raise AssertionError("the session ended first")


async def test_new_text_while_a_turn_runs_interrupts_it_as_barge_in(paced_target: str) -> None:
    async with Session(paced_target) as session:
        first = session.say("Tell me a long story about the sea")
        await _first_audio(first)
        second = session.say("Stop, tell me about mountains")
        first_result = await first
        await second.interrupt()
        second_result = await second

    assert first_result.outcome is Outcome.INTERRUPTED
    assert first_result.interruption is not None
    assert first_result.interruption.reason == pb.INTERRUPT_REASON_BARGE_IN
    assert second_result.outcome in (Outcome.COMPLETED, Outcome.INTERRUPTED)
    assert second_result.turn_id != first_result.turn_id


async def test_interrupting_an_old_turn_does_not_stop_the_newer_one(target: str) -> None:
    async with Session(target) as session:
        old = session.say("One")
        await old
        new = session.say("Two")
        await old.interrupt()
        assert (await new).outcome is Outcome.COMPLETED


# ---- controls -----------------------------------------------------------------------------------------------------


def _applied(result: tth_client.TurnResult, field: str) -> set[tuple[str, str]]:
    return {(a.value, a.source) for a in result.control_report.applied if a.field == field}


async def test_a_control_update_applies_from_the_next_turn_not_the_running_one(target: str) -> None:
    async with Session(target, persona="neutral") as session:
        running = session.say("First")
        await session.update_controls(emotion="sad", intensity=0.9)
        first = await running
        second = await session.say("Second")
        third = await session.say("Third", emotion="angry")

    assert ("sad", "pending") not in _applied(first, "emotion.label")
    assert ("sad", "pending") in _applied(second, "emotion.label")
    assert ("0.9", "pending") in _applied(second, "emotion.intensity")
    assert ("angry", "turn") in _applied(third, "emotion.label")  # the turn's own controls win
    assert ("0.9", "pending") in _applied(third, "emotion.intensity")  # and the update still stands


# ---- bad input raises, at the call that sent it -------------------------------------------------------------------


async def test_say_raises_for_a_value_out_of_range_or_an_empty_text_and_sends_nothing(target: str) -> None:
    async with Session(target) as session:
        with pytest.raises(tth_client.InvalidControlError, match=r"intensity must be in \[0.0, 1.0\], got 5.0") as bad:
            session.say("Hi", intensity=5)
        with pytest.raises(tth_client.InvalidControlError, match=r"speech_rate must be in \[0.25, 4.0\]"):
            session.say("Hi", control=tth_client.turn_control(speech_rate=1.0), speech_rate=9)
        with pytest.raises(tth_client.InvalidControlError, match="persona must not be empty"):
            session.say("Hi", persona="")
        with pytest.raises(tth_client.InvalidArgumentError, match="text must not be empty") as empty:
            session.say("  ")
        turn = session.say("Hi")
        seen = await _stream_until_end_of(session, turn)

    assert bad.value.field == "intensity" and bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(bad.value, ValueError) and "Fix: use a value in [0, 1]" in str(bad.value)
    assert empty.value.field == "text" and not isinstance(empty.value, tth_client.InvalidControlError)
    assert not any(isinstance(e, ErrorEvent) for e in seen)  # none of them reached the server
    assert (await turn).outcome is Outcome.COMPLETED


async def test_a_text_the_server_refuses_raises_when_its_turn_is_awaited_and_the_next_turn_is_unaffected(
    target: str,
) -> None:
    async with Session(target) as session:
        unknown = session.say("Hi", persona="nobody")
        too_long = session.say("x" * 100_000)
        accepted = await session.say("Hi again")
        with pytest.raises(tth_client.InvalidControlError, match="'nobody' is not a known persona") as persona:
            await unknown
        with pytest.raises(tth_client.InvalidArgumentError, match="the limit is 4000") as text:
            async for _ in too_long:
                pass

    assert persona.value.field == "persona" and "known" in persona.value.hint
    assert text.value.field == "text" and "shorter text" in str(text.value) and "range" not in str(text.value)
    assert accepted.outcome is Outcome.COMPLETED and accepted.turn_id


async def test_update_controls_raises_for_a_value_out_of_range_or_an_unknown_persona_and_keeps_the_controls(
    target: str,
) -> None:
    async with Session(target, persona="neutral") as session:
        with pytest.raises(tth_client.InvalidControlError, match="intensity must be in"):
            await session.update_controls(intensity=5)
        with pytest.raises(tth_client.InvalidControlError, match="'nobody' is not known") as persona:
            await session.update_controls(persona="nobody")
        await session.update_controls(persona="casual", intensity=0.25)
        result = await session.say("Hello")
        seen = [e async for e in _until_closed(session)]

    assert "use one of: casual, excited, neutral, professional" in str(persona.value)
    assert ("casual", "pending") in _applied(result, "character.persona_id")
    assert ("0.25", "pending") in _applied(result, "emotion.intensity")
    assert not any(isinstance(e, ErrorEvent) for e in seen)


async def _until_closed(session: Session) -> AsyncIterator[tth_client.Event]:
    await session.close()
    async for event in session:
        yield event


async def test_generate_raises_before_sending_and_when_the_server_refuses(target: str) -> None:
    async with Client(target) as client:
        with pytest.raises(tth_client.InvalidArgumentError, match="text must not be empty"):
            client.generate("")
        with pytest.raises(tth_client.InvalidControlError, match=r"motion_gain must be in \[0.0, 2.0\]"):
            client.generate("Hi", motion_gain=3)
        with pytest.raises(tth_client.InvalidControlError, match="not a known persona") as persona:
            await client.generate("Hi", persona="nobody")
    assert persona.value.field == "persona" and persona.value.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_text_refused_by_the_turn_rate_limit_fails_its_turn_with_when_to_retry(
    start_server: ServerFactory,
) -> None:
    server = await start_server(**UNPACED, limits={"turns_per_minute_per_key": 1})
    async with Session(f"127.0.0.1:{server.port}") as session:
        first = session.say("One")
        second = session.say("Two")
        completed, refused = await first, await second
        session_errors = []
        async for event in session:
            if isinstance(event, ErrorEvent) and not event.turn_id:
                session_errors.append(event.error)
                break

    assert completed.outcome is Outcome.COMPLETED
    assert refused.outcome is Outcome.FAILED and refused.error is not None
    assert refused.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    with pytest.raises(tth_client.TurnFailedError) as failure:
        refused.raise_for_outcome()
    assert failure.value.retryable and failure.value.retry_after_ms > 0
    assert session_errors == [refused.error]  # a refusal for now, not bad input: a FAILED turn, not an exception


async def test_an_unknown_emotion_name_is_refused_before_anything_is_sent(target: str) -> None:
    async with Session(target) as session:
        with pytest.raises(tth_client.InvalidControlError, match="happy, sad"):
            session.say("Hi", emotion="elated")  # type: ignore[arg-type]
        turn = session.say("Hi")
        seen = await _stream_until_end_of(session, turn)
    assert not any(isinstance(e, ErrorEvent) for e in seen)
    assert [e.turn_id for e in seen if e.turn_id] == [turn.turn_id] * len(turn.events)


# ---- lifecycle ----------------------------------------------------------------------------------------------------


async def test_close_lets_the_running_turn_finish_and_delivers_all_of_it(target: str) -> None:
    session = await Session(target).open()
    try:
        turn = session.say("Finish this")
        await session.close()
        result = await turn
        assert result.outcome is Outcome.COMPLETED
        with pytest.raises(tth_client.ClosedError):
            session.say("Too late")
    finally:
        await session.abort()  # a no-op once closed; it ends the session if the test failed before `close()`


async def test_abort_loses_the_running_turn_which_raises_closed_error(paced_target: str) -> None:
    session = await Session(paced_target).open()
    try:
        turn = session.say("Tell me a long story about the sea")
        await _first_audio(turn)
    finally:
        await session.abort()
    with pytest.raises(tth_client.ClosedError):
        await turn


async def test_cancelling_a_task_awaiting_a_turn_loses_nothing(paced_target: str) -> None:
    async with Session(paced_target) as session:
        turn = session.say("Tell me a long story about the sea")
        waiting = asyncio.ensure_future(turn.result())
        await _first_audio(turn)
        waiting.cancel()
        await turn.interrupt()
        result = await turn
    assert waiting.cancelled()
    assert result.outcome is Outcome.INTERRUPTED
    assert isinstance(turn.events[-1], TurnInterruptedEvent)


async def test_leaving_the_block_by_an_exception_aborts_the_session(paced_target: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with Session(paced_target) as session:
            turn = session.say("Tell me a long story about the sea")
            await _first_audio(turn)
            raise RuntimeError("boom")
    with pytest.raises(tth_client.ClosedError):
        await turn


# ---- the other RPCs -----------------------------------------------------------------------------------------------


async def test_create_session_then_attach_keeps_its_persona_and_id(target: str) -> None:
    async with Client(target) as client:
        created = await client.create_session(persona="excited", speech_rate=1.1)
        async with client.session(session_id=created.session_id) as session:
            result = await session.say("Hi")
        with pytest.raises(tth_client.NotFoundError, match="session_id"):
            await client.session(session_id=created.session_id).open()  # already attached once

    assert created.attach_timeout_s > 0
    assert session.session_id == created.session_id and session.started.persona_id == "excited"
    assert ("1.1", "session") in _applied(result, "character.speech_rate")


async def test_generate_runs_a_whole_turn_without_a_session(target: str) -> None:
    async with Client(target) as client:
        turn = client.generate("Hello", emotion="sad", persona="professional")
        kinds = {type(event) async for event in turn}
        result = await turn

    assert {AudioEvent, VideoEvent, TurnCompleteEvent} <= kinds
    assert result.outcome is Outcome.COMPLETED
    assert len(result.frames) == result.metrics.frames and result.pcm
    assert ("sad", "turn") in _applied(result, "emotion.label")


async def test_generate_with_an_invalid_control_raises_invalid_argument_naming_the_field(target: str) -> None:
    async with Client(target) as client:
        with pytest.raises(tth_client.InvalidArgumentError, match=r"intensity must be in \[0.0, 1.0\]") as caught:
            await client.generate("Hello", intensity=2.0)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "Fix:" in str(caught.value) and "\n" not in str(caught.value)


async def test_list_models_names_each_stage_its_adapter_and_the_personas(target: str) -> None:
    async with Client(target) as client:
        models = await client.list_models()
    assert models.profile == "mock"
    assert {s.adapter for s in models.stages} == {"scripted", "tone_tts", "stub_avatar"}
    assert "casual" in models.persona_ids


async def test_health_reports_the_server_and_each_stage(target: str) -> None:
    async with Client(target) as client:
        assert await client.health() == "SERVING"
        assert await client.health("tth.tts") == "SERVING"
        assert await client.health("no.such.service") == "SERVICE_UNKNOWN"


# ---- the sync API -------------------------------------------------------------------------------------------------


def test_the_sync_session_says_iterates_updates_and_interrupts(thread_target: str) -> None:
    with tth_client.SyncSession(thread_target, persona="casual") as session:
        first = session.say("Hello").result()
        events = list(session.say("Again"))
        session.update_controls(emotion="sad")
        third = session.say("Once more").result()
        session.interrupt()  # nothing running: a no-op the session survives

    assert first.outcome is Outcome.COMPLETED and first.frames
    assert isinstance(events[0], tth_client.TextDeltaEvent | AudioEvent | VideoEvent)
    assert isinstance(events[-1], TurnCompleteEvent)
    assert ("sad", "pending") in _applied(third, "emotion.label")


def test_the_sync_api_raises_for_bad_input_as_the_async_one_does(thread_target: str) -> None:
    with tth_client.SyncSession(thread_target) as session:
        with pytest.raises(tth_client.InvalidControlError, match="intensity must be in"):
            session.say("Hi", intensity=5)
        with pytest.raises(tth_client.InvalidControlError, match="'nobody' is not known"):
            session.update_controls(persona="nobody")
        refused = session.say("Hi", persona="nobody")
        with pytest.raises(tth_client.InvalidControlError, match="not a known persona"):
            refused.result()
        assert session.say("Still there?").result().outcome is Outcome.COMPLETED
    with tth_client.SyncClient(thread_target) as client, pytest.raises(tth_client.InvalidArgumentError, match="empty"):
        client.generate(" ")


def test_the_sync_client_reaches_every_rpc(thread_target: str) -> None:
    with tth_client.SyncClient(thread_target) as client:
        assert client.health() == "SERVING"
        assert client.list_models().profile == "mock"
        generated = client.generate("Hello")
        assert sum(isinstance(e, AudioEvent) for e in generated) > 0
        assert generated.result().outcome is Outcome.COMPLETED
        created = client.create_session(persona="excited")
        with client.session(session_id=created.session_id) as session:
            assert session.started.persona_id == "excited"
            assert session.say("Hi").result().outcome is Outcome.COMPLETED


# ---- errors, credentials, TLS -------------------------------------------------------------------------------------


async def test_an_unreachable_target_raises_connect_error_with_a_one_line_fix() -> None:
    with pytest.raises(tth_client.ConnectError) as caught:
        async with Session("127.0.0.1:1", open_timeout_s=5):
            pass
    message = str(caught.value)
    assert "\n" not in message and "127.0.0.1:1" in message and "Fix: start a server" in message
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(tth_client.ConnectError):
        async with Client("127.0.0.1:1") as client:
            await client.list_models()


async def test_the_api_key_travels_as_a_bearer_token_and_a_refusal_is_an_authentication_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _server({"TTH_API_KEYS": "s3cret"}) as port:
        target = f"127.0.0.1:{port}"
        async with Client(tth_client.Connection(target, api_key="s3cret")) as client:
            assert (await client.list_models()).profile == "mock"
        async with Session(tth_client.Connection(target, api_key="s3cret")) as session:
            assert (await session.say("Hi")).outcome is Outcome.COMPLETED
        monkeypatch.setenv("TTH_API_KEY", "s3cret")  # the default when no api_key is given
        async with Client(target) as client:
            assert (await client.list_models()).profile == "mock"
        async with Client(tth_client.Connection(target, api_key="")) as client:
            with pytest.raises(tth_client.AuthenticationError) as unary:
                await client.list_models()
        with pytest.raises(tth_client.AuthenticationError):
            async with Session(tth_client.Connection(target, api_key="wrong")):
                pass

    message = str(unary.value)
    assert unary.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "\n" not in message and "missing API key" in message and "Fix: pass a valid API key" in message


async def test_tls_and_mutual_tls_with_given_certificates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    async with _server({}, tls=tls) as port:
        async with Client(
            tth_client.Connection(f"127.0.0.1:{port}", root_certificates=certs.ca.read_bytes())
        ) as client:
            assert (await client.list_models()).profile == "mock"
    async with _server({}, tls={**tls, "client_ca_file": str(certs.ca)}) as port:
        mutual = tth_client.Connection(
            f"127.0.0.1:{port}",
            root_certificates=certs.ca.read_bytes(),
            certificate_chain=certs.client_cert.read_bytes(),
            private_key=certs.client_key.read_bytes(),
        )
        async with Client(mutual) as client, client.session() as on_its_channel:  # a client's sessions share it
            assert (await on_its_channel.say("Hi")).outcome is Outcome.COMPLETED
        async with Session(mutual) as session:
            assert (await session.say("Hi")).outcome is Outcome.COMPLETED
        no_cert = tth_client.Connection(f"127.0.0.1:{port}", root_certificates=certs.ca.read_bytes())
        async with Client(no_cert, timeout_s=5) as client:
            with pytest.raises(tth_client.ConnectError):  # no client certificate: the handshake fails
                await client.list_models()
