"""A turn's outlet: the media the speech and face stages make, sent on to the sink as the pacer lets it go."""

from __future__ import annotations

import asyncio
from collections import deque

from adapters.media import AudioChunk, MarkKind, VideoFrame
from tth_server.pipeline.turn import SpokenSegment, TurnRun, TurnSink


class Outlet:
    """A turn's media between the stages that make it and the sink.

    Speech and face hand over what they make, each in time order, as soon as they
    make it; one task sends it on when the pacer lets it go, the earlier first, but
    all the audio that may leave before the video that may. The speech stage keeps
    at most one tick ahead of what may leave (`Pacer.ahead`), so the face has drawn
    a tick's frames before the tick comes and they leave with their audio: one wake
    per turn per tick and, on a stream that batches media, one message per tick
    however long a frame takes to draw. Media that may leave at once while nothing
    of its kind is held goes straight to the sink from the stage that made it,
    without passing through this outlet's task: the start of a turn, the first audio
    above all, is sent as soon as it is made, and the face sees the first chunk
    after it has left, so drawing never delays it. The released media is what the
    turn has sent: `TurnRun.audio_end_ms`, the spoken segments' ends and words, the
    frame count.
    """

    def __init__(self, run: TurnRun, sink: TurnSink) -> None:
        self._run = run
        self._sink = sink
        self._audio: deque[tuple[AudioChunk, SpokenSegment]] = deque()
        self._video: deque[VideoFrame] = deque()
        self._producers = 2  # the speech and the face stages, until each says it is done
        self._more = asyncio.Event()

    async def audio(self, chunk: AudioChunk, spoken: SpokenSegment) -> None:
        if self._audio or not self._run.pacer.due(chunk.timestamp_ms):
            self._audio.append((chunk, spoken))
            self._more.set()
        else:  # due now and nothing held before it: straight to the sink
            await self._run.pacer.wait(chunk.timestamp_ms)  # the first chunk starts the turn's clock
            await self._send_audio(chunk, spoken)

    async def video(self, frame: VideoFrame) -> None:
        if self._video or not self._run.pacer.due(frame.timestamp_ms):
            self._video.append(frame)
            self._more.set()
        else:
            await self._send_video(frame)

    def done(self) -> None:
        """A producer (the speech or the face stage) has handed over all it will produce."""
        self._producers -= 1
        self._more.set()

    async def run(self) -> None:
        """Send everything handed over, each piece when the pacer lets it go; returns when both producers are done."""
        audio, video, pacer = self._audio, self._video, self._run.pacer
        while True:
            if not audio and not video:
                if not self._producers:
                    return
                self._more.clear()
                await self._more.wait()
                continue
            # The earlier first, but all the audio that may leave before any video: chunks that leave one after
            # another are merged into one by the outbox. Each piece leaves its deque only once sent, so a producer
            # sends past the outlet (`audio`, `video`) only when nothing of its kind is held or on its way.
            first = audio[0][0].timestamp_ms if audio else None
            if first is not None and (not video or first <= video[0].timestamp_ms or pacer.due(first)):
                await pacer.wait(first)
                await self._send_audio(*audio[0])
                audio.popleft()
            else:
                await pacer.wait(video[0].timestamp_ms)
                await self._send_video(video[0])
                video.popleft()

    async def _send_audio(self, chunk: AudioChunk, spoken: SpokenSegment) -> None:
        run = self._run
        if not run.audio_end_ms:
            run.metrics.time_to_first_audio_ms = run.since_start_ms()
        await self._sink.audio(chunk)
        run.audio_end_ms = spoken.end_ms = chunk.end_ms
        spoken.word_times.extend(m.time_ms for m in chunk.marks if m.kind is MarkKind.WORD)

    async def _send_video(self, frame: VideoFrame) -> None:
        run = self._run
        if run.metrics.frames == 0:
            run.metrics.time_to_first_video_ms = run.since_start_ms()
        run.metrics.frames += 1  # handed to the sink; finish_metrics leaves only those the client got
        await self._sink.video(frame)
