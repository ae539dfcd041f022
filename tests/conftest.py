"""Shared fixtures: a real TTH server on port 0 and a raw gRPC client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.config import load_config
from tth_server.server import RunningServer, serve

ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    """Start servers with `await start_server(profile="mock", **overrides)`; all stop at teardown."""
    running: list[RunningServer] = []

    async def start(profile: str = "mock", **overrides: Any) -> RunningServer:
        server = await serve(load_config(profile, overrides=overrides, env={}), "127.0.0.1:0")
        running.append(server)
        return server

    yield start
    for server in running:
        await server.stop(0)


@pytest.fixture
async def stub(start_server: ServerFactory) -> AsyncIterator[pb_grpc.ConversationServiceStub]:
    """A stub connected to a fresh `mock` server whose media is unpaced (tests run fast)."""
    server = await start_server(session={"max_lead_ms": 1_000_000, "outbox_capacity": 100_000})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.ConversationServiceStub(channel)
