"""`make bench`: every benchmark, one table: target, measured, baseline from the same run, ratio, pass or fail.

    .venv/bin/python -m bench [--only latency,interrupt,drift,capacity,wire,memory] [--quick] [--components]

Each benchmark is also a module that runs alone (`python -m bench.bench_latency`
...; see its docstring for what it measures and how). Servers and load
generators run in processes of their own; figures are medians unless a row
says otherwise, and every baseline is measured in the same run, because this
machine is shared and noisy. `--quick` shrinks the sample counts for a smoke
run (the figures are then rougher); `--components` also runs the face and
espeak-ng benchmarks (`bench/bench_face.py`, `bench/bench_espeak.py`) and
prints their own figures after the table.
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

from bench import bench_capacity, bench_drift, bench_interrupt, bench_latency, bench_memory, bench_wire
from bench.common import ROOT, Row, machine, table

Suite = Callable[[bool], list[Row]]

SUITES: dict[str, Suite] = {
    "latency": lambda quick: asyncio.run(bench_latency.run(50 if quick else 200, 10 if quick else 40)),
    "interrupt": lambda quick: asyncio.run(bench_interrupt.run(40 if quick else 200)),
    "drift": lambda quick: asyncio.run(bench_drift.run(15.0 if quick else 60.0)),
    "capacity": lambda quick: bench_capacity.run(100 if quick else 300, 40 if quick else 100, 12.0 if quick else 20.0),
    "wire": lambda quick: asyncio.run(bench_wire.run(10 if quick else 30, 6.0 if quick else 10.0, 1 if quick else 3)),
    "memory": lambda quick: bench_memory.run(200 if quick else 1000),
}
COMPONENTS = (
    [sys.executable, "bench/bench_face.py", "--seconds", "10"],
    [sys.executable, "bench/bench_espeak.py", "--calls", "50"],
    [sys.executable, "bench/bench_photo.py", "--seconds", "20", "--sessions", "100"],
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated, from: {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument(
        "--components", action="store_true", help="also run bench_face.py, bench_espeak.py and bench_photo.py"
    )
    args = parser.parse_args(argv)
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
            rows.extend(SUITES[name](args.quick))
        except Exception as exc:  # one broken benchmark must not cost the others' figures
            traceback.print_exc()
            rows.append(Row(f"{name}: did not run", math.nan, "", "runs", False, note=f"{type(exc).__name__}: {exc}"))
        print(f"[bench] {name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nTTH benchmarks, {when}, {time.monotonic() - started:.0f} s{' (quick)' if args.quick else ''}")
    print(f"Machine: {machine()}\n")
    print(table(rows))
    if args.components:
        for command in COMPONENTS:
            print(f"\n$ {' '.join(command[1:])}")
            subprocess.run(command, cwd=ROOT, check=False)
    failed = [r.target for r in rows if not r.passed]
    summary = f"{len(rows) - len(failed)} of {len(rows)} rows pass"
    print(f"\n{summary}" + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
