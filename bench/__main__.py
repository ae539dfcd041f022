"""`make bench`: every benchmark, one table: target, measured, baseline from the same run, ratio, pass or fail.

    .venv/bin/python -m bench [--only latency,interrupt,drift,capacity,wire,memory,voice,avatars]
                              [--quick|--smoke] [--components]

Each benchmark is also a module that runs alone (`python -m bench.bench_latency`
...; see its docstring for what it measures and how). Servers and load
generators run in processes of their own; figures are medians unless a row
says otherwise, and every baseline is measured in the same run, because this
machine is shared and noisy. `--quick` shrinks the sample counts for a smoke
run (the figures are then rougher); `--components` also runs the face,
espeak-ng and generated-code benchmarks (`bench/bench_face.py`,
`bench/bench_espeak.py`, `bench/bench_sdk_codegen.py`) and prints their own
figures after the table. `--smoke` runs every benchmark and component at its
smallest and exits 1 if one did not run: CI's check (`make bench-smoke`) that a
fresh install from the project's own files runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

from bench import (
    bench_avatar_providers,
    bench_capacity,
    bench_drift,
    bench_interrupt,
    bench_latency,
    bench_memory,
    bench_voice,
    bench_wire,
)
from bench.common import ROOT, Row, machine, table

Suite = Callable[[str], list[Row]]


def size(mode: str, full: float, quick: float, smoke: float) -> float:
    """The sample count or duration for `mode`: "full", "quick" or "smoke"."""
    return {"full": full, "quick": quick, "smoke": smoke}[mode]


def _count(mode: str, full: int, quick: int, smoke: int) -> int:
    return int(size(mode, full, quick, smoke))


SUITES: dict[str, Suite] = {
    "latency": lambda m: asyncio.run(bench_latency.run(_count(m, 200, 50, 10), _count(m, 40, 10, 3))),
    "interrupt": lambda m: asyncio.run(bench_interrupt.run(_count(m, 200, 40, 10))),
    "drift": lambda m: asyncio.run(bench_drift.run(size(m, 60.0, 15.0, 3.0))),
    "capacity": lambda m: bench_capacity.run(_count(m, 300, 100, 10), _count(m, 100, 40, 5), size(m, 20.0, 12.0, 3.0)),
    "wire": lambda m: asyncio.run(
        bench_wire.run(_count(m, 30, 10, 2), size(m, 10.0, 6.0, 2.0), 1 if m != "full" else 3)
    ),
    "memory": lambda m: bench_memory.run(_count(m, 1000, 200, 20)),
    "voice": lambda m: bench_voice.run(m != "full", skip_capacity=m == "smoke"),
    "avatars": lambda m: asyncio.run(
        bench_avatar_providers.run(_count(m, 10, 5, 2), size(m, 5.0, 3.0, 1.0), _count(m, 12, 6, 2))
    ),
}
# The component benchmarks, each a script of its own: (arguments, smoke run's arguments).
COMPONENTS = (
    (["bench/bench_face.py", "--seconds", "10"], ["bench/bench_face.py", "--seconds", "1"]),
    (["bench/bench_espeak.py", "--calls", "50"], ["bench/bench_espeak.py", "--calls", "4", "--streams", "2"]),
    (["bench/bench_sdk_codegen.py"], ["bench/bench_sdk_codegen.py", "--runs", "1"]),
    (
        ["bench/bench_photo.py", "--seconds", "20", "--sessions", "100"],
        ["bench/bench_photo.py", "--seconds", "2", "--sessions", "5"],
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated, from: {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="fewer samples: rough figures in a few minutes")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every benchmark and component at its smallest, to check they run (figures meaningless); "
        "exits 1 when one did not run",
    )
    parser.add_argument(
        "--components",
        action="store_true",
        help="also run bench_face.py, bench_espeak.py, bench_photo.py, bench_sdk_codegen.py",
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SUITES)
    unknown = set(chosen) - set(SUITES)
    if unknown:
        parser.error(f"unknown benchmark {sorted(unknown)[0]!r}; choose from {', '.join(SUITES)}")
    started = time.monotonic()
    rows: list[Row] = []
    for name in chosen:
        t0 = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(SUITES[name](mode))
        except Exception as exc:  # one broken benchmark must not cost the others' figures
            traceback.print_exc()
            rows.append(Row(f"{name}: did not run", math.nan, "", "runs", False, note=f"{type(exc).__name__}: {exc}"))
        print(f"[bench] {name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nTTH benchmarks, {when}, {time.monotonic() - started:.0f} s{'' if mode == 'full' else f' ({mode})'}")
    print(f"Machine: {machine()}\n")
    print(table(rows))
    broken = [r.target for r in rows if r.target.endswith(": did not run")]
    if args.components or args.smoke:
        for full, smoke in COMPONENTS:
            command = smoke if args.smoke else full
            print(f"\n$ python {' '.join(command)}", flush=True)
            if subprocess.run([sys.executable, *command], cwd=ROOT, check=False).returncode != 0:
                broken.append(f"{command[0]}: did not run")
    failed = [r.target for r in rows if not r.passed]
    summary = f"{len(rows) - len(failed)} of {len(rows)} rows pass"
    print(f"\n{summary}" + (f"; failing: {', '.join(failed)}" if failed else ""))
    if args.smoke and broken:  # a smoke run checks that everything runs, not the figures
        print(f"smoke run: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
