"""`tth-server --workers N`: N processes share one port, each connection is served by one, and a supervisor runs them.

Which worker served a session is read from the log: every line a worker writes
carries its `pid`, and "session started" carries the `session_id` the client
got in its `started` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.errors import ConfigError
from tests.wire import Conversation
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.config import load_config

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections on Linux")

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # channels do not share a TCP connection
FAST = {
    "TTH_SERVER__GRACE_PERIOD_S": "2",
    "TTH_SESSION__MAX_LEAD_MS": "1000000",  # unpaced media: a turn takes milliseconds
    "TTH_COMPONENTS__LLM__OPTIONS__REPLY": "Hi there.",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger where nothing reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _gone(*pids: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@dataclass
class Server:
    """A `tth-server` process and the JSON lines it (and its workers) logged so far."""

    proc: asyncio.subprocess.Process
    port: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.text.append(line.decode(errors="replace"))
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    async def logged(
        self,
        event: str | tuple[str, ...],
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        within_s: float = 15.0,
    ) -> dict[str, Any]:
        """The first line logged of `event` (or of any of several) for which `where` holds, waiting for it."""
        events = (event,) if isinstance(event, str) else event
        deadline = time.monotonic() + within_s
        while True:
            for line in self.lines:
                if line.get("event") in events and where(line):
                    return line
            if time.monotonic() > deadline or (self.proc.returncode is not None and self.reader and self.reader.done()):
                reader = "running"
                if self.reader is not None and self.reader.done():
                    reader = "cancelled" if self.reader.cancelled() else f"ended ({self.reader.exception()!r})"
                raise AssertionError(
                    f"no {event!r} logged in {within_s - (deadline - time.monotonic()):.1f} s (server exit code "
                    f"{self.proc.returncode}, log reader {reader}, {len(self.lines)} lines); the log:\n"
                    f"{''.join(self.text)[-3000:]}"
                )
            await asyncio.sleep(0.02)

    def worker_pids(self) -> set[int]:
        return {line["pid"] for line in self.lines if line.get("event") == "worker started"}

    async def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), 20)
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 5)
        return self.proc.returncode or 0, "".join(self.text)


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Any]]:
    servers: list[Server] = []

    async def start(*args: str, port: int | None = None, env: dict[str, str] | None = None) -> Server:
        port = port or _free_port()
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tth_server.cli", "--profile", "mock", "--listen", f"127.0.0.1:{port}", *args),
            env={**os.environ, **FAST, **(env or {})},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        server = Server(proc, port)
        server.reader = asyncio.ensure_future(server._read())
        servers.append(server)
        return server

    yield start
    for server in servers:  # a test that failed half-way: leave nothing running
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()
        for pid in server.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if server.reader is not None:
            server.reader.cancel()


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return int((await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5, wait_for_ready=True)).status)


async def _turn(port: int) -> str:
    """A session on a connection of its own: config, one text, read until turn_complete; its session id."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        started = await conv.start()
        await conv.say("Hello!")
        events = await conv.until_terminal()
        assert events[-1].WhichOneof("event") == "turn_complete"
        assert await conv.finish() == grpc.StatusCode.OK
        return started.session_id


async def test_connections_spread_over_the_workers_and_sigterm_stops_them_all(start: Callable[..., Any]) -> None:
    server = await start("--workers", "2")
    pids = set((await server.logged("all workers serving"))["pids"])
    assert len(pids) == 2 and server.proc.pid not in pids and all(_running(pid) for pid in pids)
    assert await _health(server.port) == health_pb2.HealthCheckResponse.SERVING
    served: dict[str, int] = {}
    for _ in range(5):  # 8 connections all hashed to one worker: 1 in 128; five rounds of that: never
        for session_id in await asyncio.gather(*(_turn(server.port) for _ in range(8))):
            # Which worker served it: any of the session's log lines says (its pid is bound in each worker).
            line = await server.logged(
                ("session started", "turn"), lambda line, s=session_id: line.get("session_id") == s
            )
            served[session_id] = line["pid"]
        if set(served.values()) == pids:
            break
    assert set(served.values()) == pids, served
    code, log = await server.stop()
    assert code == 0, log[-3000:]
    assert await _gone(*pids), "a worker outlived the server"
    assert "workers stopped" in log and log.count('"shutting down"') == 2  # each worker stopped gracefully


