"""A bounded pool of worker processes, each owning one libespeak-ng, streaming PCM to asyncio.

libespeak-ng keeps its state in globals and is not thread-safe, so one process can
synthesise one text at a time. The pool runs `size` worker processes (spawned, not
forked: the server has gRPC and asyncio threads that must not be forked), each of
which initialises espeak once and then serves one request at a time:

    parent ──SynthRequest──▶ worker        one request per idle worker
    parent ◀──("audio", job, pcm, events)  per 60 ms buffer, sent from espeak's callback
    parent ◀──("end", job, completed, n)   synthesis finished or was aborted after n samples
    parent ◀──("error", job, message)      the request failed (e.g. unknown voice)

A reader thread per worker routes messages to the asyncio loop of the call waiting
for them, so audio reaches the caller as espeak produces it, not per sentence. The
reader never waits for the caller: a call's audio is buffered in this process as it
is made (44 KB per second of speech), so a worker is free again as soon as espeak is
done, milliseconds per sentence, however slowly the caller plays it out.
Cancelling a call writes its job id into a shared word that the worker's callback
checks on every buffer; the callback then returns 1 and espeak stops. The worker
goes back to the idle set only after it has said "end" for that job, so it is never
handed out while still busy. A worker that dies fails its current call and is replaced.

Because workers are spawned, the program's main module must be safe to import (the
usual `if __name__ == "__main__":` guard), as with any spawn-based multiprocessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

import structlog

from adapters.errors import ErrorCategory, ProviderError

from .binding import Espeak, Event, EventType, Parameter

log = structlog.get_logger("tth.espeak")

MAX_WORKERS = 8
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 2.0
# Only these events are worth the trip across the pipe.
_FORWARDED = frozenset({EventType.WORD, EventType.SENTENCE, EventType.PHONEME})
_PROVIDER = "espeak"


class SynthRequest(NamedTuple):
    job_id: int
    text: str
    voice: str
    params: tuple[tuple[Parameter, int], ...]


class SynthPiece(NamedTuple):
    """One buffer of PCM16 mono and the events espeak reported inside it."""

    pcm: bytes
    events: tuple[Event, ...]


def _worker_main(conn: Connection, cancelled: ctypes.c_int64, voices: Sequence[str]) -> None:
    """The worker process: initialise espeak once, then serve requests until told to stop."""
    # The parent alone decides when workers stop (it sends None, or they see its end of the pipe
    # close). A signal to the server's process group (Ctrl-C, `timeout`, systemd's SIGTERM) would
    # otherwise also reach them and kill them mid-shutdown, which the pool takes for a crash.
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        espeak = Espeak.open()
        for voice in voices:
            espeak.set_voice(voice)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", espeak.sample_rate_hz, espeak.version))
    while True:
        try:
            request: SynthRequest | None = conn.recv()
        except EOFError:  # the parent is gone
            return
        if request is None:
            return
        try:
            conn.send(_serve(espeak, conn, cancelled, request))
        except OSError:  # the parent is gone
            return


def _serve(espeak: Espeak, conn: Connection, cancelled: ctypes.c_int64, request: SynthRequest) -> tuple[Any, ...]:
    job = request.job_id
    samples = 0

    def on_audio(pcm: bytes, events: Sequence[Event]) -> bool:
        nonlocal samples
        if cancelled.value == job:
            return False
        wanted = tuple(e for e in events if e.kind in _FORWARDED)
        if pcm or wanted:
            conn.send(("audio", job, pcm, wanted))
        samples += len(pcm) // 2
        return True

    if cancelled.value == job:
        return ("end", job, False, 0)
    try:
        espeak.set_voice(request.voice)
        for parameter, value in request.params:
            espeak.set_parameter(parameter, value)
        completed = espeak.synthesize(request.text, on_audio)
    except Exception as exc:
        return ("error", job, f"{type(exc).__name__}: {exc}")
    return ("end", job, completed, samples)


class _Job:
    """One synthesis call, as seen from the parent: where its messages go."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def deliver(self, message: tuple[Any, ...]) -> None:
        """Called from a reader thread."""
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, message)


