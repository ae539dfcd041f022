"""Bytes on the wire and server CPU per second of media (target 6), against the seeds' WebSocket transport.

    .venv/bin/python -m bench.bench_wire [--sessions 30] [--seconds 10]

The same workload goes to two servers in turn, each in its own process and
each running the same TTH runtime (same profile, pipeline, pacing, events): the
gRPC server, and `bench.ws_baseline`, the seeds' WebSocket transport with JSON
events and base64 media. `--sessions` sessions run at once, each one turn of
about `--seconds` of speech, paced in real time. Every byte between clients
and server passes a counting TCP proxy (both directions, HTTP/2 or WebSocket
framing included, TCP/IP headers not); server CPU is the server process's (and
its children's) user + system time over the run. Both are divided by the
seconds of audio the clients received.

Two media sets: stub media (the stub avatar's 256 px JPEGs, a 24 kHz tone) and
the `local` profile (espeak-ng at 22.05 kHz, the face's 256 px JPEGs). A third
baseline row, for the record: the WebSocket with permessage-deflate, which
uvicorn (the seeds' server) negotiates by default. And the floor: both
transports alone, with no application behind them (`bench.floor`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import websockets

from bench.common import NO_LIMITS, Row, channel, merge, report, server
from bench.floor import per_message_us
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

SENTENCES = (
    "The harbour was quiet in the early morning, and the boats rocked gently on the grey water.",
    "A fisherman mended his nets on the pier while the gulls argued over scraps.",
    "Somewhere a bell rang, and the smell of fresh bread drifted down from the bakery on the hill.",
)


def reply(seconds: float) -> str:
    out: list[str] = []
    while sum(len(s) for s in out) < seconds * 14:
        out.append(SENTENCES[len(out) % len(SENTENCES)])
    return " ".join(out)


class Proxy:
    """A TCP proxy that counts the bytes it relays, each way."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.down = 0  # server -> client
        self.up = 0  # client -> server
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down"))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await reader.read(65536):
                if way == "up":
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def grpc_session(port: int, delay: float) -> float:
    """One turn over gRPC; returns the ms of audio received."""
    await asyncio.sleep(delay)
    audio_ms = 0.0
    async with channel(f"127.0.0.1:{port}") as ch:
        call = pb_grpc.ConversationServiceStub(ch).Converse()
        await call.write(pb.ConverseRequest(config=pb.SessionConfig()))
        await call.write(pb.ConverseRequest(text=pb.UserText(text="Tell me about the harbour.")))
        while (event := await call.read()) is not grpc.aio.EOF:
            arm = event.WhichOneof("event")
            if arm == "audio":
                audio_ms += event.audio.duration_ms
            elif arm in ("turn_complete", "turn_interrupted", "error"):
                break
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    return audio_ms


async def ws_session(port: int, delay: float, deflate: bool) -> float:
    await asyncio.sleep(delay)
    audio_ms = 0.0
    compression = "deflate" if deflate else None
    async with websockets.connect(f"ws://127.0.0.1:{port}", compression=compression, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "user_text", "text": "Tell me about the harbour."}))
        async for raw in ws:
            event = json.loads(raw)
            if event["type"] == "audio_chunk":
                audio_ms += event["duration_ms"]
            elif event["type"] in ("turn_complete", "turn_stopped", "error"):
                break
    return audio_ms


@dataclass
class Run:
    transport: str
    media_s: float
    bytes_down: int
    bytes_up: int
    cpu_s: float

    @property
    def bytes_per_s(self) -> float:
        return (self.bytes_down + self.bytes_up) / self.media_s

    @property
    def cpu_ms_per_s(self) -> float:
        return self.cpu_s * 1000 / self.media_s


