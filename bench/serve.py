"""Run TTH for the benchmarks: `tth-server --workers N` (tth_server.workers) plus what they need.

    python -m bench.serve --profile mock --listen 127.0.0.1:0 --workers 2 --bench-fakes --overrides '{...}'

Every worker process, the address they share (SO_REUSEPORT), port 0, metrics
ports and stopping are tth_server.workers' (see there); even one worker runs in
its own process, so benchmarks measure the workers' CPU apart from this one's.
This adds `--overrides` (JSON merged over the profile), `--bench-fakes`
(registers `bench.fakes` in every worker), a grace period of 1 s unless the
overrides set one, and prints `READY <port> <pid>,...` on stdout once every worker accepts calls.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any

from adapters.errors import ConfigError
from tth_server.config import load_config
from tth_server.logs import configure
from tth_server.workers import WorkerError, run_workers


def _setup(bench_fakes: bool) -> None:
    """Runs first in every worker."""
    if bench_fakes:
        from bench import fakes

        fakes.register()


def _ready(port: int, pids: list[int]) -> None:
    print(f"READY {port} {','.join(str(pid) for pid in pids)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="configuration profile (default: TTH_PROFILE or base.yaml's)")
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT for every worker (port 0: pick one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server processes (default: cores)")
    parser.add_argument("--overrides", default="", help="JSON merged over the configuration")
    parser.add_argument("--bench-fakes", action="store_true", help="register the bench_llm and bench_tts adapters")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = json.loads(args.overrides) if args.overrides else {}
    overrides["server"] = {"grace_period_s": 1.0, **(overrides.get("server") or {}), "workers": args.workers}
    try:
        config = load_config(args.profile, overrides=overrides)
        configure(config.log)  # before anything logs: stdout is for the READY line
        return run_workers(config, args.listen, setup=functools.partial(_setup, args.bench_fakes), on_ready=_ready)
    except ConfigError as exc:
        print(f"bench.serve: configuration error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"bench.serve: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
