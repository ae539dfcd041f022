"""The runtime alone: CPU per second of media with no transport at all (the floor under target 6's CPU row).

    python -m bench.runtime_only --profile mock --overrides JSON [--sessions 30] [--ramp 2]
    # prints "<cpu seconds> <media seconds>"

The same sessions and turns `bench.bench_wire` sends through gRPC and the
WebSocket baseline, run inside one process with nobody on the other end: each
session's events are taken from its queue as a transport would take them, and
dropped. What the process spends is what the runtime (pipeline, pacing, drift,
queue, replay buffer) and the adapters cost before any byte is encoded or sent,
so no transport can bring the whole server below it. CPU includes child
processes (espeak-ng's workers on the local profile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from adapters.controls import ControlPatch
from adapters.media import RenderRequest
from bench import fakes
from bench.common import children, cpu_seconds
from tth_server.config import load_config
from tth_server.events import AudioOut, TurnCompleted, TurnInterrupted
from tth_server.logs import configure
from tth_server.runtime import Runtime


async def _session(runtime: Runtime, delay_s: float) -> float:
    """One session, one turn; the ms of audio it produced."""
    await asyncio.sleep(delay_s)
    session = runtime.new_session("", ControlPatch(), RenderRequest(), "config")
    attachment = await runtime.sessions.open(session)
    await session.say("Tell me about the harbour.", ControlPatch())
    audio_ms = 0.0
    while (item := await session.next_event(attachment)) is not None:
        event = item[1]
        if isinstance(event, AudioOut):
            audio_ms += event.chunk.duration_ms
        elif isinstance(event, TurnCompleted | TurnInterrupted):
            break
    await runtime.sessions.end(session)
    return audio_ms


def _cpu() -> float:
    return sum(cpu_seconds(pid) for pid in (os.getpid(), *children(os.getpid())))


async def _main(profile: str, overrides: dict[str, Any], sessions: int, ramp: float) -> tuple[float, float]:
    config = load_config(profile, overrides=overrides or None)
    configure(config.log)
    runtime = Runtime(config)
    await runtime.start()
    try:
        before = _cpu()
        audio = await asyncio.gather(*(_session(runtime, ramp * i / sessions) for i in range(sessions)))
        return _cpu() - before, sum(audio) / 1000
    finally:
        await runtime.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_only", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mock")
    parser.add_argument("--overrides", default="")
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--ramp", type=float, default=2.0)
    args = parser.parse_args()
    fakes.register()
    overrides = json.loads(args.overrides) if args.overrides else {}
    cpu, media = asyncio.run(_main(args.profile, overrides, args.sessions, args.ramp))
    print(f"{cpu:.3f} {media:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
