"""A small HTTP/1.1 server on asyncio streams, for fake providers on 127.0.0.1.

It speaks enough real HTTP for httpx: keep-alive connections, Content-Length
request bodies, and responses either with Content-Length or streamed with
`Transfer-Encoding: chunked`, written in pieces of any size (so a client sees
events and samples split across reads). `Faults` holds the knobs every fake
provider shares: error statuses with Retry-After, a hang before the first
byte, a connection dropped mid-stream, malformed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    529: "Overloaded",
}


@dataclass
class Faults:
    """What a fake provider does wrong, for the first `times` requests (then it behaves)."""

    status: int | None = None  # answer with this error status and the provider's error body
    retry_after: str | None = None  # Retry-After header value sent with the status
    hang: bool = False  # accept the request and never send a byte
    drop_after: int | None = None  # send this many events or chunks, then drop the connection
    malformed_after: int | None = None  # send this many events, then one that is not valid
    error_event_after: int | None = None  # send this many events, then an in-stream error event
    times: int = 1_000_000

    def active(self, request_number: int) -> bool:
        return request_number < self.times


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Responder:
    """Writes one response; `drop()` aborts the connection like a crashed server."""

    def __init__(self, writer: asyncio.StreamWriter, split: int) -> None:
        self._writer = writer
        self._split = split
        self.dropped = False
        self.sent_head = False

    async def _write(self, data: bytes) -> None:
        step = self._split or len(data) or 1
        for i in range(0, len(data), step):
            self._writer.write(data[i : i + step])
            await self._writer.drain()

    async def head(self, status: int, headers: dict[str, str], *, chunked: bool, length: int = 0) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        all_headers = {**headers}
        if chunked:
            all_headers["Transfer-Encoding"] = "chunked"
        else:
            all_headers["Content-Length"] = str(length)
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()
        self.sent_head = True

    async def chunk(self, data: bytes) -> None:
        """One chunk of a chunked body, itself written in `split`-sized pieces."""
        if data:
            await self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def end(self) -> None:
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        await self.head(
            status, {"Content-Type": "application/json", **(headers or {})}, chunked=False, length=len(body)
        )
        await self._write(body)

    def drop(self) -> None:
        self.dropped = True
        transport = self._writer.transport
        transport.abort()


Handler = Callable[[Request, Responder], Awaitable[None]]


@dataclass
class FakeHTTPServer:
    """Serves `handler` on 127.0.0.1:<free port>; records every request."""

    handler: Handler
    split: int = 0  # write response bytes in pieces of this size (0: as they come)
    requests: list[Request] = field(default_factory=list)
    _server: asyncio.base_events.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeHTTPServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                responder = Responder(writer, self.split)
                await self.handler(request, responder)
                if responder.dropped:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    url = urlsplit(target)
    return Request(method, url.path, dict(parse_qsl(url.query)), headers, body)


async def hang_forever() -> None:
    await asyncio.Event().wait()


class FakeProvider:
    """Base of the HTTP provider fakes: serves `_handle` on a FakeHTTPServer, with `split` pieces."""

    split: int
    server: FakeHTTPServer | None

    async def start(self) -> Self:
        self.server = await FakeHTTPServer(self._handle, split=self.split).start()
        return self

    async def aclose(self) -> None:
        if self.server is not None:
            await self.server.aclose()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def _handle(self, request: Request, r: Responder) -> None:
        raise NotImplementedError
