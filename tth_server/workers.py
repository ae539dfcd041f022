"""Several server processes on one address, so one host uses all its cores (`tth-server --workers N`).

Each worker is a whole server (its own adapters, sessions and event loop),
started with the `spawn` context (gRPC's threads do not survive a fork) and
bound to the same HOST:PORT with SO_REUSEPORT (the channel argument
`grpc.so_reuseport`, which a single server turns off), so the kernel spreads new
connections across the workers; a connection,
and every session on it, stays with the worker that accepted it. A session
resumed on another connection may land on another worker: share the session
store (`store.kind: redis`) when clients rely on resuming. Port 0 with several
workers picks a free port first, so that all bind the same one. With
`metrics.port` set, worker i serves its metrics on `metrics.port + i` (scrape
them all; Prometheus sums across targets).

The port is shared only among these workers. Before starting any, the supervisor
checks that nothing holds the port (a bind without SO_REUSEPORT, which any
socket there refuses, ours included) and then holds it with a socket of its own
that is bound with SO_REUSEPORT but not SO_REUSEADDR and never listens: the
workers may join it (same user, SO_REUSEPORT), while another server's bind,
single (no SO_REUSEPORT) or another supervisor's check, is refused. Only two
supervisors checking in the same instant could both pass.

The supervising process serves nothing. It reports when every worker serves
(`on_ready`), or raises `WorkerError` when one exits while starting (the port is
taken, an adapter fails to start), after stopping the others. SIGTERM or SIGINT
is forwarded to every worker as SIGTERM, so each shuts down gracefully
(`server.grace_period_s`); a worker still running well after that is killed.
Once signalled, the supervisor replaces nobody: a worker that exits then (a
signal to the process group reaches the workers as well) is simply gone. A
worker that dies while serving is logged and replaced, after a delay that doubles
with each quick death (1 s up to 30 s; back to 1 s once a worker has served
30 s), so a crash does not lose a core and a crash at start does not spin.
Workers stop gracefully when the supervisor itself dies (they poll their parent).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from queue import Empty
from types import FrameType
from typing import Any, TypeAlias

import structlog

from adapters.errors import ConfigError
from adapters.logs import log
from tth_server.config import Config
from tth_server.logs import configure
from tth_server.server import bound_socket, port_taken, run_until_signalled

PARENT_POLL_S = 1.0  # how often a worker checks that its supervisor is alive
RESTART_BACKOFF_S = (1.0, 30.0)  # the first replacement's delay, doubled per quick death up to the second
STABLE_S = 30.0  # a worker that served this long resets the backoff
STOP_MARGIN_S = 10.0  # beyond the grace period, before a worker that will not stop is killed
POLL_S = 0.2  # the supervisor's loop: how soon it notices a signal or a dead worker


class WorkerError(RuntimeError):
    """A worker could not start; `exit_code` is 2 for a configuration error, else 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def free_port(host: str = "127.0.0.1") -> int:
    bare = host.strip("[]") or "0.0.0.0"
    with socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET) as s:
        s.bind((bare, 0))
        return int(s.getsockname()[1])


def shared_address(listen: str, workers: int) -> str:
    """`listen`, with port 0 replaced by a free port when several workers must bind the same one."""
    host, sep, port = listen.rpartition(":")
    if not sep or port != "0" or workers < 2:
        return listen
    return f"{host}:{free_port(host)}"


def hold_port(address: str) -> socket.socket:
    """The supervisor's claim on `address`: refused (WorkerError) when anything holds it; see the module docstring."""
    taken = port_taken(address)
    if taken:
        raise WorkerError(f"cannot listen on {address}: {taken}")
    return bound_socket(address, reuse_addr=False, reuse_port=True)


def worker_config(config: Config, index: int) -> Config:
    """Worker `index`'s configuration: its metrics on `metrics.port + index`."""
    if not config.metrics.port:
        return config
    return replace(config, metrics=replace(config.metrics, port=config.metrics.port + index))


