"""Time to first audio: what the server adds to it (target 1), and how close it comes to its floor (target 2).

    .venv/bin/python -m bench.bench_latency [--turns 200]

Both measure at the client, on one Converse stream to a server in another
process: the time from writing a `text` request to reading the turn's first
`audio` event. Each turn is then interrupted (which ends it at once) and the next
one starts; pacing is the default, which never holds the first chunk back.

1. Zero-latency providers (`bench.fakes`: the LLM's reply is there at once, the
   TTS slices a pre-rendered tone), so every microsecond is the server's. The
   baseline, measured in the same run, is a bare grpc.aio bidirectional round trip
   (`bench.echo`: bytes in, a 2 KB reply out, no protobuf, no application), one
   right before each timed turn, so both see the machine in the same state. A
   server doing nothing would answer in one round trip, so what the server adds
   is the time to first audio minus that round trip; the target is at most two
   round trips. (The row's note gives the whole time to first audio as well.)
2. Simulated providers: LLM first token at 300 ms, then 40 tokens/s (on a fixed
   schedule, so sleeps do not add up); TTS first byte at 150 ms. The floor those
   latencies allow is 300 ms + 25 ms for each further token the first segment
   needs (the server's own segmenter decides where it ends) + 150 ms + one round
   trip. The target is at most 10 ms above it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from bench import fakes
from bench.common import CONFIG, NO_LIMITS, Row, channel, echo_server, media, median, merge, report, round_trips, server
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.segmenter import Segmenter

SIM_LLM_FIRST_MS, SIM_TOKENS_PER_S, SIM_TTS_FIRST_MS = 300.0, 40.0, 150.0
SIM_REPLY = (
    "Sure, let me look into that for you. The forecast says sunny in the morning, with some clouds later, "
    "and a light wind from the west."
)


def instant_profile(reply: str = fakes.DEFAULT_REPLY) -> dict[str, object]:
    return {
        "components": {
            "llm": {"adapter": "bench_llm", "options": {"reply": reply}},
            "tts": {"adapter": "bench_tts", "options": {"sample_rate_hz": 24000, "chunk_ms": 40}},
            "avatar": {"adapter": "stub_avatar"},
        }
    }


def simulated_profile() -> dict[str, object]:
    llm = {"reply": SIM_REPLY, "first_byte_ms": SIM_LLM_FIRST_MS, "tokens_per_s": SIM_TOKENS_PER_S}
    return {
        "components": {
            "llm": {"adapter": "bench_llm", "options": llm},
            "tts": {"adapter": "bench_tts", "options": {"first_byte_ms": SIM_TTS_FIRST_MS}},
            "avatar": {"adapter": "stub_avatar"},
        }
    }


def first_segment_tokens(reply: str, first_clause_min_chars: int = 12) -> int:
    """How many of the reply's tokens arrive before the server's segmenter cuts the first segment."""
    segmenter = Segmenter(first_clause_min_chars)
    for i, token in enumerate(fakes.BenchLLM("x", {"reply": reply}).tokens, start=1):
        if list(segmenter.feed(token)):
            return i
    return i


@dataclass
class Turn:
    first_audio_ms: float  # at the client
    server: pb.TurnMetrics  # the server's own account (of the interrupted turn)


async def first_audio(
    target: str, turns: int, warmup: int = 10, text: str = "Hello there!", echo: str | None = None
) -> tuple[list[Turn], list[float]]:
    """`turns` timed turns on one stream, each interrupted once its first audio arrived; with `echo`, a bare
    grpc.aio round trip to that echo server right before each turn, so both are measured under the same
    conditions (the machine's speed drifts within a run)."""
    from bench.echo import METHOD

    async with contextlib.AsyncExitStack() as stack:
        call = pb_grpc.ConversationServiceStub(await stack.enter_async_context(channel(target))).Converse()
        echo_call = (await stack.enter_async_context(channel(echo))).stream_stream(METHOD)() if echo else None
        await call.write(CONFIG)
        await call.read()
        say = pb.ConverseRequest(text=pb.UserText(text=text))
        stop = pb.ConverseRequest(interrupt=pb.Interrupt())
        out: list[Turn] = []
        rtts: list[float] = []
        for i in range(warmup + turns):
            rtt = 0.0
            if echo_call is not None:
                started = time.perf_counter()
                await echo_call.write(b"x" * 16)
                await echo_call.read()
                rtt = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            await call.write(say)
            while not media(event := await call.read())[0]:
                if event.WhichOneof("event") in ("turn_complete", "turn_interrupted", "error"):
                    raise RuntimeError(f"turn ended before its first audio: {event}")
            took = (time.perf_counter() - started) * 1000
            await call.write(stop)
            while (event := await call.read()).WhichOneof("event") not in ("turn_complete", "turn_interrupted"):
                pass
            if i >= warmup:
                arm = event.WhichOneof("event")
                out.append(Turn(took, getattr(event, arm).metrics))
                if echo_call is not None:
                    rtts.append(rtt)
        if echo_call is not None:
            await echo_call.done_writing()
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
        return out, rtts


async def run(turns: int = 200, sim_turns: int = 40) -> list[Row]:
    limits = merge(NO_LIMITS, {"session": {"resume_window_s": 0}})
    with echo_server() as (echo, _):
        await round_trips(echo, 50)  # warm the echo server up
        with server("mock", merge(limits, instant_profile())) as srv:
            instant, rtts = await first_audio(srv.target, turns, echo=echo)
        with server("mock", merge(limits, simulated_profile())) as srv:
            simulated, _ = await first_audio(srv.target, sim_turns, warmup=3)
    rtt = median(rtts)
    ttfa = median([t.first_audio_ms for t in instant])
    server_ttfa = median([t.server.time_to_first_audio_ms for t in instant])
    k = first_segment_tokens(SIM_REPLY)
    providers = SIM_LLM_FIRST_MS + (k - 1) * 1000 / SIM_TOKENS_PER_S + SIM_TTS_FIRST_MS
    floor = providers + rtt
    sim = median([t.first_audio_ms for t in simulated])
    return [
        Row(
            "1 server-added TTFA, zero-latency providers",
            ttfa - rtt,
            "ms",
            "<= 2x RTT",
            ttfa - rtt <= 2 * rtt,
            baseline=rtt,
            baseline_name="bare grpc.aio RTT",
            ratio=(ttfa - rtt) / rtt,
            note=(
                f"time to first audio at the client {ttfa:.2f} ms = {ttfa / rtt:.2f}x the RTT, minus the RTT a "
                f"server doing nothing would take; the server's own view (text in to audio queued): "
                f"{server_ttfa:.2f} ms; {len(instant)} turns"
            ),
            extra={"ttfa_ms": ttfa},
        ),
        Row(
            "2 TTFA, simulated providers",
            sim,
            "ms",
            "<= floor + 10 ms",
            sim - floor <= 10.0,
            baseline=floor,
            baseline_name="floor",
            ratio=sim / floor,
            note=(
                f"{sim - floor:+.1f} ms above the floor = LLM 300 ms + {k - 1} tokens x 25 ms to the first segment "
                f"({k} tokens) + TTS 150 ms + RTT {rtt:.2f} ms; {len(simulated)} turns"
            ),
            extra={"over_floor_ms": sim - floor},
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--sim-turns", type=int, default=40)
    args = parser.parse_args(argv)
    report("Time to first audio", asyncio.run(run(args.turns, args.sim_turns)))


if __name__ == "__main__":
    main()
