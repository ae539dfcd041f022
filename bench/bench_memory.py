"""Resident memory per idle session (target 7), beside an idle stream on a bare grpc.aio server.

    .venv/bin/python -m bench.bench_memory [--sessions 1000]

A load process opens `--sessions` Converse streams (config sent, `started`
read, then nothing: an idle session) multiplexed over a few connections, the
way a backend holds sessions for its users, and keeps them open. The server's
resident set size (VmRSS, from /proc) is read before and after, with a small
warm-up round of sessions opened and closed first so first-use costs (lazy
imports, caches) are not counted; the difference divided by the number of
sessions is the cost of one idle session. The baseline, in the same run, is the same number of idle
bidirectional streams on the bare grpc.aio echo server (`bench.echo`): what
gRPC itself keeps per stream. A second figure opens each session on its own
connection (a client per user), which adds gRPC's per-connection buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

import grpc

from bench.common import CONFIG, NO_LIMITS, Row, echo_server, report, rss_bytes, server
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

CONNECTIONS = 8


def _hold(target: str, sessions: int, echo: bool, per_session_connection: bool, pipe: Connection) -> None:
    """Open `sessions` idle streams, report, hold them until told, then close them."""

    async def main() -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        n_channels = sessions if per_session_connection else CONNECTIONS
        channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(n_channels)]
        calls = []
        for i in range(sessions):
            ch = channels[i % n_channels]
            if echo:
                call = ch.stream_stream("/tth.bench.Echo/Echo")()
                await call.write(b"x")
                await call.read()
            else:
                call = pb_grpc.ConversationServiceStub(ch).Converse()
                await call.write(CONFIG)
                await call.read()
            calls.append(call)
        pipe.send("open")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        for call in calls:
            call.cancel()
        for ch in channels:
            await ch.close()
        pipe.send("closed")

    asyncio.run(main())


def _settle(pid: int) -> int:
    time.sleep(1.0)
    return rss_bytes(pid)


def per_session(target: str, pid: int, sessions: int, echo: bool, per_connection: bool = False) -> float:
    """Bytes of server RSS per idle stream."""
    context = multiprocessing.get_context("spawn")

    def round_(n: int) -> tuple[int, int]:
        parent, child = context.Pipe()
        proc = context.Process(target=_hold, args=(target, n, echo, per_connection, child), daemon=True)
        before = _settle(pid)
        proc.start()
        assert parent.recv() == "open"
        after = _settle(pid)
        parent.send("close")
        parent.recv()
        proc.join(30)
        return before, after

    round_(20)  # warm-up: first-use costs (imports, caches, the first connections) are not per session
    before, after = round_(sessions)
    return (after - before) / sessions


def run(sessions: int = 1000) -> list[Row]:
    with echo_server() as (echo, echo_pid):
        base = per_session(echo, echo_pid, sessions, echo=True)
    with server("mock", NO_LIMITS) as srv:
        ours = per_session(srv.target, srv.pids[0], sessions, echo=False)
        own = per_session(srv.target, srv.pids[0], min(sessions, 300), echo=False, per_connection=True)
    return [
        Row(
            "7 resident memory per idle session",
            ours / 1024,
            "KB",
            "<= 50 KB",
            ours / 1024 <= 50,
            baseline=base / 1024,
            baseline_name="idle grpc.aio stream",
            ratio=ours / base if base > 0 else None,
            note=(
                f"{sessions} idle sessions over {CONNECTIONS} connections; each on its own connection: "
                f"{own / 1024:.0f} KB per session (gRPC's per-connection buffers included)"
            ),
        )
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args(argv)
    report("Memory per idle session", run(args.sessions))


if __name__ == "__main__":
    main()
