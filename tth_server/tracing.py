"""OpenTelemetry tracing, a span per turn and per stage, when the `otel` extra is installed.

    pip install 'tth[otel]'        # opentelemetry-api and opentelemetry-sdk

Each turn is a `tth.turn` span (attributes: session and turn ids, outcome, and
the turn's metrics under their TurnMetrics names, e.g. `tth.time_to_first_audio_ms`)
with a child span per stage: `tth.llm`, `tth.tts`, `tth.avatar`, or `tth.realtime`.
A stage whose provider failed records the error on its span.

Where spans go is OpenTelemetry's business: an application embedding the server
may install its own tracer provider first; otherwise `configure()` (called by
`serve()`) installs the SDK's, named `tth`, exporting as the standard variable
`OTEL_TRACES_EXPORTER` says: `console`, `otlp` (needs
opentelemetry-exporter-otlp) or `none`, the default here, which keeps spans in
process (useful only to a test's span processor).

Without the extra, `ENABLED` is False, decided once at import: `turn()` returns
the coroutine it was given and `span()` a shared no-op, so a turn pays one
function call and nothing more.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, TypeVar

from tth_server.events import TurnMetrics

T = TypeVar("T")


class _Request(Protocol):
    @property
    def turn_id(self) -> str: ...


class TracedTurn(Protocol):
    """What a turn's span reads of it (`tth_server.pipeline.TurnRun` is one)."""

    @property
    def request(self) -> _Request: ...
    @property
    def metrics(self) -> TurnMetrics: ...
    @property
    def audio_end_ms(self) -> float: ...


ENABLED = importlib.util.find_spec("opentelemetry") is not None and (
    importlib.util.find_spec("opentelemetry.trace") is not None
)
_NOOP: AbstractContextManager[None] = nullcontext()
_METRIC_FIELDS = (
    "time_to_first_text_ms",
    "time_to_first_audio_ms",
    "time_to_first_video_ms",
    "llm_first_token_ms",
    "tts_first_byte_ms",
    "avatar_first_frame_ms",
    "drift_mean_ms",
    "drift_max_ms",
    "frames",
    "frames_dropped",
)

if ENABLED:
    from opentelemetry import trace

    _tracer = trace.get_tracer("tth")


def span(name: str) -> AbstractContextManager[Any]:
    """A span around a block, current for the tasks it starts; a no-op (yielding None) without the extra.

    Leaving the block by an exception does not mark the span failed (an interrupt
    cancels stages); call `failed()` for errors that are failures.
    """
    if not ENABLED:
        return _NOOP
    started: AbstractContextManager[Any] = _tracer.start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    )
    return started


def failed(current: Any, error: BaseException) -> None:
    """Mark the span from `span()` failed with `error` (nothing without the extra)."""
    if current is not None:
        current.record_exception(error)
        current.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))


def turn(run: TracedTurn, session_id: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """`coro` (one turn of the pipeline) inside a `tth.turn` span; `coro` itself without the extra."""
    if not ENABLED:
        return coro
    return _traced_turn(run, session_id, coro)


async def _traced_turn(run: TracedTurn, session_id: str, coro: Coroutine[Any, Any, T]) -> T:
    attributes = {"tth.session_id": session_id, "tth.turn_id": run.request.turn_id}
    with span("tth.turn") as current:
        current.set_attributes(attributes)
        outcome = "failed"
        try:
            result = await coro
            outcome = "completed"
            return result
        except asyncio.CancelledError:
            outcome = "interrupted"
            raise
        except Exception as exc:
            failed(current, exc)
            raise
        finally:
            current.set_attribute("tth.outcome", outcome)
            m = run.metrics
            for name in _METRIC_FIELDS:
                current.set_attribute(f"tth.{name}", getattr(m, name))
            current.set_attribute("tth.audio_ms", run.audio_end_ms)


def configure(service_name: str = "tth") -> bool:
    """Install the SDK's tracer provider unless one is set; True when spans are exported somewhere."""
    if not ENABLED or importlib.util.find_spec("opentelemetry.sdk") is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return True  # the host application chose already
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip().lower()
    exporter: SpanExporter | None = None
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_TRACES_EXPORTER=otlp needs the exporter: pip install opentelemetry-exporter-otlp"
            ) from exc
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter is not None