class _Worker:
    def __init__(self, pool: EspeakPool, process: BaseProcess, conn: Connection, cancelled: ctypes.c_int64) -> None:
        self.pool = pool
        self.process = process
        self.conn = conn
        self.cancelled = cancelled
        self.job: _Job | None = None
        self.alive = True
        self._send_lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name=f"espeak-reader-{process.pid}", daemon=True)

    def submit(self, job: _Job, request: SynthRequest) -> None:
        self.job = job
        self.send(request)

    def send(self, message: SynthRequest | None) -> None:
        with self._send_lock:
            self.conn.send(message)

    def cancel(self, job_id: int) -> None:
        self.cancelled.value = job_id

    def _read(self) -> None:
        while True:
            try:
                message: tuple[Any, ...] = self.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "end":  # counted first, so a caller that sees its end sees the count
                self.pool._count(message[3])
            job = self.job
            if job is not None and message[1] == job.job_id:
                job.deliver(message)
            if message[0] in ("end", "error"):
                self.job = None
                self.pool._release(self)
        self.alive = False
        self.conn.close()
        self.process.join(_STOP_TIMEOUT_S)
        job, self.job = self.job, None
        if job is not None:
            job.deliver(("error", job.job_id, f"the espeak worker exited (code {self.process.exitcode})"))
        self.pool._lost(self)