async def measure(profile: str, overrides: dict[str, Any], transport: str, sessions: int, ramp: float = 2.0) -> Run:
    with server(profile, overrides, websocket="" if transport == "grpc" else transport) as srv:
        proxy = Proxy(srv.port)
        await proxy.start()
        delays = [ramp * i / sessions for i in range(sessions)]
        cpu0 = srv.cpu_seconds()
        if transport == "grpc":
            audio = await asyncio.gather(*(grpc_session(proxy.port, d) for d in delays))
        else:
            audio = await asyncio.gather(*(ws_session(proxy.port, d, transport == "deflate") for d in delays))
        await asyncio.sleep(0.2)
        cpu = srv.cpu_seconds() - cpu0
        await proxy.close()
    return Run(transport, sum(audio) / 1000, proxy.down, proxy.up, cpu)


def stub(seconds: float) -> dict[str, Any]:
    llm = {"adapter": "bench_llm", "options": {"reply": reply(seconds), "tokens_per_s": 40}}
    tts = {"adapter": "bench_tts", "options": {"ms_per_char": 1000 / 14}}
    return merge(NO_LIMITS, {"components": {"llm": llm, "tts": tts, "avatar": {"adapter": "stub_avatar"}}})


def local(seconds: float) -> dict[str, Any]:
    return merge(NO_LIMITS, {"components": {"llm": {"adapter": "scripted", "options": {"reply": reply(seconds)}}}})


async def run(sessions: int = 30, seconds: float = 10.0) -> list[Row]:
    rows = []
    for name, profile, overrides in (("stub", "mock", stub(seconds)), ("local", "local", local(seconds))):
        ours = await measure(profile, overrides, "grpc", sessions)
        base = await measure(profile, overrides, "plain", sessions)
        deflate = await measure(profile, overrides, "deflate", sessions) if name == "stub" else None
        extra = (
            f"; with permessage-deflate the baseline is {deflate.bytes_per_s / 1000:.0f} KB and "
            f"{deflate.cpu_ms_per_s:.0f} ms CPU per s of media (ours {ours.bytes_per_s / deflate.bytes_per_s:.2f}x "
            f"the bytes, {ours.cpu_ms_per_s / deflate.cpu_ms_per_s:.2f}x the CPU)"
            if deflate
            else ""
        )
        media = f"{sessions} sessions, {ours.media_s:.0f} s of media each way"
        rows.append(
            Row(
                f"6 bytes per s of media, {name}",
                ours.bytes_per_s / 1000,
                "KB",
                "<= 0.75x baseline",
                ours.bytes_per_s <= 0.75 * base.bytes_per_s,
                baseline=base.bytes_per_s / 1000,
                baseline_name="WS JSON+base64",
                ratio=ours.bytes_per_s / base.bytes_per_s,
                note=media + extra,
            )
        )
        rows.append(
            Row(
                f"6 server CPU per s of media, {name}",
                ours.cpu_ms_per_s,
                "ms",
                "<= 0.5x baseline",
                ours.cpu_ms_per_s <= 0.5 * base.cpu_ms_per_s,
                baseline=base.cpu_ms_per_s,
                baseline_name="WS JSON+base64",
                ratio=ours.cpu_ms_per_s / base.cpu_ms_per_s,
                note=f"whole server process, same pipeline behind both transports ({media})",
            )
        )
    grpc_us = await asyncio.to_thread(per_message_us, "grpc")
    ws_us = await asyncio.to_thread(per_message_us, "ws")
    rows.append(
        Row(
            "6 floor: bare transport CPU per message",
            grpc_us,
            "us",
            "<= 0.5x (for reference)",
            grpc_us <= 0.5 * ws_us,
            baseline=ws_us,
            baseline_name="bare websockets+JSON",
            ratio=grpc_us / ws_us,
            note="no application: grpc.aio streams 4 KB of bytes, websockets the baseline JSON for it (bench.floor)",
        )
    )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    report("Bytes and CPU per second of media", asyncio.run(run(args.sessions, args.seconds)))


if __name__ == "__main__":
    main()
