"""What a provider avatar (Simli, Anam over WebRTC) costs on our side: time to ready, first frame, CPU, capacity.

    .venv/bin/python -m bench.bench_avatar_providers [--turns 10] [--seconds 5] [--max-sessions 12] [--smoke]

The providers are the tests' fakes (`tests/fakes/simli.py`, `tests/fakes/anam.py`:
each one's REST, signalling WebSocket and a real aiortc peer sending 160x120
VP8 at 25 fps), served from a process of their own so that their encoding is
not counted as ours; the adapters (`simli_avatar`, `anam_avatar`) run in this
process, exactly as the server runs them, fed speech-like audio at real time in
100 ms chunks and rendering our 256x256 JPEG frames. ICE stays on loopback as in
the tests (`tests.fakes.webrtc.loopback_ice`: no ICE servers, one host candidate,
127.0.0.1), here and in the fakes' process. The fakes are imported from tests/
because they are the providers' protocol as the tests pin it; like every
benchmark this runs from the repository root.

- Ready: from `connect()` (the REST calls, the signalling socket, offer and
  answer, ICE, the provider's "ready") to the first frame of the idle face on our
  side: what `connect: session_start` opens before the first turn. Median of
  `--turns` sessions opened one after another.
- First frame added by us: from the fake provider handing its first speaking
  frame of a turn to its video track (its own clock: CLOCK_MONOTONIC, shared by
  both processes) to our adapter yielding that turn's frame 0: RTP over loopback,
  the jitter buffer, VP8 decoding, finding the turn's start (Simli's SPEAK; for
  Anam, its returned audio turning audible) and our JPEG. Median over `--turns`
  turns of 1 s on one connection.
- CPU per session-second: this process's CPU (all threads: aiortc decodes in
  its own) per second of video while two sessions each speak `--seconds`, against
  the local stub avatar rendering the same audio in this process.
- Sessions at 25 fps: N sessions (1, 2, 3, 4, 6, 8, ... up to `--max-sessions`)
  each speaking `--seconds` at once; N holds when every session yields at least
  95 % of its turn's frame slots and 95 % of its frames leave within 120 ms of
  their slot on the turn's clock (counted from its own frame 0). The figure is
  the largest N that held before one did not. The fakes' process has a core's
  worth of work of its own at high N; on a shared 2-core machine both limit it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.base import AvatarConnection, AvatarInput, SessionAvatarAdapter
from adapters.controls import Controls
from adapters.local.stub_avatar import StubAvatar
from adapters.media import RenderSettings
from bench.bench_face import inputs, speech_like
from bench.common import ROOT, Row, cpu_seconds, report

SETTINGS = RenderSettings()  # 256x256 at 25 fps, the session default
LATE_MS = 120.0  # a frame later than this after its slot on the turn's clock counts as late
_KEYS = {"TTH_BENCH_SIMLI_KEY": "simli", "TTH_BENCH_ANAM_KEY": "anam"}


# ---- the fakes' process ----------------------------------------------------------------------------------------


async def serve_fakes() -> None:
    """Serve both fakes; print their addresses, then `SPOKE <monotonic s>` as a face starts speaking a turn."""
    from tests.fakes import anam, simli
    from tests.fakes.webrtc import SpeakingFace, loopback_ice

    original = SpeakingFace.recv

    async def recv(self: SpeakingFace) -> Any:
        was = self.speaking
        frame = await original(self)
        if self.speaking and not was:  # the turn's first speaking frame, about to go to the encoder
            print(f"SPOKE {time.monotonic():.6f}", flush=True)
        return frame

    SpeakingFace.recv = recv  # type: ignore[method-assign]
    with loopback_ice():
        fake_simli = await simli.FakeSimli().start()
        fake_anam = await anam.FakeAnam().start()
        print(f"READY {fake_simli.url} {fake_simli.ws_url} {fake_anam.url}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes our stdin
        await fake_simli.aclose()
        await fake_anam.aclose()


@dataclass
class Fakes:
    proc: asyncio.subprocess.Process
    simli_url: str
    simli_ws: str
    anam_url: str
    onsets: list[float]
    reader: asyncio.Task[None]

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self.reader.cancel()

    def adapter(self, provider: str) -> SessionAvatarAdapter:
        from tests.fakes import anam, simli

        if provider == "simli":
            os.environ["TTH_BENCH_SIMLI_KEY"] = simli.KEY
            from adapters.simli.avatar import SimliAvatar

            options = {"base_url": self.simli_url, "ws_url": self.simli_ws, "face_id": "face-bench"}
            return SimliAvatar("simli_avatar", {**options, "api_key_env": "TTH_BENCH_SIMLI_KEY"})
        os.environ["TTH_BENCH_ANAM_KEY"] = anam.KEY
        from adapters.anam.avatar import AnamAvatar

        options = {"base_url": self.anam_url, "avatar_id": "avatar-bench", "api_key_env": "TTH_BENCH_ANAM_KEY"}
        return AnamAvatar("anam_avatar", options)


async def start_fakes() -> Fakes:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_avatar_providers",
        "--serve-fakes",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
    if not line or line[0] != "READY":
        proc.kill()
        raise RuntimeError(f"the fake providers did not start: {line}")
    onsets: list[float] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            parts = raw.decode().split()
            if parts[:1] == ["SPOKE"]:
                onsets.append(float(parts[1]))

    reader = asyncio.get_running_loop().create_task(read())
    return Fakes(proc, line[1], line[2], line[3], onsets, reader)


# ---- turns -----------------------------------------------------------------------------------------------------


def speech(seconds: float, seed: int) -> list[AvatarInput]:
    return inputs(speech_like(seconds, seed), False, Controls())


async def realtime(items: Sequence[AvatarInput]) -> AsyncIterator[AvatarInput]:
    """The chunks as a TTS would hand them over at real time: each when its start is due."""
    start = time.monotonic()
    for item in items:
        await asyncio.sleep(max(0.0, start + item.chunk.timestamp_ms / 1000 - time.monotonic()))
        yield item


@dataclass
class Turn:
    first_at: float  # when frame 0 left the adapter (monotonic s)
    emitted: list[tuple[int, float]]  # (slot, monotonic s) per frame
    slots: int  # frame slots the turn's audio covers


async def speak(connection: AvatarConnection, items: Sequence[AvatarInput]) -> Turn:
    emitted: list[tuple[int, float]] = []
    async for frame in connection.speak(realtime(items), SETTINGS):
        emitted.append((frame.frame_index, time.monotonic()))
    if not emitted:
        raise RuntimeError("the provider sent no frame for the turn")
    audio_ms = sum(i.chunk.duration_ms for i in items)
    return Turn(emitted[0][1], emitted, math.ceil(audio_ms / SETTINGS.frame_ms))


def lateness(turn: Turn) -> float:
    """The share of frames later than LATE_MS after their slot on the turn's clock (from frame 0's)."""
    late = [at - turn.first_at - slot * SETTINGS.frame_ms / 1000 > LATE_MS / 1000 for slot, at in turn.emitted]
    return sum(late) / len(late)


def holds(turn: Turn) -> bool:
    """At least 95 % of the slots, and no more than 5 % of the frames late."""
    return len(turn.emitted) >= 0.95 * turn.slots and lateness(turn) <= 0.05


# ---- measurements ----------------------------------------------------------------------------------------------


async def ready_and_first_frame(fakes: Fakes, provider: str, turns: int) -> tuple[list[float], list[float]]:
    """Connect times (ms) of `turns` sessions, and the first frame added by us (ms) on each one's 1 s turn."""
    ready: list[float] = []
    added: list[float] = []
    async with fakes.adapter(provider) as avatar:
        for i in range(turns):
            started = time.monotonic()
            connection = await avatar.connect()
            ready.append((time.monotonic() - started) * 1000)
            try:
                before = len(fakes.onsets)
                turn = await speak(connection, speech(1.0, seed=i))
                await asyncio.sleep(0.05)  # the fakes' SPOKE line may still be on its way
                onsets = fakes.onsets[before:]
                if onsets:
                    added.append((turn.first_at - onsets[0]) * 1000)
            finally:
                await connection.aclose()
    return ready, added


