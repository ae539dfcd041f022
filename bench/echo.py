"""The baseline for server-added latency: a bare grpc.aio bidirectional stream that answers every message.

    python -m bench.echo [--reply-bytes 2000]     # prints "READY <port> <pid>"

No protobuf, no application: each request (any bytes) is answered at once with
`--reply-bytes` bytes, about the size of a first audio event, by a grpc.aio
server with the same options as TTH's. A client's write-then-read on it is the
round trip that no server on grpc.aio can beat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator

import grpc

METHOD = "/tth.bench.Echo/Echo"


async def _main(reply_bytes: int) -> None:
    reply = os.urandom(reply_bytes)

    async def echo(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield reply

    handler = grpc.method_handlers_generic_handler(
        "tth.bench.Echo", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}
    )
    limit = 4 * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 30_000),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY {port} {os.getpid()}", flush=True)
    await server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.splitlines()[0])
    parser.add_argument("--reply-bytes", type=int, default=2000)
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.reply_bytes))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
