"""Run TTH in several processes on one port, so one host uses all its cores.

    python -m bench.serve --profile local --listen 0.0.0.0:50051 --workers 2

Each worker is a whole server (its own adapters, sessions and event loop) bound
to the same address. grpcio sets SO_REUSEPORT on its listening sockets on Linux
by default (the channel argument `grpc.so_reuseport`, 1 unless turned off), so
the kernel spreads new connections across the workers; a connection, and every
session on it, stays with the worker that accepted it. A session resumed on
another connection may land on another worker: share the session store
(`store.kind: redis`) when clients rely on resuming. With `metrics.port` set,
worker i serves its metrics on `metrics.port + i` (scrape them all; Prometheus
sums across targets).

Benchmarks start it with `--overrides` (JSON merged over the profile) and
`--bench-fakes` (registers `bench.fakes`); it prints `READY <port> <pid>,...`
on stdout once every worker accepts calls, and stops them all on SIGTERM or
SIGINT (each worker shuts down gracefully).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import sys
from multiprocessing.queues import Queue
from typing import Any

from tth_server.config import load_config
from tth_server.logs import configure
from tth_server.server import serve, tune_for_serving


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _config(args: argparse.Namespace, index: int) -> Any:
    overrides: dict[str, Any] = json.loads(args.overrides) if args.overrides else {}
    config = load_config(args.profile, overrides=overrides or None)
    if config.metrics.port and index:
        metrics = dict(overrides.get("metrics") or {})
        metrics["port"] = config.metrics.port + index
        config = load_config(args.profile, overrides={**overrides, "metrics": metrics})
    return config


async def _run(config: Any, listen: str, ready: Queue[tuple[int, int]]) -> None:
    running = await serve(config, listen)
    tune_for_serving()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    ready.put((running.port, os.getpid()))
    parent = os.getppid()
    while not stop.is_set() and os.getppid() == parent:  # the launcher was killed: stop too
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await running.stop(1.0)


def _worker(args: argparse.Namespace, index: int, listen: str, ready: Queue[tuple[int, int]]) -> None:
    if args.bench_fakes:
        from bench import fakes

        fakes.register()
    config = _config(args, index)
    configure(config.log)
    if os.environ.get("TTH_UVLOOP"):
        import uvloop

        uvloop.run(_run(config, listen, ready))
    else:
        asyncio.run(_run(config, listen, ready))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="configuration profile (default: TTH_PROFILE or base.yaml's)")
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT for every worker (port 0: pick one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server processes (default: cores)")
    parser.add_argument("--overrides", default="", help="JSON merged over the configuration")
    parser.add_argument("--bench-fakes", action="store_true", help="register the bench_llm and bench_tts adapters")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if int(port) == 0 and args.workers > 1:
        port = str(free_port(host))  # every worker must bind the same port
    listen = f"{host}:{port}"
    context = multiprocessing.get_context("spawn")  # gRPC's threads do not survive fork
    ready: Queue[tuple[int, int]] = context.Queue()
    # Not daemons: a worker may start processes of its own (espeak-ng's pool); each stops with its parent.
    workers = [context.Process(target=_worker, args=(args, i, listen, ready)) for i in range(args.workers)]
    for worker in workers:
        worker.start()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = []
    for _ in workers:
        while True:
            try:
                started.append(ready.get(timeout=1.0))
                break
            except Exception:
                if stopping or not all(w.is_alive() for w in workers):
                    stop()
                    return 1
    bound = started[0][0]
    print(f"READY {bound} {','.join(str(pid) for _, pid in started)}", flush=True)
    for worker in workers:
        worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
