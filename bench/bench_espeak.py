"""How fast the espeak-ng TTS adapter is: first-chunk latency and synthesis throughput.

    .venv/bin/python bench/bench_espeak.py [--calls 200] [--streams 8]

First-chunk latency is the time from asking for a sentence to holding its first
chunk, one call at a time (the pool is idle, so this is the adapter's own cost:
a pipe round trip, espeak's first 60 ms buffer, re-chunking). Throughput is seconds
of audio produced per wall-clock second with `--streams` calls always in flight,
for 1 worker and for 2; the last line is the library alone in this process, with
no pool, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.controls import Controls
from adapters.espeak.binding import Espeak
from adapters.espeak.tts import EspeakTTS

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I would be glad to help you plan the trip, and we can start with the dates.",
    "That is a great question; let me think about it for a moment.",
    "Sure, here is what I found about the weather in Lisbon this weekend.",
]


async def first_chunk_ms(tts: EspeakTTS, calls: int) -> list[float]:
    mapping = tts.map_controls(Controls())
    latencies = []
    for i in range(calls):
        started = time.perf_counter()
        chunks = tts.synthesize(SENTENCES[i % len(SENTENCES)], mapping)
        await anext(chunks)
        latencies.append((time.perf_counter() - started) * 1000)
        async for _ in chunks:  # finish the call so the next one finds the pool idle
            pass
    return latencies


async def throughput(tts: EspeakTTS, calls: int, streams: int) -> float:
    """Seconds of audio per wall second with `streams` calls in flight."""
    mapping = tts.map_controls(Controls())
    audio_ms = 0.0
    queue = list(range(calls))

    async def stream() -> None:
        nonlocal audio_ms
        while queue:
            i = queue.pop()
            async for chunk in tts.synthesize(SENTENCES[i % len(SENTENCES)], mapping):
                audio_ms += chunk.duration_ms

    started = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(streams)))
    return audio_ms / 1000 / (time.perf_counter() - started)


def library_alone(calls: int) -> float:
    espeak = Espeak.open()
    espeak.set_voice("en-us")
    samples = 0

    def on_audio(pcm: bytes, _: object) -> bool:
        nonlocal samples
        samples += len(pcm) // 2
        return True

    started = time.perf_counter()
    for i in range(calls):
        espeak.synthesize(SENTENCES[i % len(SENTENCES)], on_audio)
    return samples / espeak.sample_rate_hz / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()

    for workers in (1, 2):
        tts = EspeakTTS("espeak", {"workers": workers})
        async with tts:
            await first_chunk_ms(tts, 10)  # warm up: imports, page faults, voice loading
            latencies = sorted(await first_chunk_ms(tts, args.calls))
            rate = await throughput(tts, args.calls, args.streams)
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(f"workers={workers} first chunk: median {statistics.median(latencies):.2f} ms, p95 {p95:.2f} ms")
        print(
            f"workers={workers} throughput: {rate:.0f} s of audio per wall second "
            f"({rate / workers:.0f} per worker, {args.streams} streams)"
        )
    print(f"library alone, in process: {library_alone(args.calls):.0f} s of audio per wall second")


if __name__ == "__main__":
    asyncio.run(main())
