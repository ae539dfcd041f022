"""What every benchmark shares: servers in their own processes, process CPU and memory, results.

Servers always run in a separate process (`python -m bench.serve`), so the
client measuring them never competes with them on one event loop; their CPU
time and memory are read from /proc. A benchmark returns `Row`s; `bench/__main__`
prints them as one table, and each benchmark module prints its own when run alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import media_pb2 as mpb

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"log": {"level": "warning"}}
# Admission limits are for production; a load test opens hundreds of anonymous sessions.
NO_LIMITS = {"limits": {"max_sessions": 0, "max_sessions_per_key": 0, "turns_per_minute_per_key": 0}}
TERMINAL = ("turn_complete", "turn_interrupted")
# The first request of every benchmark stream: all defaults, media batched as the SDK asks for it.
CONFIG = pb.ConverseRequest(config=pb.SessionConfig(batch_media=True))


def media(event: pb.ConverseResponse) -> tuple[Sequence[mpb.AudioChunk], Sequence[mpb.VideoFrame]]:
    """The audio chunks and video frames a response carries, batched (`media`) or one by one."""
    arm = event.WhichOneof("event")
    if arm == "media":
        return event.media.audio, event.media.video
    if arm == "audio":
        return (event.audio,), ()
    if arm == "video":
        return (), (event.video,)
    return (), ()


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


# ---- statistics ------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), nearest rank, so p99 of 200 samples is the 198th smallest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# ---- processes -------------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    """Direct and indirect child processes (the espeak workers of a server, say)."""
    out: list[int] = []
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, found):
        out.append(child)
        out.extend(children(child))
    return out


@dataclass
class ServerProcess:
    """A TTH server (one or more worker processes) started by `bench.serve`."""

    proc: subprocess.Popen[str]
    port: int
    pids: list[int]
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def all_pids(self) -> list[int]:
        """The workers and their own children (TTS worker processes)."""
        return [p for pid in self.pids for p in (pid, *children(pid))]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.all_pids():
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def server(
    profile: str = "mock",
    overrides: dict[str, Any] | None = None,
    workers: int = 1,
    listen: str = "127.0.0.1:0",
    websocket: str = "",
) -> Iterator[ServerProcess]:
    """Start a server in its own process(es) and stop it on exit; its log goes to a temporary file.

    `websocket="uvicorn"` or `"websockets"` starts the seeds' WebSocket baseline (`bench.ws_baseline`) instead,
    on that server; `"uvicorn+deflate"` with permessage-deflate.
    """
    log = Path(tempfile.mkstemp(prefix="tth-bench-", suffix=".log")[1])
    config = ["--profile", profile, "--bench-fakes", "--overrides", json.dumps(merge(QUIET, overrides or {}))]
    if websocket:
        kind, _, deflate = websocket.partition("+")
        args = [sys.executable, "-m", "bench.ws_baseline", "--server", kind, *config]
        args += ["--deflate"] if deflate else []
    else:
        args = [sys.executable, "-m", "bench.serve", "--listen", listen, "--workers", str(workers), *config]
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
    _, port, pids = line.split()
    running = ServerProcess(proc, int(port), [int(p) for p in pids.split(",")], log)
    try:
        yield running
    except Exception:
        # A benchmark that fails says what its server said (a server that died shows why).
        tail = log.read_text()[-3000:]
        sys.stderr.write(f"[bench] server {args[2]} (exit code {proc.poll()}), the end of its log:\n{tail}\n")
        raise
    finally:
        running.stop()
        with contextlib.suppress(OSError):
            log.unlink()


def channel(target: str) -> grpc.aio.Channel:
    """A client channel with its own TCP connection (a local subchannel pool: channels share nothing)."""
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    return grpc.aio.insecure_channel(target, options=options)


# ---- results ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One target: what was measured, beside its baseline from the same run."""

    target: str  # "1 TTFA, zero-latency providers"
    measured: float
    unit: str
    limit: str  # the target, in words: "<= 2x baseline"
    passed: bool
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[str]:
        base = f"{_num(self.baseline)} {self.unit} {self.baseline_name}".strip() if self.baseline is not None else "-"
        return [
            self.target,
            f"{_num(self.measured)} {self.unit}",
            base,
            (f"{self.ratio:.3f}x" if self.ratio < 1 else f"{self.ratio:.2f}x") if self.ratio is not None else "-",
            self.limit,
            "PASS" if self.passed else "FAIL",
        ]


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


HEADER = ["target", "measured (median)", "baseline (same run)", "ratio", "limit", "result"]


def table(rows: Sequence[Row]) -> str:
    grid = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in grid]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = [f"- {r.target}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GB RAM"
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}"
    )


def report(title: str, rows: Sequence[Row]) -> None:
    print(f"\n{title}\n")
    print(table(rows))


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


@contextlib.contextmanager
def echo_server(reply_bytes: int = 2000) -> Iterator[tuple[str, int]]:
    """The bare grpc.aio echo server (`bench.echo`) in its own process: yields (target, pid)."""
    args = [sys.executable, "-m", "bench.echo", "--reply-bytes", str(reply_bytes)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    _, port, pid = proc.stdout.readline().split()
    try:
        yield f"127.0.0.1:{port}", int(pid)
    finally:
        proc.terminate()
        proc.wait(10)


async def round_trips(target: str, samples: int, request_bytes: int = 16) -> list[float]:
    """Bare grpc.aio bidirectional round trips on one stream, in ms (after a warm-up)."""
    from bench.echo import METHOD

    async with channel(target) as ch:
        call = ch.stream_stream(METHOD)()
        request = b"x" * request_bytes
        out = []
        for i in range(samples + 50):
            started = time.perf_counter()
            await call.write(request)
            await call.read()
            if i >= 50:
                out.append((time.perf_counter() - started) * 1000)
        await call.done_writing()
        return out