class EspeakPool:
    """`size` espeak worker processes; `synthesize` waits for a free one."""

    def __init__(self, size: int, voices: Sequence[str] = ()) -> None:
        if not 1 <= size <= MAX_WORKERS:
            raise ValueError(f"espeak workers must be in [1, {MAX_WORKERS}], got {size}")
        self.size = size
        self.sample_rate_hz = 0
        self.version = ""
        self._voices = tuple(voices)
        self._context = multiprocessing.get_context("spawn")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._idle: deque[_Worker] = deque()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[_Worker]]] = deque()
        self._closing = False
        self._replacing = 0
        self._samples = 0

    @property
    def running(self) -> int:
        """How many workers are alive."""
        with self._lock:
            return sum(w.alive for w in self._workers)

    @property
    def samples_synthesized(self) -> int:
        """Samples espeak has produced for calls that have ended, cancelled ones included."""
        with self._lock:
            return self._samples

    def _count(self, samples: int) -> None:
        with self._lock:
            self._samples += samples

    async def start(self) -> None:
        """Spawn the workers and wait until each has initialised espeak and checked the voices."""
        spawned = await asyncio.gather(
            *(asyncio.to_thread(self._spawn) for _ in range(self.size)), return_exceptions=True
        )
        workers = [w for w in spawned if isinstance(w, _Worker)]
        failures = [e for e in spawned if isinstance(e, BaseException)]
        if failures:
            await asyncio.gather(*(asyncio.to_thread(self._stop, w) for w in workers))
            for w in workers:
                w.conn.close()
            raise failures[0]
        for worker in workers:
            self._add(worker)

    async def aclose(self) -> None:
        """Stop every worker; calls still running fail. Safe to call twice."""
        with self._lock:
            self._closing = True
            workers = list(self._workers)
        self._fail_waiters()
        await asyncio.gather(*(asyncio.to_thread(self._stop, w) for w in workers))

    async def synthesize(
        self, text: str, voice: str, params: Sequence[tuple[Parameter, int]]
    ) -> AsyncGenerator[SynthPiece, None]:
        """Yield PCM for `text` buffer by buffer as the worker produces it.

        Cancelling or closing the iterator stops the worker's synthesis at its next
        buffer; the worker is reused once it has stopped.
        """
        worker = await self._acquire()
        job = _Job(next(self._ids))
        try:
            worker.submit(job, SynthRequest(job.job_id, text, voice, tuple(params)))
        except OSError as exc:  # it died while idle; its reader thread is replacing it
            raise ProviderError(ErrorCategory.SERVER, f"the espeak worker is gone: {exc}", provider=_PROVIDER) from exc
        finished = False
        try:
            while True:
                message = await job.inbox.get()
                if message[0] == "audio":
                    yield SynthPiece(message[2], message[3])
                    continue
                finished = True
                if message[0] == "error":
                    raise ProviderError(ErrorCategory.SERVER, message[2], provider=_PROVIDER)
                if not message[2]:  # stopped, but not by this caller: the pool is closing
                    raise ProviderError(ErrorCategory.SERVER, "espeak stopped: the adapter closed", provider=_PROVIDER)
                return
        finally:
            if not finished:
                worker.cancel(job.job_id)

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe(duplex=True)
        cancelled = self._context.RawValue(ctypes.c_int64, 0)
        process = self._context.Process(
            target=_worker_main, args=(child, cancelled, self._voices), name="espeak-worker", daemon=True
        )
        process.start()
        child.close()
        try:
            if not parent.poll(_START_TIMEOUT_S):
                raise ProviderError(ErrorCategory.SERVER, "an espeak worker did not start in time", provider=_PROVIDER)
            hello = parent.recv()
        except EOFError:
            hello = ("failed", f"the espeak worker exited while starting (code {process.exitcode})")
        except BaseException:
            process.kill()
            raise
        if hello[0] != "ready":
            process.join(_STOP_TIMEOUT_S)
            raise ProviderError(ErrorCategory.SERVER, hello[1], provider=_PROVIDER, retryable=False)
        self.sample_rate_hz, self.version = hello[1], hello[2]
        return _Worker(self, process, parent, cancelled)

    def _add(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.append(worker)
        worker.reader.start()
        self._release(worker)

    def _stop(self, worker: _Worker) -> None:
        # Its reader thread sees the pipe close, fails any call in flight and closes our end.
        job = worker.job
        if job is not None:
            worker.cancel(job.job_id)
        with contextlib.suppress(OSError):
            worker.send(None)
        worker.process.join(_STOP_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(_STOP_TIMEOUT_S)

    async def _acquire(self) -> _Worker:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closing or not (self._workers or self._replacing):
                raise ProviderError(ErrorCategory.SERVER, "no espeak worker is running", provider=_PROVIDER)
            if self._idle:
                return self._idle.popleft()
            waiter: asyncio.Future[_Worker] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, waiter))
            # Handed a worker in the same instant we were cancelled: pass it on.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            raise

    def _release(self, worker: _Worker) -> None:
        """Make `worker` available: to the longest waiter, else to the idle set. Any thread."""
        with self._lock:
            if not worker.alive or self._closing:
                return
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._hand_over, waiter, worker)
                except RuntimeError:  # that caller's loop is closed
                    continue
                return
            self._idle.append(worker)

    def _hand_over(self, waiter: asyncio.Future[_Worker], worker: _Worker) -> None:
        # Runs on the waiter's loop, so checking and setting the future cannot race its cancellation.
        if waiter.done():
            self._release(worker)
        else:
            waiter.set_result(worker)

    def _lost(self, worker: _Worker) -> None:
        """A worker process ended; unless we are closing, start a replacement. Reader thread."""
        with self._lock:
            with contextlib.suppress(ValueError):
                self._idle.remove(worker)
            with contextlib.suppress(ValueError):
                self._workers.remove(worker)
            if self._closing:
                return
            # Counted while it starts, so callers wait for it rather than fail.
            self._replacing += 1
        log.warning("espeak worker exited; starting another", pid=worker.process.pid, code=worker.process.exitcode)
        try:
            replacement = self._spawn()
        except Exception:
            log.exception("could not start a replacement espeak worker")
            replacement = None
        with self._lock:
            self._replacing -= 1
        if replacement is None:
            self._fail_waiters()
        else:
            self._add(replacement)

    def _fail_waiters(self) -> None:
        """Fail every call waiting for a worker if none will ever come: closing, or none left to start."""
        with self._lock:
            if not self._closing and (self._workers or self._replacing):
                return
            waiters, self._waiters = list(self._waiters), deque()
        error = ProviderError(ErrorCategory.SERVER, "no espeak worker is running", provider=_PROVIDER)
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_fail, waiter, error)


def _fail(waiter: asyncio.Future[_Worker], error: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(error)
