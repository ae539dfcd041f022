"""Shared fixtures: real TTH servers on port 0, channels to them, and test-only adapters, all undone at teardown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc
import pytest

from adapters import registry
from adapters.base import Adapter
from tests.recording import RecordingLLM
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.config import load_config
from tth_server.server import RunningServer, serve


class ServerFactory:
    """The servers a test starts and the channels it opens to them; `close()` undoes them all, last first."""

    def __init__(self) -> None:
        self._opened = contextlib.AsyncExitStack()

    async def __call__(
        self, profile: str = "mock", *, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> RunningServer:
        """A server of `profile` with `overrides` (and `env` as its environment) on 127.0.0.1, port 0."""
        server = await serve(load_config(profile, overrides=overrides, env=dict(env or {})), "127.0.0.1:0")
        self._opened.push_async_callback(server.stop, 0)
        return server

    def channel(self, port: int, options: Sequence[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        """An insecure channel to 127.0.0.1:`port`, closed at teardown if the test has not closed it."""
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        self._opened.push_async_callback(channel.close)
        return channel

    async def close(self) -> None:
        await self._opened.aclose()


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    """Start servers with `await start_server(profile="mock", **overrides)` and open channels to them with
    `start_server.channel(port)`; at teardown, whatever the test did, the channels close and the servers stop."""
    servers = ServerFactory()
    try:
        yield servers
    finally:
        await servers.close()


@pytest.fixture
async def stub(start_server: ServerFactory) -> AsyncIterator[pb_grpc.ConversationServiceStub]:
    """A stub connected to a fresh `mock` server whose media is unpaced (tests run fast)."""
    server = await start_server(session={"max_lead_ms": 1_000_000, "outbox_capacity": 100_000})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.ConversationServiceStub(channel)


@contextlib.contextmanager
def adapters_registered(adapters: Mapping[str, type[Adapter]]) -> Iterator[None]:
    """Make `adapters` known to the registry by name, in this process, for the block only."""
    for name, cls in adapters.items():
        registry.register(name, cls)
    try:
        yield
    finally:
        for name in adapters:
            registry.unregister(name)


@pytest.fixture
def recording_llm() -> Iterator[type[RecordingLLM]]:
    """`recording_llm` is an adapter name for this test, and `RecordingLLM.requests` starts empty."""
    RecordingLLM.requests.clear()
    with adapters_registered({"recording_llm": RecordingLLM}):
        yield RecordingLLM
    RecordingLLM.requests.clear()
