"""How cheap the procedural face is: cold first-frame latency and steady-state frames per core.

    .venv/bin/python bench/bench_face.py [--seconds 60]

Cold first frame: a fresh adapter (empty atlas) is handed one 100 ms chunk and
timed until its first frame, for several persona/expression pairs; this is the
atlas build for one face (body, bare head, two patches, one encode). The very
first one in the process also pays Pillow's lazy plugin imports, and is printed
separately.

Steady state: a `--seconds` turn of speech-like audio (loudness mode, and phoneme
mode with marks every ~80 ms) rendered once to warm the atlas, then again and
timed. Frames per core is frames / process CPU seconds (worker threads
included), the number that decides how many sessions one core can carry. The
cold pass is printed too: its misses are the per-frame cost before the cache
is warm. The last line per size is the worst case, every frame a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.base import AvatarInput, ControlMapping
from adapters.controls import Controls, EmotionLabel
from adapters.face.avatar import FaceAvatar
from adapters.face.visemes import PHONEME_VISEMES
from adapters.media import AudioChunk, MarkKind, RenderSettings, SpeechMark

RATE = 16000
CHUNK_MS = 100


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total = int(seconds * RATE)
    while sum(len(p) for p in parts) < total:
        n = int(rng.uniform(0.08, 0.3) * RATE)
        t = np.arange(n) / RATE
        buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
        parts.append(rng.uniform(0.1, 1.0) * 7000 * np.hanning(n) * buzz)
        parts.append(np.zeros(int(rng.uniform(0.02, 0.3) * RATE)))
    pcm: np.ndarray = np.clip(np.concatenate(parts)[:total], -32768, 32767).astype(np.int16)
    return pcm


def inputs(pcm: np.ndarray, phonemes: bool, controls: Controls) -> list[AvatarInput]:
    rng = np.random.default_rng(1)
    symbols = sorted(PHONEME_VISEMES)
    step = CHUNK_MS * RATE // 1000
    out = []
    for i in range(0, len(pcm), step):
        start = i * 1000 / RATE
        marks: tuple[SpeechMark, ...] = ()
        if phonemes:
            times = np.arange(start, start + CHUNK_MS, 80.0) + rng.uniform(0, 20)
            marks = tuple(SpeechMark(MarkKind.PHONEME, float(t), str(rng.choice(symbols))) for t in times)
        out.append(AvatarInput(AudioChunk(pcm[i : i + step].tobytes(), RATE, start, marks), ControlMapping(controls)))
    return out


async def feed(items: Sequence[AvatarInput]) -> AsyncIterator[AvatarInput]:
    for item in items:
        yield item


async def run(avatar: FaceAvatar, items: Sequence[AvatarInput], settings: RenderSettings) -> tuple[int, float, float]:
    """(frames, CPU seconds, wall seconds) for one turn."""
    cpu, wall = time.process_time(), time.perf_counter()
    frames = 0
    async for _ in avatar.render(feed(items), settings):
        frames += 1
    return frames, time.process_time() - cpu, time.perf_counter() - wall


async def first_frame_ms(size: int, controls: Controls) -> float:
    avatar = FaceAvatar("face", {})
    items = inputs(speech_like(0.1), False, controls)
    start = time.perf_counter()
    async for _ in avatar.render(feed(items), RenderSettings(width=size, height=size)):
        return (time.perf_counter() - start) * 1000
    raise RuntimeError("no frame")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the steady-state turn")
    args = parser.parse_args()

    very_first = await first_frame_ms(256, Controls())
    print(f"first frame in a fresh process (256 px, includes Pillow's lazy imports): {very_first:.1f} ms")
    faces = [Controls(persona_id=p, label=e, intensity=0.8) for p in ("neutral", "casual") for e in EmotionLabel]
    for size in (256, 512):
        cold = [await first_frame_ms(size, c) for c in faces]
        print(
            f"{size} px cold first frame (atlas build), {len(cold)} faces: "
            f"median {statistics.median(cold):.1f} ms, max {max(cold):.1f} ms"
        )

    pcm = speech_like(args.seconds)
    for size in (256, 512):
        settings = RenderSettings(width=size, height=size)
        for mode in ("loudness", "phonemes"):
            avatar = FaceAvatar("face", {})
            items = inputs(pcm, mode == "phonemes", Controls(label=EmotionLabel.HAPPY, intensity=0.6))
            frames, cpu, wall = await run(avatar, items, settings)
            stats = avatar.atlas.stats
            print(
                f"{size} px {mode:8} cold pass:   {frames / cpu:8.0f} frames/s per core "
                f"({stats.misses} misses of {frames}, {stats.bytes / 1024:.0f} KB cached)"
            )
            frames, cpu, wall = await run(avatar, items, settings)
            print(
                f"{size} px {mode:8} steady state: {frames / cpu:8.0f} frames/s per core "
                f"({frames / wall:.0f} wall), {frames} frames, {avatar.atlas.stats.misses - stats.misses} new misses"
            )
        uncached = FaceAvatar("face", {"cache_mb": 0.001})
        items = inputs(pcm[: 10 * RATE], False, Controls())
        await run(uncached, items[:5], settings)
        frames, cpu, _ = await run(uncached, items, settings)
        print(f"{size} px every frame a miss: {frames / cpu:8.0f} frames/s per core")


if __name__ == "__main__":
    asyncio.run(main())