async def test_a_worker_that_dies_is_replaced_and_the_server_keeps_serving(start: Callable[..., Any]) -> None:
    server = await start("--workers", "2")
    pids = (await server.logged("all workers serving"))["pids"]
    os.kill(pids[0], signal.SIGKILL)
    died = await server.logged("worker died; starting a replacement", lambda line: line["pid"] == pids[0])
    assert died["exitcode"] == -signal.SIGKILL and died["restart_in_s"] >= 1
    for _ in range(4):  # the other worker answers meanwhile
        assert await _health(server.port) == health_pb2.HealthCheckResponse.SERVING
    again = await server.logged(
        "worker serving", lambda line: line["worker"] == died["worker"] and line["pid"] != pids[0]
    )
    replacement = again["pid"]
    assert replacement not in pids and _running(replacement) and _running(pids[1])
    for _ in range(4):
        assert await _health(server.port) == health_pb2.HealthCheckResponse.SERVING
    await _turn(server.port)
    code, log = await server.stop()
    assert code == 0, log[-3000:]
    assert await _gone(pids[1], replacement)


async def test_workers_stop_when_the_supervisor_is_killed(start: Callable[..., Any]) -> None:
    server = await start("--workers", "2")
    pids = (await server.logged("all workers serving"))["pids"]
    server.proc.kill()
    await server.proc.wait()
    assert await _gone(*pids), "workers outlived their supervisor"
    assert len([line for line in server.lines if line.get("event") == "the supervising process is gone: stopping"]) == 2


async def test_a_worker_that_cannot_start_stops_the_others_and_the_server_exits(start: Callable[..., Any]) -> None:
    with socket.socket() as taken:  # worker 1's metrics port (metrics.port + 1) is taken; worker 0's is free
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = taken.getsockname()[1] - 1
        server = await start("--workers", "2", env={"TTH_METRICS__PORT": str(metrics)})
        await asyncio.wait_for(server.proc.wait(), 20)
    assert server.reader is not None
    await asyncio.wait_for(server.reader, 5)
    log = "".join(server.text)
    assert server.proc.returncode == 1, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("tth-server: worker 1") and "failed to start" in last and f":{metrics + 1}" in last, last
    assert len(server.worker_pids()) == 2 and await _gone(*server.worker_pids())


@pytest.mark.parametrize(("first", "second"), [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")])
async def test_a_second_server_on_a_port_another_server_holds_refuses_it(
    start: Callable[..., Any], first: str, second: str
) -> None:
    holder = await start("--workers", first)
    await holder.logged("all workers serving" if first == "2" else "server started", within_s=60)
    late = await start("--workers", second, port=holder.port)
    await asyncio.wait_for(late.proc.wait(), 30)
    assert late.reader is not None
    await asyncio.wait_for(late.reader, 5)
    log = "".join(late.text)
    assert late.proc.returncode == 1 and "Traceback" not in log, log[-3000:]
    assert log.strip().splitlines()[-1] == f"tth-server: cannot listen on 127.0.0.1:{holder.port}: address in use", log
    assert not late.worker_pids()  # refused before any worker started
    assert await _health(holder.port) == health_pb2.HealthCheckResponse.SERVING
    code, _ = await holder.stop()
    assert code == 0


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_taken_port_is_one_clear_line_not_a_traceback(start: Callable[..., Any], workers: str) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody else can bind the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = await start("--workers", workers, port=port)
        await asyncio.wait_for(server.proc.wait(), 20)
    assert server.reader is not None
    await asyncio.wait_for(server.reader, 5)
    log = "".join(server.text)
    assert server.proc.returncode == 1 and "Traceback" not in log, log[-3000:]
    assert log.strip().splitlines()[-1] == f"tth-server: cannot listen on 127.0.0.1:{port}: address in use", log


def test_workers_must_be_at_least_one() -> None:
    for args, env in ((["--workers", "0"], {}), ([], {"TTH_SERVER__WORKERS": "0"})):
        done = subprocess.run(
            [sys.executable, "-m", "tth_server.cli", "--profile", "mock", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done.stderr
        assert "configuration error: server.workers must be >= 1" in done.stderr and "got 0" in done.stderr


def test_workers_is_a_config_key_the_environment_sets() -> None:
    assert load_config("mock", env={}).server.workers == 1
    assert load_config("mock", env={"TTH_SERVER__WORKERS": "4"}).server.workers == 4
    with pytest.raises(ConfigError, match=r"server\.workers must be an integer, got 'many'"):
        load_config("mock", env={"TTH_SERVER__WORKERS": "many"})
