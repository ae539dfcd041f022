"""Soak: many sessions over many turns, with drops, resumes, interrupts and abandoned ones; memory and fds stay flat.

A real `tth-server` process (mock profile, unpaced media) serves rounds of 50
concurrent sessions of 10 turns each. In every session one turn is interrupted
and the stream is dropped and resumed once; one session in ten is abandoned
mid-turn and left to expire. The server's resident memory and open file
descriptors are read from /proc after a warm-up round and again after the
measured rounds; they must not grow by more than allocator noise.

The replay buffer is capped at 256 KB per session here, and glibc kept to two
arenas, so that allocator high-water marks (which RSS shows, and which wander
with how the rounds interleave) stay small next to a leak. Measured on this
code over four rounds (2,000 turns): RSS grew 0 to 8 MB, fds not at all; a build
that never let go of ended sessions grew 28 MB (7 MB a round, still climbing).
Allowed: 16 MB of growth, and at most 2 more fds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.wire import Conversation, is_terminal
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

SESSIONS = 50
TURNS = 10
MEASURED_ROUNDS = 4
MAX_RSS_GROWTH_MB = 16.0
MAX_FD_GROWTH = 2
RESUME_WINDOW_S = 2.0  # a drop is resumed well within it, even on a loaded machine


async def _listening_port(log: Path, proc: asyncio.subprocess.Process) -> int:
    """The port the server (listening on port 0, so no race for a free one) reports in its JSON log."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.returncode is None:
        if (port := _reported_port(log)) is not None:
            return port
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server did not start:\n{_tail(log)}")


def _reported_port(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"server started"' in line:
            return int(json.loads(line)["port"])
    return None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _session(stub: pb_grpc.ConversationServiceStub, index: int) -> None:
    conv = Conversation(stub)
    session_id = (await conv.start()).session_id
    last = conv.events[-1].seq
    for turn in range(TURNS):
        await conv.say(f"Hello number {index}, turn {turn}!")
        if turn == 3:  # interrupted after its first audio
            await conv.until("audio")
            await conv.interrupt()
        if turn == 5:  # the stream drops mid-turn and is resumed
            await conv.until("audio")
            last = conv.events[-1].seq
            conv.call.cancel()
            conv = Conversation(stub)
            assert (await conv.start(session_id=session_id, resume_after_seq=last)).started.resumed.lossless
        if turn == 7 and index % 10 == 0:  # abandoned mid-turn: it must expire and free everything
            await conv.until("audio")
            conv.call.cancel()
            return
        while not is_terminal(await conv.next()):
            pass
    assert await conv.finish() == grpc.StatusCode.OK


async def _round(stub: pb_grpc.ConversationServiceStub) -> None:
    await asyncio.wait_for(asyncio.gather(*(_session(stub, i) for i in range(SESSIONS))), 60)


async def _settled(pid: int) -> tuple[float, int]:
    """RSS and fds once the round's abandoned sessions have expired."""
    await asyncio.sleep(RESUME_WINDOW_S + 0.5)
    return _rss_mb(pid), _fds(pid)


@pytest.mark.timeout(180)
async def test_memory_and_open_files_stay_flat_over_many_sessions_and_turns(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TTH_SESSION__MAX_LEAD_MS": "1000000",
        "TTH_SESSION__OUTBOX_CAPACITY": "100000",
        "TTH_SESSION__RESUME_WINDOW_S": str(RESUME_WINDOW_S),
        "TTH_LIMITS__TURNS_PER_MINUTE_PER_KEY": "0",
        "TTH_LOG__FORMAT": "json",
        "MALLOC_ARENA_MAX": "2",
        "TTH_SESSION__REPLAY_BYTES": "262144",
        # Short replies in few, large events: the soak is about sessions and turns coming and going.
        # A whole turn (about 60 KB) fits the replay cap several times over, so a resume stays
        # lossless even when the server has pushed all of the turn before the client's drop lands.
        "TTH_COMPONENTS__LLM__OPTIONS__REPLY": "Hello there, my friend.",
        "TTH_COMPONENTS__TTS__OPTIONS__CHUNK_MS": "200",
        "TTH_COMPONENTS__TTS__OPTIONS__SAMPLE_RATE_HZ": "16000",
        "TTH_RENDER__FPS": "10",
        "TTH_RENDER__WIDTH": "128",
        "TTH_RENDER__HEIGHT": "128",
    }
    args = [sys.executable, "-m", "tth_server.cli", "--profile", "mock", "--listen", "127.0.0.1:0"]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=log, stderr=log)
    try:
        port = await _listening_port(log_path, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = pb_grpc.ConversationServiceStub(channel)
            await _round(stub)  # warm-up: caches, pools and allocator arenas fill once
            rss_before, fds_before = await _settled(proc.pid)
            started = time.monotonic()
            rounds = []
            for _ in range(MEASURED_ROUNDS):
                await _round(stub)
                rounds.append(f"{_rss_mb(proc.pid):.1f}")
            rss_after, fds_after = await _settled(proc.pid)
            turns = MEASURED_ROUNDS * SESSIONS * TURNS
            print(
                f"\nsoak: {turns} turns in {time.monotonic() - started:.1f} s; RSS {rss_before:.1f} MB, then "
                f"{' '.join(rounds)} MB after each round; open fds {fds_before} -> {fds_after}"
            )
            assert rss_after - rss_before < MAX_RSS_GROWTH_MB, (rss_before, rss_after)
            assert fds_after - fds_before <= MAX_FD_GROWTH, (fds_before, fds_after)
    finally:
        proc.kill()
        await proc.wait()
    assert "Traceback" not in _tail(log_path)
