"""Prometheus metrics: what the service does, under the names its turns report.

Every number in a turn's `turn_complete.metrics` (`TurnMetrics`) that is worth a
distribution has a histogram named `tth_` + the field's name, in the field's
unit, milliseconds: `tth_time_to_first_audio_ms` holds the same numbers as
`metrics.time_to_first_audio_ms`. (Prometheus' own convention is seconds; one
name meaning one number wherever it is read wins here.) A histogram gets one
observation per turn that reached the point it measures: a turn interrupted
before its first audio adds nothing to `tth_time_to_first_audio_ms`.

    histograms (ms)  tth_time_to_first_text_ms   tth_time_to_first_audio_ms   tth_time_to_first_video_ms
                     tth_llm_first_token_ms      tth_tts_first_byte_ms        tth_avatar_first_frame_ms
                     tth_drift_mean_ms           tth_drift_max_ms             tth_total_ms
    counters         tth_turns_total{outcome}              completed | interrupted | failed
                     tth_provider_errors_total{stage,adapter,category}  every error a provider returned,
                                                           also those a retry or a fallback absorbed
                     tth_stage_failures_total{stage,category}   errors that failed a stage (and so its turn)
                     tth_fallbacks_total{stage}            turns a fallback provider served
                     tth_frames_total / tth_frames_dropped_total / tth_audio_ms_total
    gauges           tth_active_sessions   sessions in this process (attached, or waiting for a resume)
                     tth_running_turns     of those, with a turn running

A provider that keeps failing behind a working fallback shows in
`tth_provider_errors_total` (labelled with its adapter) while
`tth_stage_failures_total` stays flat: users were not affected, but the
provider needs a look. Everything is kept in the
process's default registry (with prometheus-client's process_* and python_*
metrics: CPU seconds and resident memory per process); `serve()` exposes it on
`metrics.port` when that is set. Recording costs a few microseconds per turn and
nothing per media event.
"""

from __future__ import annotations

import weakref
from collections.abc import Coroutine, Iterable, Sized
from typing import Any, Protocol, TypeVar

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adapters.errors import ProviderError
from tth_server import tracing
from tth_server.events import TurnMetrics

T = TypeVar("T")

LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2500, 5000, 10000)
DRIFT_BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
TOTAL_BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000, 20000, 40000, 80000, 160000)
OUTCOMES = ("completed", "interrupted", "failed")


def _latency(field: str, what: str) -> Histogram:
    return Histogram(f"tth_{field}", f"{what}, in ms (TurnMetrics.{field}).", buckets=LATENCY_BUCKETS_MS)


TIME_TO_FIRST_TEXT = _latency("time_to_first_text_ms", "From the user text to the first text_delta")
TIME_TO_FIRST_AUDIO = _latency("time_to_first_audio_ms", "From the user text to the first audio")
TIME_TO_FIRST_VIDEO = _latency("time_to_first_video_ms", "From the user text to the first video frame")
LLM_FIRST_TOKEN = _latency("llm_first_token_ms", "From the user text to the LLM's first token")
TTS_FIRST_BYTE = _latency("tts_first_byte_ms", "From the first text sent to the TTS to its first audio")
AVATAR_FIRST_FRAME = _latency("avatar_first_frame_ms", "From the first audio to the avatar's first frame")
DRIFT_MEAN = Histogram(
    "tth_drift_mean_ms", "A turn's mean |A/V drift|, in ms (TurnMetrics.drift_mean_ms).", buckets=DRIFT_BUCKETS_MS
)
DRIFT_MAX = Histogram(
    "tth_drift_max_ms", "A turn's largest |A/V drift|, in ms (TurnMetrics.drift_max_ms).", buckets=DRIFT_BUCKETS_MS
)
TOTAL = Histogram(
    "tth_total_ms", "From the user text to the terminal event, in ms (TurnMetrics.total_ms).", buckets=TOTAL_BUCKETS_MS
)
TURNS = Counter("tth_turns", "Turns ended, by outcome: completed, interrupted or failed.", ["outcome"])
PROVIDER_ERRORS = Counter(
    "tth_provider_errors",
    "Errors providers returned, by stage, adapter and category (auth, rate_limit, ...), "
    "including those a retry or a fallback absorbed.",
    ["stage", "adapter", "category"],
)
STAGE_FAILURES = Counter(
    "tth_stage_failures",
    "Provider errors that failed a stage (and its turn), by stage and category.",
    ["stage", "category"],
)
FALLBACKS = Counter("tth_fallbacks", "Turns in which a fallback provider served a stage, by stage.", ["stage"])
FRAMES = Counter("tth_frames", "Video frames sent (TurnMetrics.frames).")
FRAMES_DROPPED = Counter("tth_frames_dropped", "Video frames dropped for a slow reader (TurnMetrics.frames_dropped).")
AUDIO_MS = Counter("tth_audio_ms", "Milliseconds of audio sent (TurnMetrics.audio_ms).")

