"""Interrupt to `turn_interrupted` (target 3): how long a client waits, and that nothing of the turn follows.

    .venv/bin/python -m bench.bench_interrupt [--turns 200]

One Converse stream to a server in another process, default pacing, for two
sets of providers: stub media (`bench.fakes` LLM at 40 tokens/s and TTS, the stub
avatar) and the `local` profile (espeak-ng speech in worker processes, the
procedural face). (The `mock` profile's tone TTS renders a whole sentence on the
event loop, 8-10 ms of numpy per sentence, and an interrupt that lands then waits
for it; networked and local providers do not block the loop.) Each turn is
interrupted at a random moment up to 1 s into its media (four streams at a time), while audio and
video are streaming; the latency is from writing the `interrupt` to reading
the turn's `turn_interrupted`, at the client. A reader task consumes the stream
all along and checks that no event of an interrupted turn arrives after its
`turn_interrupted`. The baseline, from the same run, is the bare grpc.aio round
trip (`bench.echo`): an interrupt is at best one round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence

import grpc

from bench.common import (
    CONFIG,
    NO_LIMITS,
    Row,
    channel,
    echo_server,
    median,
    merge,
    percentile,
    report,
    round_trips,
    server,
)
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

REPLY = (
    "Let me tell you a story about a lighthouse keeper who lived on a small island. Every evening she climbed "
    "the stairs, lit the lamp and watched the ships go by, and every morning she wrote down what she had seen."
)


class Stream:
    """Reads the stream in the background: per turn, when media and the terminal event arrived."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self.media: dict[str, int] = {}
        self.first_media: dict[str, asyncio.Event] = {}
        self.ended: dict[str, tuple[float, str]] = {}
        self.ended_event: dict[str, asyncio.Event] = {}
        self.violations = 0
        self.new_turn: asyncio.Queue[str] = asyncio.Queue()

    def _turn(self, turn_id: str) -> None:
        if turn_id not in self.first_media:
            self.first_media[turn_id] = asyncio.Event()
            self.ended_event[turn_id] = asyncio.Event()
            self.media[turn_id] = 0
            self.new_turn.put_nowait(turn_id)

    async def read(self) -> None:
        while (event := await self.call.read()) is not grpc.aio.EOF:
            now = time.perf_counter()
            arm, turn = event.WhichOneof("event"), event.turn_id
            if not turn:
                continue
            self._turn(turn)
            if turn in self.ended:
                self.violations += 1  # an event of a turn after its terminal event
                continue
            if arm in ("media", "audio", "video"):
                self.media[turn] += 1
                self.first_media[turn].set()
            elif arm in ("turn_complete", "turn_interrupted", "error"):
                self.ended[turn] = (now, arm)
                self.ended_event[turn].set()


async def interrupts(target: str, turns: int, seed: int = 7) -> tuple[list[float], int, int]:
    """(latencies in ms, violations, turns that completed before the interrupt landed)."""
    rng = random.Random(seed)
    async with channel(target) as ch:
        call = pb_grpc.ConversationServiceStub(ch).Converse()
        await call.write(CONFIG)
        await call.read()
        stream = Stream(call)
        reader = asyncio.create_task(stream.read())
        latencies: list[float] = []
        missed = 0
        for _ in range(turns):
            await call.write(pb.ConverseRequest(text=pb.UserText(text="Tell me a story.")))
            turn = await asyncio.wait_for(stream.new_turn.get(), 10)
            await asyncio.wait_for(stream.first_media[turn].wait(), 10)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            sent = time.perf_counter()
            await call.write(pb.ConverseRequest(interrupt=pb.Interrupt()))
            await asyncio.wait_for(stream.ended_event[turn].wait(), 10)
            at, arm = stream.ended[turn]
            if arm == "turn_interrupted":
                latencies.append((at - sent) * 1000)
            else:
                missed += 1
        await asyncio.sleep(0.2)  # stragglers of the last turn would arrive now
        await call.done_writing()
        await reader
        return latencies, stream.violations, missed


STUB = {
    "components": {
        "llm": {"adapter": "bench_llm", "options": {"reply": REPLY, "tokens_per_s": 40}},
        "tts": {"adapter": "bench_tts"},
        "avatar": {"adapter": "stub_avatar"},
    }
}
STREAMS = 4
LOCAL = {"components": {"llm": {"adapter": "scripted", "options": {"reply": REPLY, "tokens_per_s": 40}}}}


async def run(turns: int = 200) -> list[Row]:
    with echo_server() as (echo, _):
        rtt = await round_trips(echo, 500)
        results = []
        for name, profile, overrides in (("stub", "mock", STUB), ("local", "local", LOCAL)):
            with server(profile, merge(NO_LIMITS, overrides)) as srv:
                # Four streams at once (each its own connection), so 200 interrupts take ~40 s.
                runs = await asyncio.gather(*(interrupts(srv.target, turns // STREAMS, i) for i in range(STREAMS)))
            latencies = [x for r in runs for x in r[0]]
            results.append((name, latencies, sum(r[1] for r in runs), sum(r[2] for r in runs)))
    rtt99 = percentile(rtt, 99)
    return [_row(name, latencies, violations, missed, rtt99) for name, latencies, violations, missed in results]


def _row(name: str, latencies: list[float], violations: int, missed: int, rtt99: float) -> Row:
    p99 = percentile(latencies, 99)
    return Row(
        f"3 interrupt -> turn_interrupted p99, {name}",
        p99,
        "ms",
        "p99 <= 10 ms, nothing after",
        p99 <= 10.0 and violations == 0,
        baseline=rtt99,
        baseline_name="bare RTT p99",
        ratio=p99 / rtt99,
        note=(
            f"median {median(latencies):.2f} ms, max {max(latencies):.2f} ms over {len(latencies)} interrupts "
            f"during media; {violations} events of a turn after its turn_interrupted"
            + (f"; {missed} turns ended before the interrupt" if missed else "")
        ),
        extra={"violations": violations, "median_ms": median(latencies)},
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args(argv)
    report("Interrupt latency", asyncio.run(run(args.turns)))


if __name__ == "__main__":
    main()
