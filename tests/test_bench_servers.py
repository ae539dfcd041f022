"""The benchmarks' servers: each says READY only once it accepts connections, and a refusal names its server.

bench/ws_baseline.py's uvicorn server once printed READY from its lifespan, which
uvicorn runs before it listens; a client that connected at once was refused, and
the wire benchmark's proxy turned that into "did not receive a valid HTTP
response" (issue 13). `make bench`'s smoke run (`--smoke`, in .ci/run) runs
every benchmark module; these tests pin the start-up order itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading

import pytest

from bench import bench_wire, ws_baseline


class _ReadyProbe(io.StringIO):
    """stdout for a server run in a thread: on its READY line, tries to connect while the server waits for
    the write to return (so nothing the server does after printing can hide a port that is not listening)."""

    def __init__(self) -> None:
        super().__init__()
        self.connected: bool | None = None

    def write(self, text: str) -> int:
        if text.startswith("READY"):
            port = int(text.split()[1])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                self.connected = True
            except OSError:
                self.connected = False
            raise SystemExit(0)  # the probe has its answer: stop the server
        return len(text)


def test_the_uvicorn_baseline_says_ready_only_once_it_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _ReadyProbe()
    monkeypatch.setattr("sys.stdout", probe)

    def serve() -> None:
        with contextlib.suppress(SystemExit):  # the probe's way of stopping it
            ws_baseline._serve_uvicorn("mock", {}, False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(60)
    assert probe.connected is True, "READY was printed before the port accepted connections"


async def test_a_proxied_connection_the_server_refuses_names_the_server_and_port() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        proxy = bench_wire.Proxy(port, "bench.ws_baseline uvicorn")
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the client only sees its connection close
            writer.close()
        finally:
            await proxy.close()
    assert len(proxy.refused) == 1
    assert proxy.refused[0].startswith(f"the bench.ws_baseline uvicorn server on 127.0.0.1:{port} refused a connection")