# Messages from workers: ("ready", index, pid, port) once serving; ("failed", index, pid, message, exit_code).
Events: TypeAlias = "Queue[tuple[Any, ...]]"


def _worker(
    config: Config, listen: str, index: int, setup: Callable[[], object] | None, events: Events, parent: int
) -> None:
    """A worker process's main: serve until SIGTERM (from the supervisor) or until the supervisor is gone."""
    # A terminal's Ctrl+C reaches every process in the group; the supervisor forwards it as SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    structlog.contextvars.bind_contextvars(worker=index, pid=os.getpid())
    config = worker_config(config, index)
    configure(config.log)
    try:
        if setup is not None:
            setup()
        asyncio.run(_serve(config, listen, index, events, parent))
    except (ConfigError, OSError) as exc:
        code = 2 if isinstance(exc, ConfigError) else 1
        events.put(("failed", index, os.getpid(), str(exc), code))
        raise SystemExit(code) from None
    except Exception as exc:
        log.exception("worker failed")
        events.put(("failed", index, os.getpid(), f"{type(exc).__name__}: {exc}", 1))
        raise SystemExit(1) from None


async def _serve(config: Config, listen: str, index: int, events: Events, parent: int) -> None:
    watcher = asyncio.get_running_loop().create_task(_watch_parent(parent))
    try:
        await run_until_signalled(
            config,
            listen,
            ready=lambda running: events.put(("ready", index, os.getpid(), running.port)),
            share_port=True,
        )
    finally:
        watcher.cancel()