@dataclass
class Load:
    cpu_ms: float  # this process's CPU per session-second of video
    turns: list[Turn]
    cores: float  # this process's CPU over the turns' wall time
    fake_cores: float  # the same for the fakes' process


async def provider_cpu(fakes: Fakes, provider: str, sessions: int, seconds: float) -> Load:
    """This process's CPU per session-second of video while `sessions` speak `seconds` each, and the turns."""
    async with fakes.adapter(provider) as avatar:
        connections = await asyncio.gather(*(avatar.connect() for _ in range(sessions)))
        try:
            await asyncio.sleep(0.3)  # past the connections' start-up work
            cpu, fake_cpu, wall = time.process_time(), cpu_seconds(fakes.proc.pid), time.monotonic()
            turns = await asyncio.gather(*(speak(c, speech(seconds, seed=i)) for i, c in enumerate(connections)))
            used, fake_used = time.process_time() - cpu, cpu_seconds(fakes.proc.pid) - fake_cpu
            wall = time.monotonic() - wall
        finally:
            await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)
    video_s = sum(len(t.emitted) for t in turns) * SETTINGS.frame_ms / 1000
    return Load(used * 1000 / video_s, list(turns), used / wall, fake_used / wall)


async def stub_cpu(sessions: int, seconds: float) -> float:
    """The same for the local stub avatar: CPU ms per session-second of its frames."""
    async with StubAvatar("stub_avatar", {}) as stub:

        async def one(seed: int) -> int:
            return sum([1 async for _ in stub.render(realtime(speech(seconds, seed)), SETTINGS)])

        cpu = time.process_time()
        frames = await asyncio.gather(*(one(i) for i in range(sessions)))
        used = time.process_time() - cpu
    return used * 1000 / (sum(frames) * SETTINGS.frame_ms / 1000)


