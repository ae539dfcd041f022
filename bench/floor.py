"""The transports alone: server CPU per message for bare grpc.aio and bare websockets, nothing else.

    python -m bench.floor grpc|ws          # a server; prints "READY <port> <pid>"

Each server streams, on request, N messages built from a 4 KB payload (about
a stub video frame): grpc.aio as raw bytes (no protobuf), websockets as the
baseline's Pydantic JSON with the payload in base64. `per_message_us()` runs one
against 20 concurrent streams from this process (on an event loop of its own:
call it from async code in a thread) and reads the server's CPU from /proc. It
is the floor under target 6: what each transport costs per message before any
application runs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import websockets

from bench.common import ROOT, cpu_seconds
from bench.ws_baseline import VideoFrameEvent

PAYLOAD = os.urandom(4000)
METHOD = "/tth.bench.Floor/Stream"


async def _grpc_server() -> None:
    async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            for _ in range(int(request)):
                yield PAYLOAD

    handler = grpc.method_handlers_generic_handler(
        "tth.bench.Floor", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY {port} {os.getpid()}", flush=True)
    await server.wait_for_termination()


async def _ws_server() -> None:
    async def handler(ws: websockets.ServerConnection) -> None:
        async for request in ws:
            for i in range(int(request)):
                frame = VideoFrameEvent(
                    session_id="s-0123456789abcdef",
                    turn_id="t-0123456789ab",
                    seq=i,
                    data=PAYLOAD,
                    content_type="jpeg",
                    width=256,
                    height=256,
                    frame_index=i,
                    timestamp_ms=i * 40.0,
                    drift_ms=0.0,
                )
                await ws.send(frame.model_dump_json())

    async with websockets.serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        print(f"READY {server.sockets[0].getsockname()[1]} {os.getpid()}", flush=True)
        await asyncio.Future()


async def _drive(kind: str, port: int, streams: int, each: int) -> None:
    if kind == "grpc":
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:

            async def one() -> None:
                call = ch.stream_stream(METHOD)()
                await call.write(str(each).encode())
                for _ in range(each):
                    await call.read()
                await call.done_writing()

            await asyncio.gather(*(one() for _ in range(streams)))
        return

    async def one_ws() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
            await ws.send(str(each))
            for _ in range(each):
                await ws.recv()

    await asyncio.gather(*(one_ws() for _ in range(streams)))


def per_message_us(kind: str, streams: int = 20, each: int = 1000) -> float:
    """Server CPU microseconds per message for `kind` ("grpc" or "ws")."""
    args = [sys.executable, "-m", "bench.floor", kind]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    try:
        _, port, pid = proc.stdout.readline().split()
        asyncio.run(_drive(kind, int(port), streams, 50))  # warm up
        before = cpu_seconds(int(pid))
        asyncio.run(_drive(kind, int(port), streams, each))
        return (cpu_seconds(int(pid)) - before) / (streams * each) * 1e6
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    asyncio.run(_grpc_server() if sys.argv[1] == "grpc" else _ws_server())