async def _watch_parent(parent: int) -> None:
    while True:  # polled: no event tells a process that its parent died (prctl's PDEATHSIG is per thread)
        await asyncio.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            break
    log.warning("the supervising process is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)  # the graceful shutdown run_until_signalled does on SIGTERM


@dataclass
class _Slot:
    """Worker `index` and its current process; replacements keep the index (and its metrics port)."""

    index: int
    process: BaseProcess | None = None
    serving_since: float | None = None  # monotonic time it reported serving; None while starting
    quick_deaths: int = 0
    restart_at: float | None = None  # when to start a replacement

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class _Supervisor:
    def __init__(self, config: Config, listen: str, setup: Callable[[], object] | None) -> None:
        self.config = config
        self.listen = listen
        self.setup = setup
        self.context = multiprocessing.get_context("spawn")
        self.events: Events = self.context.Queue()
        self.slots = [_Slot(i) for i in range(config.server.workers)]
        self.port = 0
        self.signalled: int | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signalled = signum  # the loop forwards it within POLL_S; nothing here that could be interrupted

    def spawn(self, slot: _Slot) -> None:
        # Not a daemon: a worker may start processes of its own (espeak-ng's pool); it stops with this one.
        process = self.context.Process(
            target=_worker,
            args=(self.config, self.listen, slot.index, self.setup, self.events, os.getpid()),
            name=f"tth-worker-{slot.index}",
        )
        process.start()
        slot.process, slot.serving_since, slot.restart_at = process, None, None
        log.info("worker started", worker=slot.index, pid=process.pid)

    def alive(self) -> list[tuple[_Slot, BaseProcess]]:
        return [(s, s.process) for s in self.slots if s.process is not None and s.process.is_alive()]

    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid is not None]

    def receive(self, timeout: float) -> list[tuple[Any, ...]]:
        """Worker messages: wait up to `timeout` for the first, then take whatever else is there."""
        out: list[tuple[Any, ...]] = []
        try:
            out.append(self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait())
            while True:
                out.append(self.events.get_nowait())
        except Empty:
            return out

    def handle(self, message: tuple[Any, ...], starting: bool) -> None:
        kind, index, pid = message[:3]
        slot = self.slots[index]
        if pid != slot.pid:
            return  # from a process already replaced
        if kind == "ready":
            slot.serving_since = time.monotonic()
            self.port = self.port or int(message[3])
            log.info("worker serving", worker=index, pid=pid)
        elif starting:
            self.stop_all()
            raise WorkerError(f"worker {index} (pid {pid}) failed to start: {message[3]}", int(message[4]))
        else:
            log.error("worker failed", worker=index, pid=pid, error=message[3])

    def reap(self, slot: _Slot, starting: bool) -> None:
        """`slot`'s process has exited."""
        assert slot.process is not None
        pid, code = slot.process.pid, slot.process.exitcode
        for message in self.receive(0):  # what it sent before exiting (a "failed" raises while starting)
            self.handle(message, starting)
        if starting and self.signalled is None:
            self.stop_all()
            raise WorkerError(f"worker {slot.index} (pid {pid}) exited with code {code} while starting")
        if self.signalled is not None:
            # A signal to the process group reaches the workers too: they stop as they would on ours.
            slot.process.close()
            slot.process = None
            return
        served = time.monotonic() - slot.serving_since if slot.serving_since is not None else 0.0
        slot.quick_deaths = 0 if served >= STABLE_S else slot.quick_deaths + 1
        first, most = RESTART_BACKOFF_S
        delay = min(most, first * 2 ** max(0, slot.quick_deaths - 1))
        slot.process.close()
        slot.process, slot.serving_since, slot.restart_at = None, None, time.monotonic() + delay
        log.warning(
            "worker died; starting a replacement", worker=slot.index, pid=pid, exitcode=code, restart_in_s=delay
        )

    def step(self, starting: bool) -> None:
        for message in self.receive(POLL_S):
            self.handle(message, starting)
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is not None and not slot.process.is_alive():
                self.reap(slot, starting)
            elif slot.process is None and slot.restart_at is not None and now >= slot.restart_at and not self.signalled:
                self.spawn(slot)

    def run(self, on_ready: Callable[[int, list[int]], object] | None) -> int:
        log.info("starting workers", workers=len(self.slots), listen=self.listen)
        for slot in self.slots:
            self.spawn(slot)
        while self.signalled is None and not all(s.serving_since is not None for s in self.slots):
            self.step(starting=True)
        if self.signalled is None:
            log.info("all workers serving", listen=self.listen, port=self.port, pids=self.pids())
            if on_ready is not None:
                on_ready(self.port, self.pids())
        while self.signalled is None:
            self.step(starting=False)
        log.info("stopping workers", signal=signal.Signals(self.signalled).name, pids=self.pids())
        return 0 if self.stop_all() else 1

    def stop_all(self) -> bool:
        """SIGTERM every worker and wait for all to exit; True unless one had to be killed."""
        deadline = time.monotonic() + self.config.server.grace_period_s + STOP_MARGIN_S
        for _, process in self.alive():
            process.terminate()  # SIGTERM: the worker's graceful shutdown
        while (running := self.alive()) and time.monotonic() < deadline:
            running[0][1].join(POLL_S)
        for slot, process in running:
            log.error("worker did not stop in time: killed", worker=slot.index, pid=process.pid)
            process.kill()
            process.join()
        if not running:
            log.info("workers stopped")
        return not running


def run_workers(
    config: Config,
    listen: str | None = None,
    *,
    setup: Callable[[], object] | None = None,
    on_ready: Callable[[int, list[int]], object] | None = None,
) -> int:
    """Run `config.server.workers` server processes on `listen` (default `server.listen`) until SIGTERM or SIGINT.

    `setup` runs first in every worker (it must pickle: a module-level function or
    a partial of one); `on_ready(port, pids)` runs here once every worker serves.
    Returns the exit status: 0 once every worker stopped, 1 if one had to be killed.
    Raises `WorkerError` when the port is taken or a worker exits while starting (the others are then stopped).
    Call it from the main thread (it handles SIGTERM and SIGINT until it returns).
    """
    address = shared_address(listen or config.server.listen, config.server.workers)
    claim = hold_port(address)
    supervisor = _Supervisor(config, address, setup)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return supervisor.run(on_ready)
    finally:
        claim.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
