"""The outbox merges audio that queues up behind audio, and never holds a turn's first audio."""

from __future__ import annotations

import asyncio

from adapters.media import AudioChunk, VideoEncoding, VideoFrame
from tth_server.events import AudioOut, TextOut, VideoOut
from tth_server.outbox import MAX_AUDIO_MS, Outbox


def _audio(turn: str, at_ms: float, ms: float = 40.0) -> AudioOut:
    return AudioOut(turn, AudioChunk(b"\x01\x00" * int(24 * ms), 24000, at_ms))


async def test_audio_queued_behind_audio_leaves_as_one_contiguous_event() -> None:
    box = Outbox()
    box._heard = "t"  # the turn's first audio is out already
    for i in range(3):
        await box.put(_audio("t", i * 40.0))
    merged = await box.get()
    assert isinstance(merged, AudioOut)
    assert merged.chunk.timestamp_ms == 0.0 and merged.chunk.duration_ms == 120.0
    assert len(box) == 0


async def test_audio_is_not_merged_across_a_frame_a_turn_a_gap_or_the_cap() -> None:
    box = Outbox()
    box._heard = "t"
    await box.put(_audio("t", 0.0))
    box.offer_video(VideoOut("t", VideoFrame(b"j", VideoEncoding.JPEG, 64, 64, 0, 0.0, 0.0)))
    await box.put(_audio("t", 40.0))
    await box.put(_audio("t", 100.0))  # a gap
    await box.put(_audio("u", 0.0))  # another turn
    sizes = [await box.get() for _ in range(5)]
    assert [type(e).__name__ for e in sizes] == ["AudioOut", "VideoOut", "AudioOut", "AudioOut", "AudioOut"]
    box = Outbox()
    box._heard = "t"
    for i in range(20):
        await box.put(_audio("t", i * 40.0))
    first = await box.get()
    assert isinstance(first, AudioOut) and first.chunk.duration_ms <= MAX_AUDIO_MS


async def test_a_turns_first_audio_is_handed_over_before_its_producer_goes_on() -> None:
    box = Outbox()
    taken: list[str] = []

    async def reader() -> None:
        while (event := await box.get()) is not None:
            taken.append(type(event).__name__)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    await box.put(TextOut("t", "Hi"))
    assert taken == ["TextOut"]
    await box.put(_audio("t", 0.0))
    assert taken == ["TextOut", "AudioOut"]
    box.close()
    await task