def ladder(limit: int) -> Iterator[int]:
    n = 1
    while n <= limit:
        yield n
        n = n + 1 if n < 4 else n + 2


async def capacity(fakes: Fakes, provider: str, seconds: float, limit: int) -> tuple[int, str]:
    """The largest N (from `ladder`) whose N sessions all held 25 fps, and what each N gave."""
    held = 0
    notes: list[str] = []
    for n in ladder(limit):
        load = await provider_cpu(fakes, provider, n, seconds)
        turns = load.turns
        fine = sum(holds(t) for t in turns)
        filled = min(len(t.emitted) / t.slots for t in turns)
        late = max(lateness(t) for t in turns)
        notes.append(
            f"{n}: {fine}/{n} held (worst: {filled:.0%} of slots, {late:.0%} late; "
            f"cores: ours {load.cores:.2f}, fakes {load.fake_cores:.2f})"
        )
        if fine < n:
            break
        held = n
    return held, "; ".join(notes)


async def run(turns: int = 10, seconds: float = 5.0, max_sessions: int = 12) -> list[Row]:
    from tests.fakes.webrtc import loopback_ice

    rows: list[Row] = []
    fakes = await start_fakes()
    try:
        with loopback_ice():
            stub = await stub_cpu(2, seconds)
            for provider in ("simli", "anam"):
                ready, added = await ready_and_first_frame(fakes, provider, turns)
                cpu = (await provider_cpu(fakes, provider, 2, seconds)).cpu_ms
                sessions, ladder_note = await capacity(fakes, provider, seconds, max_sessions)
                rows += [
                    Row(
                        f"{provider}: time to ready (connect)",
                        statistics.median(ready),
                        "ms",
                        "<= 1000 ms on loopback",
                        statistics.median(ready) <= 1000,
                        note=f"max {max(ready):.0f} ms over {len(ready)} sessions",
                    ),
                    Row(
                        f"{provider}: first frame added by us",
                        statistics.median(added) if added else math.nan,
                        "ms",
                        "<= 200 ms",
                        bool(added) and statistics.median(added) <= 200,
                        note=f"from the fake's first speaking frame; max {max(added, default=math.nan):.0f} ms, "
                        f"{len(added)} turns",
                    ),
                    Row(
                        f"{provider}: CPU per session-second",
                        cpu,
                        "ms",
                        "(reported)",
                        True,
                        baseline=stub,
                        baseline_name="stub_avatar",
                        ratio=cpu / stub if stub else None,
                        note="WebRTC receive, VP8 decode, 256x256 JPEG; 2 sessions at once",
                    ),
                    Row(
                        f"{provider}: sessions at 25 fps, one process",
                        sessions,
                        "sessions",
                        ">= 1",
                        sessions >= 1,
                        note=ladder_note,
                    ),
                ]
    finally:
        await fakes.stop()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="sessions for time to ready, turns for first frame")
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per turn for CPU and capacity")
    parser.add_argument("--max-sessions", type=int, default=12)
    parser.add_argument("--smoke", action="store_true", help="smallest sizes: checks that it runs")
    parser.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)  # the fakes' own process
    args = parser.parse_args(argv)
    if args.serve_fakes:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_fakes())
        return
    if args.smoke:
        args.turns, args.seconds, args.max_sessions = 2, 1.0, 2
    report("Provider avatars (fakes on loopback)", asyncio.run(run(args.turns, args.seconds, args.max_sessions)))


if __name__ == "__main__":
    main()
