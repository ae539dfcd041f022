"""How cheap the photo face is: new portrait to first frame, frames per core, real-time sessions, drift.

    .venv/bin/python bench/bench_photo.py [--seconds 20] [--sessions 100]

The portrait is NASA's public-domain astronaut photo from scikit-image.

- New portrait to first frame: a portrait this process has not seen (fresh cache
  folder, models already loaded as `start()` leaves them) from `prepare()` to the
  first frame of its first turn; then the same portrait from a second adapter
  sharing the cache folder (seen before: no detection).
- Frames per core at 256 and 512 px: a `--seconds` turn of speech-like audio rendered
  once (cold: every new pose is a warp and an encode) and again (steady: the frame
  cache is warm); frames / process CPU seconds, rendering in threads of this process
  (`render_processes: 0`) so that every bit of the work is counted. The last
  line per size is every frame a miss.
- Real-time sessions: `--sessions` turns at once in this process, each fed its own
  speech-like audio at real time in 40 ms chunks (a stand-in for TTS, so the face is
  what is measured); a frame is late when it is produced more than one frame period
  after the audio it depicts has arrived plus half a frame. Goal: under 1 % late.
  Run twice on a fresh adapter (`--render-processes` worker processes render the
  misses): with its frame cache cold, all sessions starting at once (the worst case),
  then warm from that run with new speech (a server that has been running).
  Stand-ins: frames that repeated their turn's previous frame because their pose
  was not rendered within `max_lag_ms` past its time (`--max-lag-ms`).
- Drift: every frame's `source_audio_ms - timestamp_ms` and its distance from
  index * frame_ms, over the long turn.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.base import AvatarInput, ControlMapping
from adapters.controls import Controls
from adapters.media import AudioChunk, RenderSettings
from adapters.photo.avatar import PhotoAvatar
from bench.bench_face import RATE, inputs, speech_like


def astronaut() -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "PNG")
    return buffer.getvalue()


async def feed(items: Sequence[AvatarInput]) -> AsyncIterator[AvatarInput]:
    for item in items:
        yield item


async def first_frame(portrait: bytes, cache: str) -> float:
    """From a fresh adapter's `prepare()` (models loaded and its render worker started beforehand, untimed)
    to its first frame."""
    async with PhotoAvatar("photo", {"cache_dir": cache}) as avatar:
        items = inputs(speech_like(0.1), False, Controls())
        start = time.perf_counter()
        portrait_id = await avatar.prepare(portrait)
        async for _ in avatar.render(feed(items), RenderSettings(portrait_id=portrait_id)):
            return (time.perf_counter() - start) * 1000
    raise RuntimeError("no frame")


async def throughput(avatar: PhotoAvatar, portrait_id: str, pcm: np.ndarray, size: int) -> None:
    settings = RenderSettings(width=size, height=size, portrait_id=portrait_id)
    items = inputs(pcm, True, Controls())
    for label in ("cold pass", "steady state"):
        misses = avatar.frames.misses
        cpu, wall = time.process_time(), time.perf_counter()
        frames = [f async for f in avatar.render(feed(items), settings)]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"{size} px {label:12}: {len(frames) / cpu:7.0f} frames/s per core ({len(frames) / wall:.0f} wall), "
            f"{len(frames)} frames, {avatar.frames.misses - misses} misses, {avatar.frames.bytes / 1024:.0f} KB cached"
        )
        if label == "steady state":
            drift = [abs(f.source_audio_ms - f.timestamp_ms) for f in frames]
            clock = [abs(f.timestamp_ms - f.frame_index * settings.frame_ms) for f in frames]
            print(
                f"{size} px drift over {len(pcm) / RATE:.0f} s: mean {statistics.mean(drift):.3f} ms, "
                f"max {max(drift):.3f} ms; clock error max {max(clock):.3f} ms"
            )
    uncached = PhotoAvatar("photo", {"cache_dir": "", "cache_mb": 0.001, "render_processes": 0, "max_lag_ms": 10000})
    uncached_id = await uncached.prepare(astronaut())
    settings = RenderSettings(width=size, height=size, portrait_id=uncached_id)
    cpu = time.process_time()
    count = 0
    async for _ in uncached.render(feed(items[:50]), settings):
        count += 1
    print(f"{size} px every frame a miss: {count / (time.process_time() - cpu):7.0f} frames/s per core")


async def one_session(avatar: PhotoAvatar, portrait_id: str, pcm: np.ndarray) -> tuple[int, int, int]:
    """(frames, late frames, late frames after the first second) for one real-time turn of `pcm`."""
    step = 40 * RATE // 1000  # 40 ms chunks, as the TTS adapters send
    settings = RenderSettings(portrait_id=portrait_id)
    start = time.perf_counter()

    async def audio() -> AsyncIterator[AvatarInput]:
        for i in range(0, len(pcm), step):
            at_ms = i * 1000 / RATE
            delay = start + at_ms / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            yield AvatarInput(AudioChunk(pcm[i : i + step].tobytes(), RATE, at_ms), ControlMapping(Controls()))

    frames = late = late_later = 0
    async for frame in avatar.render(audio(), settings):
        frames += 1
        # Due once the audio half a frame past it has arrived (the earliest it can be made), plus a frame.
        due = start + (frame.timestamp_ms + settings.frame_ms / 2 + 40.0) / 1000 + settings.frame_ms / 1000
        if time.perf_counter() > due:
            late += 1
            late_later += frame.timestamp_ms >= 1000
    return frames, late, late_later


async def capacity(
    avatar: PhotoAvatar, portrait_id: str, sessions: int, seconds: float, label: str, first_seed: int
) -> None:
    speech = [speech_like(seconds, seed=first_seed + s) for s in range(sessions)]  # made before the clocks start
    misses, stand_ins = avatar.frames.misses, avatar.stand_ins
    cpu, wall = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one_session(avatar, portrait_id, pcm) for pcm in speech))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    frames, late, later = (sum(r[i] for r in results) for i in range(3))
    print(
        f"{sessions} real-time sessions at 256 px, {label}, {seconds:.0f} s each: {frames} frames, "
        f"{late} late ({100 * late / max(1, frames):.2f} %; {later} of them after the first second), "
        f"{avatar.frames.misses - misses} misses, {avatar.stand_ins - stand_ins} stand-ins "
        f"({100 * (avatar.stand_ins - stand_ins) / max(1, frames):.2f} %), CPU {cpu / wall:.2f} cores in this process"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the steady-state turn")
    parser.add_argument("--sessions", type=int, default=100, help="concurrent real-time sessions")
    parser.add_argument("--render-processes", type=int, default=1, help="the photo avatar's render_processes")
    parser.add_argument("--max-lag-ms", type=float, default=40.0, help="the photo avatar's max_lag_ms")
    args = parser.parse_args()
    portrait = astronaut()
    with tempfile.TemporaryDirectory() as cache:
        load = time.perf_counter()
        # Frames per core in threads of this process, so that process_time counts all the work; every
        # frame waits for its pose (no stand-ins), so that every pose is rendered.
        avatar = PhotoAvatar("photo", {"cache_dir": cache, "render_processes": 0, "max_lag_ms": 10000})
        await avatar.start()
        load_ms = (time.perf_counter() - load) * 1000
        fresh = [await first_frame(portrait, tempfile.mkdtemp(dir=cache)) for _ in range(3)]
        print(f"detector models loaded (start()): {load_ms:.0f} ms")
        print(f"new portrait to first frame (models loaded): median {statistics.median(fresh):.0f} ms of 3 {fresh}")
        await avatar.prepare(portrait)  # writes the landmarks to `cache`
        seen = [await first_frame(portrait, cache) for _ in range(3)]
        print(
            "portrait seen before (landmarks from the cache folder) to first frame: "
            f"median {statistics.median(seen):.0f} ms"
        )
        portrait_id = await avatar.prepare(portrait)
        pcm = speech_like(args.seconds)
        for size in (256, 512):
            await throughput(avatar, portrait_id, pcm, size)
        options = {"cache_dir": cache, "render_processes": args.render_processes, "max_lag_ms": args.max_lag_ms}
        cold = PhotoAvatar("photo", options)
        async with cold:
            cold_id = await cold.prepare(portrait)
            await capacity(cold, cold_id, args.sessions, 10.0, "frame cache cold", 0)
            await capacity(cold, cold_id, args.sessions, 10.0, "warm from that run, new speech", args.sessions)


if __name__ == "__main__":
    asyncio.run(main())
