"""The SDK resumes a session by itself when its connection drops mid-turn: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

import tth_client
from tests.conftest import ServerFactory


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 whose `drop()` cuts every open connection, as a flaky network would."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def aclose(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied(start_server: ServerFactory) -> object:
    reply = "One, two, three, four. Five, six, seven, eight. Nine, ten, eleven, twelve."
    server = await start_server(
        session={"max_lead_ms": 100}, components={"llm": {"adapter": "scripted", "options": {"reply": reply}}}
    )
    proxy = await DroppingProxy(server.port).start()
    yield proxy
    await proxy.aclose()


async def test_a_dropped_connection_mid_turn_is_resumed_without_loss_or_duplicates(proxied: DroppingProxy) -> None:
    async with tth_client.Session(f"127.0.0.1:{proxied.port}") as session:
        turn = session.say("Count for me.")
        audio, dropped = [], False
        async for event in turn:
            if isinstance(event, tth_client.AudioEvent):
                audio.append(event.audio)
                if not dropped and event.audio.timestamp_ms >= 400:
                    dropped = True
                    proxied.drop()
        result = await turn
        assert result.outcome == "completed" and session.resumes == 1
        # The audio is whole: contiguous on the turn's clock, no gap, nothing twice.
        assert audio[0].timestamp_ms == 0
        for a, b in itertools.pairwise(audio):
            assert b.timestamp_ms == pytest.approx(a.timestamp_ms + a.duration_ms)
        assert result.audio_ms == pytest.approx(audio[-1].timestamp_ms + audio[-1].duration_ms)
        # The session goes on after the resume.
        assert (await session.say("Again?")).outcome == "completed"


async def test_without_reconnect_a_dropped_connection_fails_the_turn(proxied: DroppingProxy) -> None:
    async with tth_client.Session(f"127.0.0.1:{proxied.port}", reconnect=False) as session:
        turn = session.say("Count for me.")
        async for event in turn:
            if isinstance(event, tth_client.AudioEvent):
                proxied.drop()
                break
        with pytest.raises(tth_client.TTHError):
            (await turn).raise_for_outcome()