for _outcome in OUTCOMES:  # every outcome is exported from the start, at 0
    TURNS.labels(_outcome)


class _SessionTable(Sized, Iterable[Any], Protocol):
    def values(self) -> list[Any]: ...


class _LiveSessions(Collector):
    """Counts live sessions at scrape time, over every session table in the process."""

    def __init__(self) -> None:
        self._tables: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, table: _SessionTable) -> None:
        self._tables.add(table)

    def collect(self) -> Iterable[Metric]:
        tables = list(self._tables)
        sessions = GaugeMetricFamily("tth_active_sessions", "Sessions in this process, attached or awaiting a resume.")
        sessions.add_metric([], sum(len(t) for t in tables))
        turns = GaugeMetricFamily("tth_running_turns", "Sessions in this process with a turn running.")
        turns.add_metric([], sum(1 for t in tables for s in t.values() if s.state.value not in ("idle", "closed")))
        return [sessions, turns]


_LIVE = _LiveSessions()
REGISTRY.register(_LIVE)


def track_sessions(table: _SessionTable) -> None:
    """Count `table`'s sessions in tth_active_sessions for as long as it lives."""
    _LIVE.track(table)


def observe_turn(outcome: str, m: TurnMetrics) -> None:
    """Record a turn that ended with `outcome` (completed, interrupted or failed)."""
    TURNS.labels(outcome).inc()
    if m.time_to_first_text_ms:
        TIME_TO_FIRST_TEXT.observe(m.time_to_first_text_ms)
    if m.time_to_first_audio_ms:
        TIME_TO_FIRST_AUDIO.observe(m.time_to_first_audio_ms)
    if m.time_to_first_video_ms:
        TIME_TO_FIRST_VIDEO.observe(m.time_to_first_video_ms)
    firsts = {"llm": LLM_FIRST_TOKEN, "tts": TTS_FIRST_BYTE, "avatar": AVATAR_FIRST_FRAME}
    for timing in m.stages:
        histogram = firsts.get(timing.stage.value)
        if histogram is not None:
            histogram.observe(timing.first_byte_ms)
        if timing.fallback_used:
            FALLBACKS.labels(timing.stage.value).inc()
    if m.frames > 0:
        DRIFT_MEAN.observe(m.drift_mean_ms)
        DRIFT_MAX.observe(m.drift_max_ms)
        FRAMES.inc(m.frames)
    if m.frames_dropped:
        FRAMES_DROPPED.inc(m.frames_dropped)
    if m.audio_ms:
        AUDIO_MS.inc(m.audio_ms)
    if m.total_ms:
        TOTAL.observe(m.total_ms)


_COUNTED: weakref.WeakSet[ProviderError] = weakref.WeakSet()  # provider errors already in PROVIDER_ERRORS


def provider_error(stage: str, adapter: str, error: ProviderError) -> None:
    """A provider call failed (the router may still retry it or fall back)."""
    PROVIDER_ERRORS.labels(stage, adapter, error.category.value).inc()
    _COUNTED.add(error)


async def _watched(stage: str, coro: Coroutine[Any, Any, T]) -> T:
    with tracing.span(f"tth.{stage}") as current:
        try:
            return await coro
        except ProviderError as exc:
            if exc.provider and exc not in _COUNTED:  # an adapter running unrouted (no router saw it)
                provider_error(stage, exc.provider, exc)
            STAGE_FAILURES.labels(stage, exc.category.value).inc()
            tracing.failed(current, exc)
            raise


def stage(stage: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """Run one stage of a turn: its provider errors counted, inside a `tth.<stage>` span when tracing."""
    return _watched(stage, coro)


def serve_http(port: int, host: str = "127.0.0.1") -> Any:
    """Serve /metrics on HOST:PORT from a daemon thread; returns the server (call `shutdown()` to stop it)."""
    server, _thread = start_http_server(port, addr=host)
    return server
