"""Concurrent real-time sessions (target 5): how many one server process carries with < 1% of frames late.

    .venv/bin/python -m bench.bench_capacity [--sessions 300] [--local-sessions 100] [--seconds 20]
    .venv/bin/python -m bench.bench_capacity --only stub --sessions 400 --workers 2 [--per-connection 25]

A probe starts `sessions` Converse streams spread evenly over a ramp (`--ramp`,
so session starts are not one thundering herd), from client processes separate
from the server (`--clients`, spawned; their CPU is reported, so a saturated load
generator would show). Each session says one text whose reply is about
`--seconds` of speech, paced as usual, so all of them stream at once for most of
the probe. The targets are measured with 25 sessions per connection, the way a
backend holds its users' sessions on one channel (the SDK's `Client` shares one
channel between its sessions); a second pair of probes gives every session its
own connection, on one server process and on two.

Lateness is judged the way a player would feel it. A session's clock starts when
its first audio chunk arrives (playback starts then); an audio chunk or video
frame stamped t ms is late when it arrives more than one frame period (40 ms)
after clock zero + t, because a player that started at first audio and keeps one
frame of jitter buffer would have stalled, or shown a frame late, by then. A
frame the server dropped for a slow reader never arrives and counts as late too.
Pass: under 1% of the frames late, and under 1% of the audio chunks.

Stub media: `bench.fakes` LLM (40 tokens/s), TTS (slices of a pre-rendered
tone) and avatar (the stub avatar's pre-encoded JPEGs, picked without its
per-frame numpy; `TTH_BENCH_AVATAR=stub_avatar` uses the stub avatar itself,
which costs about 0.5 ms of CPU per session-second more). Local: the `espeak` profile
(espeak-ng in its worker processes, the procedural face, the scripted LLM); the
`local` profile's Piper voice is probed by `bench.bench_voice`. Scaling:
the same probe against `python -m bench.serve --workers N`, N processes on one
port with SO_REUSEPORT, which the kernel balances by connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

import grpc

from bench.common import CONFIG, NO_LIMITS, Row, channel, children, cpu_seconds, media, merge, report, server
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

TOLERANCE_MS = 40.0  # one frame period at 25 fps
MUX = 25  # sessions per connection: a backend holding its users' sessions on one channel, as the SDK's Client does
LATE_LIMIT = 0.01
SENTENCES = (
    "The harbour was quiet in the early morning, and the boats rocked gently on the grey water.",
    "A fisherman mended his nets on the pier while the gulls argued over scraps.",
    "Somewhere a bell rang, and the smell of fresh bread drifted down from the bakery on the hill.",
    "By noon the market was full of voices, colours, baskets of fruit and the clatter of carts.",
)


def reply(seconds: float) -> str:
    out: list[str] = []
    while sum(len(s) for s in out) < seconds * 14:  # ~14 characters per second of speech
        out.append(SENTENCES[len(out) % len(SENTENCES)])
    return " ".join(out)


def stub_profile(seconds: float) -> dict[str, Any]:
    return merge(
        NO_LIMITS,
        {
            "components": {
                "llm": {"adapter": "bench_llm", "options": {"reply": reply(seconds), "tokens_per_s": 40}},
                "tts": {"adapter": "bench_tts", "options": {"ms_per_char": 1000 / 14}},
                "avatar": {"adapter": os.environ.get("TTH_BENCH_AVATAR", "bench_avatar")},
            }
        },
    )


def local_profile(seconds: float) -> dict[str, Any]:
    return merge(NO_LIMITS, {"components": {"llm": {"adapter": "scripted", "options": {"reply": reply(seconds)}}}})


@dataclass
class SessionResult:
    frames: int = 0
    frames_late: int = 0
    frames_missing: int = 0
    audio: int = 0
    audio_late: int = 0
    worst_ms: float = 0.0  # the largest lateness of any frame or chunk
    first_audio_ms: float = 0.0
    error: str = ""


async def one_session(target: str | grpc.aio.Channel, delay_s: float) -> SessionResult:
    await asyncio.sleep(delay_s)
    result = SessionResult()
    try:
        async with contextlib.AsyncExitStack() as stack:
            ch = target if not isinstance(target, str) else await stack.enter_async_context(channel(target))
            requests = [
                CONFIG,
                pb.ConverseRequest(text=pb.UserText(text="Tell me about the harbour.")),
            ]
            asked = time.perf_counter()
            call = pb_grpc.ConversationServiceStub(ch).Converse(iter(requests))
            zero: float | None = None
            next_index = 0
            async for event in call:  # cheaper than call.read() per message
                now = time.perf_counter()
                arm = event.WhichOneof("event")
                if arm == "started":
                    asked = now  # the text went right behind the config
                elif arm in ("media", "audio", "video"):
                    audio, video = media(event)
                    for a in audio:
                        if zero is None:
                            zero = now
                            result.first_audio_ms = (now - asked) * 1000
                        late = (now - zero) * 1000 - a.timestamp_ms
                        result.audio += 1
                        result.audio_late += late > TOLERANCE_MS
                        result.worst_ms = max(result.worst_ms, late)
                    for v in video:
                        late = (now - (zero or now)) * 1000 - v.timestamp_ms
                        result.frames += 1
                        result.frames_late += late > TOLERANCE_MS
                        result.frames_missing += v.frame_index - next_index  # dropped for a slow reader
                        next_index = v.frame_index + 1
                        result.worst_ms = max(result.worst_ms, late)
                elif arm == "turn_complete":
                    m = event.turn_complete.metrics
                    result.frames_missing += max(0, m.frames + m.frames_dropped - next_index)
                    break
                elif arm in ("turn_interrupted", "error"):
                    result.error = f"{arm}: {event}"[:200]
                    break
            call.cancel()  # done: the session's end is not what is measured
    except grpc.aio.AioRpcError as exc:
        result.error = f"{exc.code().name}: {exc.details()}"
    return result


def _client(
    target: str, delays: list[float], per_connection: int, out: Queue[tuple[list[SessionResult], float]]
) -> None:
    async def main() -> list[SessionResult]:
        if per_connection <= 1:
            return list(await asyncio.gather(*(one_session(target, d) for d in delays)))
        channels = [channel(target) for _ in range(0, len(delays), per_connection)]
        try:
            return list(
                await asyncio.gather(*(one_session(channels[i // per_connection], d) for i, d in enumerate(delays)))
            )
        finally:
            for ch in channels:
                await ch.close()

    started = time.process_time()
    results = asyncio.run(main())
    out.put((results, time.process_time() - started))


@dataclass
class Probe:
    label: str
    sessions: int
    workers: int
    results: list[SessionResult] = field(default_factory=list)
    server_cores: float = 0.0  # server CPU seconds per second while every session streamed
    client_cores: float = 0.0  # load generator CPU seconds per second, all client processes
    worker_cores: list[float] = field(default_factory=list)  # server_cores, per server process
    per_connection: int = 1
    seconds: float = 0.0

    def _connections(self) -> str:
        if self.per_connection <= 1:
            return "a connection each"
        return f"{self.per_connection} per connection"

    @property
    def late_frames(self) -> float:
        total = sum(r.frames + r.frames_missing for r in self.results)
        return sum(r.frames_late + r.frames_missing for r in self.results) / max(1, total)

    @property
    def late_audio(self) -> float:
        return sum(r.audio_late for r in self.results) / max(1, sum(r.audio for r in self.results))

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.error)

    @property
    def passed(self) -> bool:
        return self.late_frames < LATE_LIMIT and self.late_audio < LATE_LIMIT and not self.errors

    def describe(self) -> str:
        frames = sum(r.frames for r in self.results)
        worst = max((r.worst_ms for r in self.results), default=0.0)
        first = sorted(r.first_audio_ms for r in self.results if r.first_audio_ms)
        split = "+".join(f"{c:.2f}" for c in self.worker_cores) if self.workers > 1 else f"{self.server_cores:.2f}"
        return (
            f"{self.sessions} sessions ({self._connections()}), {self.workers} server process(es): "
            f"{self.late_frames:.2%} of {frames} frames "
            f"late, {self.late_audio:.2%} of audio; worst {worst:.0f} ms; TTFA median "
            f"{first[len(first) // 2] if first else 0:.0f} ms; server {split} cores, "
            f"load generator {self.client_cores:.2f} cores"
            + (f"; {self.errors} sessions failed" if self.errors else "")
        )


def probe(
    label: str,
    profile: str,
    overrides: dict[str, Any],
    sessions: int,
    workers: int = 1,
    clients: int = 3,
    seconds: float = 20.0,
    ramp: float = 8.0,
    per_connection: int = 1,
) -> Probe:
    result = Probe(label, sessions, workers, per_connection=per_connection)
    context = multiprocessing.get_context("spawn")
    out: Queue[tuple[list[SessionResult], float]] = context.Queue()
    with server(profile, overrides, workers=workers) as srv:
        delays = [ramp * i / sessions for i in range(sessions)]
        procs = [
            context.Process(target=_client, args=(srv.target, delays[c::clients], per_connection, out), daemon=True)
            for c in range(clients)
        ]
        started = time.monotonic()
        for p in procs:
            p.start()
        # Every session streams from the end of the ramp until the first of them ends.
        time.sleep(ramp + 1.0)
        cpu0, t0 = srv.cpu_seconds(), time.monotonic()
        workers0 = [_tree_cpu(pid) for pid in srv.pids]
        clients0 = sum(_cpu(p.pid) for p in procs)
        time.sleep(max(1.0, seconds - ramp - 2.0))
        result.server_cores = (srv.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        result.worker_cores = [
            (_tree_cpu(pid) - c0) / (time.monotonic() - t0) for pid, c0 in zip(srv.pids, workers0, strict=True)
        ]
        result.client_cores = (sum(_cpu(p.pid) for p in procs) - clients0) / (time.monotonic() - t0)
        deadline = time.monotonic() + seconds * 4 + ramp + 60
        for _ in procs:
            while True:
                try:
                    results, _cpu_s = out.get(timeout=1.0)
                    break
                except queue.Empty:
                    if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                        raise RuntimeError("the load generator died or hung") from None
            result.results.extend(results)
        for p in procs:
            p.join(10)
        result.seconds = time.monotonic() - started
    return result


def _tree_cpu(pid: int) -> float:
    return sum(_cpu(p) for p in (pid, *children(pid)))


def _cpu(pid: int | None) -> float:
    try:
        return cpu_seconds(pid) if pid else 0.0
    except OSError:
        return 0.0


def row(p: Probe, target: int, limit: str) -> Row:
    return Row(
        f"5 concurrent sessions, {p.label}",
        p.late_frames * 100,
        "% late",
        limit,
        p.passed and p.sessions >= target,
        note=p.describe(),
        extra={"sessions": p.sessions, "late_audio": p.late_audio, "server_cores": p.server_cores},
    )


def run(sessions: int = 300, local_sessions: int = 100, seconds: float = 20.0, clients: int = 3) -> list[Row]:
    """The two targets, sessions multiplexed the SDK's way; then one connection per session, on 1 and 2 processes."""
    stub, local = stub_profile(seconds), local_profile(seconds)
    rows = []
    p = probe("stub, 1 process", "mock", stub, sessions, 1, clients, seconds, per_connection=MUX)
    rows.append(row(p, 300, f">= 300 sessions, < 1% late ({sessions} run)"))
    # Target 5's 100 sessions are the light engine's; the Piper voice's capacity is bench_voice's row 14e.
    p = probe("espeak + face, 1 process", "espeak", local, local_sessions, 1, clients, seconds, per_connection=MUX)
    rows.append(row(p, 100, f">= 100 sessions, < 1% late ({local_sessions} run)"))
    for workers in (1, 2):
        label = f"stub, {workers} process{'es' if workers > 1 else ''}, a connection per session"
        p = probe(label, "mock", stub, sessions, workers, clients, seconds, per_connection=1)
        rows.append(row(p, 0, f"(scaling) {sessions} sessions, < 1% late"))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--local-sessions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="speech per session")
    parser.add_argument("--ramp", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=3, help="load generator processes")
    parser.add_argument("--only", choices=("stub", "local"), help="one probe")
    parser.add_argument("--workers", type=int, default=1, help="server processes (with --only)")
    parser.add_argument("--per-connection", type=int, default=1, help="sessions per client connection (with --only)")
    args = parser.parse_args(argv)
    if args.only:
        profile, overrides = ("mock", stub_profile(args.seconds)) if args.only == "stub" else ("local", None)
        n = args.sessions if args.only == "stub" else args.local_sessions
        p = probe(
            f"{args.only}, {args.workers} processes",
            profile,
            overrides or local_profile(args.seconds),
            n,
            args.workers,
            args.clients,
            args.seconds,
            args.ramp,
            args.per_connection,
        )
        report("Concurrent sessions", [row(p, 0, "< 1% late")])
        return
    report(
        "Concurrent sessions",
        run(args.sessions, args.local_sessions, args.seconds, args.clients),
    )


if __name__ == "__main__":
    main()
