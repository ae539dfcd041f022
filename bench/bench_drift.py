"""A/V drift over a long turn (target 4), on stub media and on the local profile (espeak-ng + the face).

    .venv/bin/python -m bench.bench_drift [--seconds 60]

One turn of about `--seconds` of speech, paced in real time, on each profile
(the two servers run side by side). Every video frame carries `drift_ms`: its
timestamp minus the audio position its face was drawn from. The client takes
the mean and the largest |drift_ms| over the turn's frames, and checks the media
clock on its own: frame i is stamped i x 40 ms, the frames cover the audio to
within one frame, and the turn's own `drift_mean_ms`/`drift_max_ms` agree.

Baseline, from the same frames: the drift a player would show if it played
each frame on arrival beside the audio that arrived with it (no shared clock,
as in the seeds' transport): for each frame, its arrival time minus the arrival
time of the audio chunk covering its timestamp, minus how far apart the two
timestamps are.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from bench.common import CONFIG, NO_LIMITS, Row, channel, media, merge, report, server
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

SENTENCES = (
    "The harbour was quiet in the early morning, and the boats rocked gently on the grey water.",
    "A fisherman mended his nets on the pier while the gulls argued over scraps.",
    "Somewhere a bell rang, and the smell of fresh bread drifted down from the bakery on the hill.",
    "By noon the market was full of voices, colours, baskets of fruit and the clatter of carts.",
)


def long_reply(seconds: float) -> str:
    # About 14 characters a second of speech at the default rate.
    sentences: list[str] = []
    while sum(len(s) for s in sentences) < seconds * 14:
        sentences.append(SENTENCES[len(sentences) % len(SENTENCES)])
    return " ".join(sentences)


@dataclass
class Turn:
    frames: list[tuple[float, float, int, float]] = field(default_factory=list)  # (arrival, ts, index, drift)
    audio: list[tuple[float, float, float]] = field(default_factory=list)  # (arrival, ts, duration)
    metrics: pb.TurnMetrics | None = None


async def long_turn(target: str, reply_chars: int) -> Turn:
    turn = Turn()
    async with channel(target) as ch:
        call = pb_grpc.ConversationServiceStub(ch).Converse()
        await call.write(CONFIG)
        await call.read()
        await call.write(pb.ConverseRequest(text=pb.UserText(text=f"Tell me about the harbour ({reply_chars}).")))
        while (event := await call.read()) is not grpc.aio.EOF:
            now = time.perf_counter()
            arm = event.WhichOneof("event")
            audio, video = media(event)
            turn.frames += [(now, v.timestamp_ms, v.frame_index, v.drift_ms) for v in video]
            turn.audio += [(now, a.timestamp_ms, a.duration_ms) for a in audio]
            if arm == "turn_complete":
                turn.metrics = event.turn_complete.metrics
                break
            elif arm in ("turn_interrupted", "error"):
                raise RuntimeError(f"the turn did not complete: {event}")
        await call.done_writing()
    return turn


def analyse(name: str, turn: Turn, frame_ms: float = 40.0) -> Row:
    assert turn.metrics is not None and turn.frames and turn.audio
    drifts = [abs(d) for *_, d in turn.frames]
    mean, worst = sum(drifts) / len(drifts), max(drifts)
    on_grid = all(abs(ts - i * frame_ms) < 1e-6 for _, ts, i, _ in turn.frames)
    audio_end = turn.audio[-1][1] + turn.audio[-1][2]
    covered = turn.frames[-1][1] < audio_end <= turn.frames[-1][1] + frame_ms + 1e-6
    agrees = abs(turn.metrics.drift_mean_ms - mean) < 0.01 and abs(turn.metrics.drift_max_ms - worst) < 0.01
    # The baseline: play on arrival, no shared clock.
    starts = [ts for _, ts, _ in turn.audio]
    skews = []
    for arrival, ts, _, _ in turn.frames:
        i = max(0, bisect.bisect_right(starts, ts) - 1)
        a_arrival, a_ts, _ = turn.audio[i]
        skews.append(abs((arrival - a_arrival) * 1000 - (ts - a_ts)))
    naive_mean = sum(skews) / len(skews)
    checks = on_grid and covered and agrees
    return Row(
        f"4 A/V drift, {name}: mean |drift|",
        mean,
        "ms",
        "mean <= 1 ms, max <= 20 ms",
        mean <= 1.0 and worst <= 20.0 and checks,
        baseline=naive_mean,
        baseline_name="play-on-arrival",
        note=(
            f"max |drift| {worst:.2f} ms over {len(turn.frames)} frames, {audio_end / 1000:.1f} s of audio "
            f"(play-on-arrival max {max(skews):.1f} ms); frames on the 40 ms grid: {on_grid}, "
            f"cover the audio: {covered}, turn_complete agrees: {agrees}"
        ),
        extra={"max_ms": worst},
    )


STUB = {
    "components": {
        "llm": {"adapter": "bench_llm", "options": {"tokens_per_s": 40}},
        "tts": {"adapter": "bench_tts"},
        "avatar": {"adapter": "stub_avatar"},
    }
}


async def run(seconds: float = 60.0) -> list[Row]:
    reply = long_reply(seconds)
    stub = merge(NO_LIMITS, STUB, {"components": {"llm": {"options": {"reply": reply}}}})
    local = merge(NO_LIMITS, {"components": {"llm": {"adapter": "scripted", "options": {"reply": reply}}}})
    with server("mock", stub) as a, server("local", local) as b:
        stub_turn, local_turn = await asyncio.gather(long_turn(a.target, len(reply)), long_turn(b.target, len(reply)))
    return [analyse("stub", stub_turn), analyse("local", local_turn)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    report("A/V drift", asyncio.run(run(args.seconds)))


if __name__ == "__main__":
    main()
