"""Bytes on the wire and server CPU per second of media (target 6), against the seeds' WebSocket transport.

    .venv/bin/python -m bench.bench_wire [--sessions 30] [--seconds 10]

The same workload goes to several servers in turn, each in its own process and
each running the same TTH runtime (same profile, pipeline, pacing, events): the
gRPC server, its streams asking for batched media as the SDK does
(`SessionConfig.batch_media`), and `bench.ws_baseline`, the seeds' WebSocket
transport with JSON events and base64 media, one event per message, as seed 000
writes it (a WebSocket route sending `model_dump_json()`, served by
uvicorn[standard]). `--sessions` sessions run at once, each one turn of about
`--seconds` of speech, paced in real time. Every byte between clients and
server passes a counting TCP proxy (both directions, HTTP/2 or WebSocket framing
included, TCP/IP headers not); server CPU is the server process's (and its
children's) user + system time over the run. Both are divided by the seconds of
audio the clients received. Ours and the baseline run `--repeats` times,
alternating, and the median is reported (CPU figures move by 10-20% from run to
run on a shared machine).

Two media sets: stub media (the stub avatar's 256 px JPEGs, a 24 kHz tone) and
the `local` profile (espeak-ng at 22.05 kHz, the face's 256 px JPEGs). For the
record, once each: gRPC with one event per message, the baseline on the bare
`websockets` library (no uvicorn, no uvloop), and the baseline with
permessage-deflate, which uvicorn negotiates by default. And the floor: both
transports alone, with no application behind them (`bench.floor`: as fast as
the streams take messages, and paced, one per stream every 200 ms), and the
runtime alone, with no transport (`bench.runtime_only`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import websockets

from bench.common import NO_LIMITS, QUIET, ROOT, Row, channel, media, merge, report, server
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

    def __init__(self, upstream_port: int, upstream: str) -> None:
        self.upstream_port = upstream_port
        self.upstream = upstream  # which server, for the reason a connection failed
        self.down = 0  # server -> client
        self.up = 0  # client -> server
        self.port = 0
        self.refused: list[str] = []  # why upstream connections failed; the client only sees its connection close
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError as exc:
            self.refused.append(
                f"the {self.upstream} server on 127.0.0.1:{self.upstream_port} refused a connection: {exc}"
            )
            writer.close()
            return
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


async def grpc_session(port: int, delay: float, batch: bool) -> float:
    """One turn over gRPC; returns the ms of audio received."""
    await asyncio.sleep(delay)
    audio_ms = 0.0
    async with channel(f"127.0.0.1:{port}") as ch:
        call = pb_grpc.ConversationServiceStub(ch).Converse()
        await call.write(pb.ConverseRequest(config=pb.SessionConfig(batch_media=batch)))
        await call.write(pb.ConverseRequest(text=pb.UserText(text="Tell me about the harbour.")))
        while (event := await call.read()) is not grpc.aio.EOF:
            audio_ms += sum(chunk.duration_ms for chunk in media(event)[0])
            if event.WhichOneof("event") in ("turn_complete", "turn_interrupted", "error"):
                break
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    return audio_ms


async def ws_session(port: int, delay: float, deflate: bool) -> float:
    await asyncio.sleep(delay)
    audio_ms = 0.0
    compression = "deflate" if deflate else None
    url = f"ws://127.0.0.1:{port}/v1/sessions/stream"
    async with websockets.connect(url, compression=compression, max_size=None) as ws:
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
    with server(profile, overrides, websocket="" if transport.startswith("grpc") else transport) as srv:
        proxy = Proxy(
            srv.port, "gRPC (bench.serve)" if transport.startswith("grpc") else f"bench.ws_baseline {transport}"
        )
        await proxy.start()
        delays = [ramp * i / sessions for i in range(sessions)]
        cpu0 = srv.cpu_seconds()
        try:
            if transport in ("grpc", "grpc-batched"):
                sessions_run = (grpc_session(proxy.port, d, transport == "grpc-batched") for d in delays)
            else:
                sessions_run = (ws_session(proxy.port, d, transport.endswith("+deflate")) for d in delays)
            audio = await asyncio.gather(*sessions_run)
        except Exception as exc:
            if not proxy.refused:
                raise
            seen = f"{type(exc).__name__}: {exc}"
            raise RuntimeError(f"{proxy.refused[0]} ({len(proxy.refused)} refused; the client saw {seen})") from exc
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


async def run(sessions: int = 30, seconds: float = 10.0, repeats: int = 3) -> list[Row]:
    rows = []
    for name, profile, overrides in (("stub", "mock", stub(seconds)), ("local", "local", local(seconds))):
        pairs = [
            (
                await measure(profile, overrides, "grpc-batched", sessions),
                await measure(profile, overrides, "uvicorn", sessions),
            )
            for _ in range(repeats)
        ]
        ours = median_run([o for o, _ in pairs])
        base = median_run([b for _, b in pairs])
        others = {t: await measure(profile, overrides, t, sessions) for t in ("grpc", "websockets", "uvicorn+deflate")}
        alone = await asyncio.to_thread(runtime_only, profile, overrides, sessions)
        media = f"{sessions} sessions, {ours.media_s:.0f} s of media per run, median of {repeats} runs each"
        deflate = others["uvicorn+deflate"]
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
                note=f"{media}; with permessage-deflate (uvicorn's default when the client offers it) the baseline is "
                f"{deflate.bytes_per_s / 1000:.0f} KB and {deflate.cpu_ms_per_s:.1f} ms CPU per s of media",
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
                note=f"whole server process, same pipeline behind both; ours with batched media (the SDK's), "
                f"against seed 000's route on uvicorn[standard]. Per-event gRPC (no batch_media): "
                f"{others['grpc'].cpu_ms_per_s:.1f} ms; the baseline on the bare websockets library: "
                f"{others['websockets'].cpu_ms_per_s:.1f} ms ({media})",
                extra={"runs": [(o.cpu_ms_per_s, b.cpu_ms_per_s) for o, b in pairs]},
            )
        )
        rows.append(
            Row(
                f"6 floor: the runtime alone, no transport, {name}",
                alone,
                "ms",
                "(for reference)",
                alone <= 0.5 * base.cpu_ms_per_s,
                baseline=base.cpu_ms_per_s,
                baseline_name="WS JSON+base64",
                ratio=alone / base.cpu_ms_per_s,
                note="the same sessions with no transport at all (bench.runtime_only): pipeline, pacing, queue and "
                "adapters, which both servers run; no transport can take a whole server below it",
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
    for shared, name, how in (
        (True, "shared beat", "on one beat for all streams"),
        (False, "own timers", "each stream on its own timer"),
    ):
        paced = {k: await asyncio.to_thread(per_message_us, k, 30, 25, 200, shared) for k in ("grpc", "ws")}
        rows.append(
            Row(
                f"6 floor: paced transport CPU per message, {name}",
                paced["grpc"],
                "us",
                "<= 0.5x (for reference)",
                paced["grpc"] <= 0.5 * paced["ws"],
                baseline=paced["ws"],
                baseline_name="bare websockets+JSON",
                ratio=paced["grpc"] / paced["ws"],
                note=f"as the row above, but 30 streams each sent one message every 200 ms, {how}: what a message "
                "costs when it is not one of a burst (bench.floor)",
            )
        )
    return rows


def runtime_only(profile: str, overrides: dict[str, Any], sessions: int) -> float:
    """CPU ms per second of media of the runtime alone, in a process of its own (`bench.runtime_only`)."""
    args = [sys.executable, "-m", "bench.runtime_only", "--profile", profile, "--sessions", str(sessions)]
    args += ["--overrides", json.dumps(merge(QUIET, overrides))]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    cpu_s, media_s = float(out[0]), float(out[1])
    return cpu_s * 1000 / media_s


def median_run(runs: list[Run]) -> Run:
    """The run with the median CPU per second of media (its bytes come with it)."""
    return sorted(runs, key=lambda r: r.cpu_ms_per_s)[len(runs) // 2]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours and the baseline, alternating")
    args = parser.parse_args(argv)
    report("Bytes and CPU per second of media", asyncio.run(run(args.sessions, args.seconds, args.repeats)))


if __name__ == "__main__":
    main()
