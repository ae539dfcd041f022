"""Prometheus metrics and tracing: served after turns, counted by outcome, free when tracing is absent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from tests.conftest import ServerFactory
from tests.wire import Conversation, arms
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
TURN_HISTOGRAMS = (
    "tth_time_to_first_text_ms",
    "tth_time_to_first_audio_ms",
    "tth_time_to_first_video_ms",
    "tth_llm_first_token_ms",
    "tth_tts_first_byte_ms",
    "tth_avatar_first_frame_ms",
    "tth_drift_mean_ms",
    "tth_drift_max_ms",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _conversation(start_server: ServerFactory, **overrides: object) -> Conversation:
    server = await start_server(**overrides)
    channel = start_server.channel(server.port)
    conv = Conversation(pb_grpc.ConversationServiceStub(channel))
    await conv.start()
    return conv


async def test_metrics_endpoint_serves_the_turn_metrics_by_their_turn_complete_names(
    start_server: ServerFactory,
) -> None:
    port = _free_port()
    conv = await _conversation(start_server, session=UNPACED, metrics={"port": port})
    await conv.say("Hello there!")
    events = await conv.until_terminal()
    assert arms(events)[-1] == "turn_complete"
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    for name in TURN_HISTOGRAMS:
        assert f"{name}_bucket" in text and f"{name}_count" in text, name
        field = name.removeprefix("tth_")
        assert events[-1].turn_complete.metrics.DESCRIPTOR.fields_by_name[field] is not None
    for name in ("tth_turns_total", "tth_active_sessions", "tth_running_turns", "tth_frames_total"):
        assert name in text, name
    assert 'tth_turns_total{outcome="completed"}' in text
    for name in ("tth_provider_errors", "tth_stage_failures", "tth_fallbacks"):
        assert f"# TYPE {name}_total counter" in text, name
    await conv.finish()


async def test_a_completed_turn_is_counted_and_observed_once(start_server: ServerFactory) -> None:
    conv = await _conversation(start_server, session=UNPACED)
    completed = _value("tth_turns_total", outcome="completed")
    first_audio = _value("tth_time_to_first_audio_ms_count")
    frames = _value("tth_frames_total")
    await conv.say("Hello there!")
    events = await conv.until_terminal()
    sent = events[-1].turn_complete.metrics.frames
    assert _value("tth_turns_total", outcome="completed") == completed + 1
    assert _value("tth_time_to_first_audio_ms_count") == first_audio + 1
    assert _value("tth_frames_total") == frames + sent > frames
    await conv.finish()


async def test_an_interrupted_turn_counts_as_interrupted(start_server: ServerFactory) -> None:
    llm = {"adapter": "scripted", "options": {"tokens_per_s": 20}}
    conv = await _conversation(start_server, session={"max_lead_ms": 100}, components={"llm": llm})
    interrupted = _value("tth_turns_total", outcome="interrupted")
    completed = _value("tth_turns_total", outcome="completed")
    await conv.say("Tell me a long story.")
    await conv.until("audio")
    await conv.interrupt()
    assert arms(await conv.until_terminal())[-1] == "turn_interrupted"
    assert _value("tth_turns_total", outcome="interrupted") == interrupted + 1
    assert _value("tth_turns_total", outcome="completed") == completed
    await conv.finish()


async def test_a_failed_turn_counts_as_failed_with_its_provider_error(start_server: ServerFactory) -> None:
    tts = {"adapter": "tone_tts", "options": {"fail_after": 0, "fail_category": "rate_limit"}}
    conv = await _conversation(start_server, session=UNPACED, components={"tts": tts})
    failed = _value("tth_turns_total", outcome="failed")
    stage_failures = _value("tth_stage_failures_total", stage="tts", category="rate_limit")
    errors = _value("tth_provider_errors_total", stage="tts", adapter="tone_tts", category="rate_limit")
    await conv.say("Hello there!")
    events = await conv.until_terminal()
    assert arms(events)[-1] == "error"
    assert _value("tth_turns_total", outcome="failed") == failed + 1
    assert _value("tth_stage_failures_total", stage="tts", category="rate_limit") == stage_failures + 1
    assert _value("tth_provider_errors_total", stage="tts", adapter="tone_tts", category="rate_limit") == errors + 1
    await conv.finish()


async def test_an_error_a_fallback_absorbed_counts_for_its_provider_but_fails_nothing(
    start_server: ServerFactory,
) -> None:
    failing = {"adapter": "tone_tts", "options": {"fail_after": 0, "fail_category": "auth"}}
    tts = {**failing, "fallback": [{"adapter": "tone_tts"}]}
    conv = await _conversation(start_server, session=UNPACED, components={"tts": tts})
    completed = _value("tth_turns_total", outcome="completed")
    stage_failures = _value("tth_stage_failures_total", stage="tts", category="auth")
    errors = _value("tth_provider_errors_total", stage="tts", adapter="tone_tts", category="auth")
    fallbacks = _value("tth_fallbacks_total", stage="tts")
    await conv.say("Hello there!")
    assert arms(await conv.until_terminal())[-1] == "turn_complete"  # the user never knew
    assert _value("tth_turns_total", outcome="completed") == completed + 1
    assert _value("tth_provider_errors_total", stage="tts", adapter="tone_tts", category="auth") == errors + 1
    assert _value("tth_fallbacks_total", stage="tts") == fallbacks + 1
    assert _value("tth_stage_failures_total", stage="tts", category="auth") == stage_failures
    await conv.finish()


async def test_active_sessions_counts_open_sessions(start_server: ServerFactory) -> None:
    server = await start_server(session=UNPACED)
    before = _value("tth_active_sessions")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        assert _value("tth_active_sessions") == before + 1
        await conv.finish()
    assert _value("tth_active_sessions") == before


def test_without_the_otel_extra_tracing_hands_back_what_it_was_given() -> None:
    # Run where opentelemetry cannot be imported, whether or not this venv has the extra.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None
        from tth_server import tracing

        async def turn():
            return 1

        coro = turn()
        assert tracing.ENABLED is False
        assert tracing.turn(None, "s", coro) is coro
        coro.close()
        assert tracing.span("tth.llm") is tracing.span("tth.tts")
        with tracing.span("tth.llm") as current:
            assert current is None
            tracing.failed(current, RuntimeError("ignored"))
        assert tracing.configure() is False
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


OTEL = Path(sys.prefix) / "otel"  # the otel extra, installed apart by `make test` (see the Makefile)


def test_with_the_otel_extra_each_turn_has_a_span_with_stage_spans() -> None:
    if not (OTEL / "opentelemetry" / "sdk").is_dir():
        pytest.fail(f"the otel extra is needed at {OTEL}: `make test` installs it there")
    # In a process of its own, where the extra is importable: this venv stays as a default install.
    script = textwrap.dedent(
        """
        import asyncio

        import grpc
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from tests.wire import Conversation
        from tth_client.v1 import conversation_pb2_grpc as pb_grpc
        from tth_server import tracing
        from tth_server.config import load_config
        from tth_server.server import serve

        async def main():
            assert tracing.ENABLED
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)  # an application's own provider: serve() keeps it
            session = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
            fail = {"adapter": "tone_tts", "options": {"fail_after": 0, "fail_category": "server"}}
            server = await serve(load_config("mock", overrides={"session": session}, env={}), "127.0.0.1:0")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                conv = Conversation(pb_grpc.ConversationServiceStub(channel))
                await conv.start()
                await conv.say("Hello there!")
                events = await conv.until_terminal()
                await conv.finish()
            await server.stop(0)
            turn_id, metrics = events[-1].turn_id, events[-1].turn_complete.metrics
            spans = exporter.get_finished_spans()
            turns = [s for s in spans if s.name == "tth.turn" and s.attributes["tth.turn_id"] == turn_id]
            assert len(turns) == 1 and turns[0].attributes["tth.outcome"] == "completed", spans
            assert turns[0].attributes["tth.time_to_first_audio_ms"] == metrics.time_to_first_audio_ms
            children = {s.name for s in spans if s.parent is not None and s.parent.span_id == turns[0].context.span_id}
            assert children == {"tth.llm", "tth.tts", "tth.avatar"}, children

            # A failing stage records its error on its span, and the turn's span says failed.
            exporter.clear()
            overrides = {"session": session, "components": {"tts": fail}}
            server = await serve(load_config("mock", overrides=overrides, env={}), "127.0.0.1:0")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                conv = Conversation(pb_grpc.ConversationServiceStub(channel))
                await conv.start()
                await conv.say("Hello there!")
                assert (await conv.until_terminal())[-1].HasField("error")
                await conv.finish()
            await server.stop(0)
            spans = {s.name: s for s in exporter.get_finished_spans()}
            assert spans["tth.turn"].attributes["tth.outcome"] == "failed"
            assert spans["tth.tts"].status.status_code is trace.StatusCode.ERROR
            assert any(e.name == "exception" for e in spans["tth.tts"].events)
            print("ok")

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OTEL), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "ok"
