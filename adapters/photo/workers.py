"""Frames the cache does not hold: rigged, warped and JPEG-encoded away from the event loop.

A miss is many short OpenCV and NumPy calls, each of which lets go of the GIL and
takes it back; in a thread beside a busy event loop every take-back waits out the
loop's switch interval (docs/photo_face.md, "Render workers"). Worker processes share
no GIL with the loop: `ProcessRenderer` keeps `processes` of them, each one a
single-worker pool that renders in the order it is asked and holds the rigs of the
portraits it was sent (a portrait travels to a worker once). `ThreadRenderer`
(`render_processes: 0`) renders in threads of this process, for hosts that allow no
child processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import cv2

from adapters.photo.portrait import Portrait
from adapters.photo.pose import FacePose
from adapters.photo.rig import Rig

MAX_RIGS = 16
"""Rigs kept per process (portrait x size), most recent first; one is ~1 MB at 256 px."""


class Rigs:
    """Portraits rigged at a size, built once (~0.1 s at 256 px) and kept for the most recent."""

    def __init__(self) -> None:
        self._rigs: OrderedDict[tuple[str, int, int], Rig] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, portrait: Portrait, width: int, height: int) -> Rig:
        key = (portrait.digest, width, height)
        with self._lock:
            rig = self._rigs.get(key)
            if rig is None:
                rig = Rig(portrait, width, height)
                self._rigs[key] = rig
                while len(self._rigs) > MAX_RIGS:
                    self._rigs.popitem(last=False)
            self._rigs.move_to_end(key)
            return rig


def encode(rig: Rig, pose: FacePose, quality: int) -> bytes:
    """One frame of `rig` in `pose`, as JPEG."""
    ok, encoded = cv2.imencode(".jpg", rig.frame(pose), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(encoded.tobytes())


# ---- in a worker process ------------------------------------------------------------------------------------------

_portraits: dict[str, Portrait] = {}
_rigs = Rigs()


def _render_in_worker(
    digest: str, portrait: Portrait | None, width: int, height: int, pose: FacePose, quality: int
) -> bytes:
    if portrait is not None:
        _portraits[digest] = portrait
    return encode(_rigs.get(_portraits[digest], width, height), pose, quality)


def _ready() -> bool:
    return True


# ---- in the server ------------------------------------------------------------------------------------------------


class ThreadRenderer:
    """Renders in this process's worker threads."""

    def __init__(self, quality: int, rigs: Rigs) -> None:
        self.quality = quality
        self.rigs = rigs

    async def start(self) -> None:
        pass

    async def render(self, portrait: Portrait, width: int, height: int, pose: FacePose) -> bytes:
        return await asyncio.to_thread(self._render, portrait, width, height, pose)

    def _render(self, portrait: Portrait, width: int, height: int, pose: FacePose) -> bytes:
        return encode(self.rigs.get(portrait, width, height), pose, self.quality)

    def close(self) -> None:
        pass


@dataclass
class _Worker:
    pool: ProcessPoolExecutor
    sent: set[str] = field(default_factory=set)
    pending: int = 0


class ProcessRenderer:
    """Renders in `processes` worker processes, each asked in turn by how little it has pending."""

    def __init__(self, processes: int, quality: int) -> None:
        if processes < 1:
            raise ValueError(f"render_processes must be at least 1 for worker processes, got {processes}")
        self.quality = quality
        self._processes = processes
        self._workers: list[_Worker] = []
        # forkserver: workers fork from a clean process with the renderer imported (fast to start, and
        # never a fork of this one with its gRPC and asyncio threads).
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__])

    def _worker(self) -> _Worker:
        if not self._workers:
            self._workers = [_Worker(self._new_pool()) for _ in range(self._processes)]
        return min(self._workers, key=lambda w: w.pending)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, mp_context=self._context)

    async def start(self) -> None:
        """Start the workers now, so the first miss does not wait for a process to start."""
        self._worker()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(w.pool, _ready) for w in self._workers))

    async def render(self, portrait: Portrait, width: int, height: int, pose: FacePose) -> bytes:
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            worker = self._worker()
            pool = worker.pool
            sent = portrait.digest in worker.sent
            worker.sent.add(portrait.digest)
            worker.pending += 1
            try:
                return await loop.run_in_executor(
                    pool,
                    _render_in_worker,
                    portrait.digest,
                    None if sent else portrait,
                    width,
                    height,
                    pose,
                    self.quality,
                )
            except BrokenProcessPool:
                # The worker died (killed, out of memory): a new one, which has been sent nothing, and once more.
                if worker.pool is pool:  # the first of its renders to find out
                    pool.shutdown(wait=False, cancel_futures=True)
                    worker.pool, worker.sent = self._new_pool(), set()
                if attempt == 0:
                    continue
                raise
            finally:
                worker.pending -= 1
        raise AssertionError("unreachable")

    def pids(self) -> list[int]:
        """The worker processes' ids (those started so far)."""
        return [pid for w in self._workers for pid in w.pool._processes or {}]

    def close(self) -> None:
        for worker in self._workers:
            worker.pool.shutdown(wait=False, cancel_futures=True)
        self._workers = []


Renderer = ThreadRenderer | ProcessRenderer


def renderer(processes: int, quality: int, rigs: Rigs) -> Renderer:
    """Worker processes, or threads of this process (sharing `rigs`) for `processes` 0."""
    return ThreadRenderer(quality, rigs) if processes == 0 else ProcessRenderer(processes, quality)
