"""The transports alone: server CPU per message for bare grpc.aio and bare websockets, nothing else.

    python -m bench.floor grpc|ws          # a server; prints "READY <port> <pid>"

Each server streams, on request, N messages built from a 4 KB payload (about
a stub video frame): grpc.aio as raw bytes (no protobuf), websockets as the
baseline's Pydantic JSON with the payload in base64. `per_message_us()` runs one
against 20 concurrent streams from this process (on an event loop of its own:
call it from async code in a thread) and reads the server's CPU from /proc. It
is the floor under target 6: what each transport costs per message before any
application runs.

Paced (`period_ms`): each stream gets one message every `period_ms`, as a
paced media stream does, either on a beat shared by every stream (all of them
write in the same loop iteration, as the server's media ticks do) or each on
its own timer, the streams' starts spread over the period (as text deltas
leave, whenever the LLM makes them). What a message costs then is mostly the
wake-ups around it, not its bytes.
"""

from __future__ import annotations

import asyncio
import math
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


async def _paced(request: str) -> AsyncIterator[int]:
    """The request is "<count>" (as fast as the stream takes them) or "<count> <period ms> shared|own":
    yields each message's index when it is time to send it."""
    count, _, pace = request.partition(" ")
    period_ms, _, beat = pace.partition(" ")
    period_s = float(period_ms or 0) / 1000
    for i in range(int(count)):
        if beat == "shared":
            await _beat(period_s)
        elif period_s:
            await asyncio.sleep(period_s)
        yield i


_BEATS: dict[float, asyncio.Future[None]] = {}


def _beat(period_s: float) -> asyncio.Future[None]:
    """Done at the next multiple of `period_s` on the loop's clock; one timer for every stream waiting."""
    beat = _BEATS.get(period_s)
    if beat is None or beat.done():
        loop = asyncio.get_running_loop()
        beat = _BEATS[period_s] = loop.create_future()
        loop.call_at((math.floor(loop.time() / period_s) + 1) * period_s, beat.set_result, None)
    return beat


async def _grpc_server() -> None:
    async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            async for _ in _paced(request.decode()):
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
            async for i in _paced(str(request)):
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


async def _drive(kind: str, port: int, streams: int, each: int, pace: str = "", spread_s: float = 0.0) -> None:
    """`streams` streams of `each` messages, paced as `pace` says (see `_paced`), the i-th starting
    `spread_s * i / streams` after the first."""
    request = f"{each} {pace}".strip()
    if kind == "grpc":
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:

            async def one(i: int) -> None:
                await asyncio.sleep(spread_s * i / streams)
                call = ch.stream_stream(METHOD)()
                await call.write(request.encode())
                for _ in range(each):
                    await call.read()
                await call.done_writing()

            await asyncio.gather(*(one(i) for i in range(streams)))
        return

    async def one_ws(i: int) -> None:
        await asyncio.sleep(spread_s * i / streams)
        async with websockets.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
            await ws.send(request)
            for _ in range(each):
                await ws.recv()

    await asyncio.gather(*(one_ws(i) for i in range(streams)))


def per_message_us(kind: str, streams: int = 20, each: int = 1000, period_ms: float = 0, shared: bool = True) -> float:
    """Server CPU microseconds per message for `kind` ("grpc" or "ws"): as fast as the streams take them, or one
    every `period_ms` per stream, on a `shared` beat or each stream on its own timer."""
    pace = f"{period_ms:g} {'shared' if shared else 'own'}" if period_ms else ""
    args = [sys.executable, "-m", "bench.floor", kind]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    try:
        _, port, pid = proc.stdout.readline().split()
        asyncio.run(_drive(kind, int(port), streams, 50))  # warm up
        before = cpu_seconds(int(pid))
        asyncio.run(_drive(kind, int(port), streams, each, pace, period_ms / 1000))
        return (cpu_seconds(int(pid)) - before) / (streams * each) * 1e6
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    asyncio.run(_grpc_server() if sys.argv[1] == "grpc" else _ws_server())
