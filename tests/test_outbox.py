"""Backpressure and drift: what a slow reader and a sloppy renderer cost."""

from __future__ import annotations

import asyncio

import pytest

from adapters.media import AudioChunk, RenderSettings, VideoEncoding, VideoFrame
from tth_server.drift import DriftController
from tth_server.events import (
    AudioOut,
    ControlReport,
    ErrorCode,
    ErrorOut,
    TextOut,
    TurnCompleted,
    TurnMetrics,
    VideoOut,
)
from tth_server.outbox import Outbox


def _frame(index: int, ts: float, source: float) -> VideoFrame:
    return VideoFrame(b"", VideoEncoding.JPEG, 8, 8, index, ts, source)


async def test_a_full_outbox_drops_video_but_makes_audio_wait() -> None:
    box = Outbox(capacity=2)
    await box.put(TextOut("t", "a"))
    await box.put(AudioOut("t", AudioChunk(b"\0\0", 16000)))
    assert not box.offer_video(VideoOut("t", _frame(0, 0, 0)))
    assert box.dropped["t"] == 1
    waiting = asyncio.ensure_future(box.put(AudioOut("t", AudioChunk(b"\0\0", 16000))))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await box.get()
    await asyncio.wait_for(waiting, 1)
    assert len(box) == 2


async def test_terminal_events_are_never_held_back_and_purge_removes_a_turn() -> None:
    box = Outbox(capacity=1)
    await box.put(TextOut("old", "x"))
    box.offer_video(VideoOut("old", _frame(0, 0, 0)))
    box.put_control(TurnCompleted("new", TurnMetrics(), ControlReport(), ""))
    assert box.purge("old") == 0 and len(box) == 1
    event = await box.get()
    assert isinstance(event, TurnCompleted)
    box.close()
    assert await box.get() is None


def test_drift_controller_places_frames_on_the_grid_nearest_their_audio() -> None:
    drift = DriftController(RenderSettings(fps=25))
    placed = [drift.place(_frame(i, i * 40.0, i * 40.0 - 120)) for i in range(3, 8)]  # 3 frames late
    assert [f.timestamp_ms for f in placed if f] == [0.0, 40.0, 80.0, 120.0, 160.0]
    assert drift.max_abs_ms == pytest.approx(0.0)
    late = drift.place(_frame(8, 320.0, 80.0))  # depicts audio already shown
    assert late is None and drift.corrected == 6


async def test_unread_control_events_overflow_at_the_limit_and_a_reader_that_takes_them_never_does() -> None:
    box = Outbox(capacity=2, max_unread=3)
    for _ in range(10):  # a client that reads: each error is taken before the next comes
        box.put_control(ErrorOut(ErrorCode.INVALID_ARGUMENT, "bad"))
        assert isinstance(await box.get(), ErrorOut)
    assert not box.overflowed and box.peak_controls == 1
    await box.put(TextOut("t", "media does not count"))
    box.put_control(ErrorOut(ErrorCode.INVALID_ARGUMENT, "bad"))
    box.put_control(TurnCompleted("t", TurnMetrics(), ControlReport(), ""))
    assert not box.overflowed and box.purge("t") == 0  # the purge takes the turn's events back, counts and all
    box.put_control(ErrorOut(ErrorCode.INVALID_ARGUMENT, "bad"))
    assert not box.overflowed
    box.put_control(ErrorOut(ErrorCode.INVALID_ARGUMENT, "bad"))
    assert box.overflowed and box.peak_controls == 3 and len(box) == 3  # the third is queued, not dropped
