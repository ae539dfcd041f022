"""Build, run and stop the gRPC server: the conversation service, health checking and reflection.

`serve()` returns a `RunningServer` bound to the configured address (port 0
picks a free port, which tests use). Health is reported overall (""), for the
service, and per stage ("tth.llm", "tth.tts", "tth.avatar"), refreshed from the
adapters' own health checks. `stop()` is the graceful shutdown that SIGTERM
triggers: health flips to NOT_SERVING so balancers stop sending, new calls are
refused, and running calls get the grace period to finish before they are
cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapters.logs import log
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server import metrics, tracing
from tth_server.auth import AuthInterceptor
from tth_server.config import Config, TLSSettings
from tth_server.convert import tolerant_handlers
from tth_server.runtime import Runtime
from tth_server.servicer import ConversationServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConversationService"].full_name
HEALTH_REFRESH_S = 10.0


def stage_health_name(stage: str) -> str:
    return f"tth.{stage}"


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    runtime: Runtime
    health: health.aio.HealthServicer
    _refresher: asyncio.Task[None] | None = field(default=None, repr=False)
    metrics_http: Any = field(default=None, repr=False)  # the /metrics server, when metrics.port is set

    async def refresh_health(self) -> None:
        for stage, adapter in self.runtime.adapters.items():
            try:
                ok = (await adapter.health()).healthy
            except Exception:
                ok = False
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(stage_health_name(stage), status)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            await self.refresh_health()

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, let running turns finish within the grace period.

        Health flips first so balancers stop sending; sessions get a notice, new
        streams and turns are refused with UNAVAILABLE, running turns may finish
        within the grace period and are then interrupted (each still ends with its
        terminal event), and every stream ends with UNAVAILABLE so clients
        reconnect elsewhere. What grace is left is given to other calls in flight.
        """
        grace = self.runtime.config.server.grace_period_s if grace_s is None else grace_s
        deadline = asyncio.get_running_loop().time() + grace
        await self.health.enter_graceful_shutdown()
        if self._refresher is not None:
            self._refresher.cancel()
        await self.runtime.shut_down(grace)
        await self.server.stop(max(0.5, deadline - asyncio.get_running_loop().time()))
        await self.runtime.aclose()
        if self.metrics_http is not None:
            await asyncio.to_thread(self.metrics_http.shutdown)
            self.metrics_http.server_close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def bound_socket(address: str, *, reuse_addr: bool = True, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to `address` (HOST:PORT), not listening; raises OSError (EADDRINUSE when taken).

    With `reuse_addr`, as grpcio binds, connections in TIME_WAIT from a server that
    just stopped do not count as the port being taken; a listening socket does.
    """
    host, _, port = address.rpartition(":")
    family, kind, proto, _, where = socket.getaddrinfo(
        host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(where)
    except BaseException:
        sock.close()
        raise
    return sock


def port_taken(address: str) -> str:
    """Why `address` cannot be listened on ("address in use", or the OS's reason), or "" when it can."""
    try:
        bound_socket(address).close()
    except OSError as exc:
        return "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return ""


def _bind(server: grpc.aio.Server, address: str, tls: TLSSettings) -> int:
    """Listen in plain text, with TLS, or with mutual TLS when a client CA is configured."""
    if not tls.cert_file:
        return int(server.add_insecure_port(address))
    client_ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    credentials = grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    return int(server.add_secure_port(address, credentials))


async def serve(config: Config, listen: str | None = None, *, share_port: bool = False) -> RunningServer:
    """Start adapters and the server; returns once it accepts calls.

    The port is this server's alone unless `share_port` (the workers of one
    `--workers` server, see tth_server.workers): grpcio would otherwise set
    SO_REUSEPORT and a second server on a taken port would start and take half
    its connections.
    """
    runtime = Runtime(config)
    metrics.track_sessions(runtime.sessions)
    tracing.configure()
    await runtime.start()
    limit = config.server.max_message_bytes
    if not runtime.keys.enabled:
        log.warning("no API keys configured (TTH_API_KEYS or auth.keys_file): the server is open to anyone")
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(runtime.keys, config.auth)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients may ping every 10 s to keep idle streams through proxies alive.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", int(share_port)),
        ],
    )
    handlers = tolerant_handlers(pb_grpc.add_ConversationServiceServicer_to_server, ConversationServicer(runtime))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = listen or config.server.listen
    try:
        port = _bind(server, address, config.tls)
    except RuntimeError as exc:  # grpcio raises this, not OSError, when the address cannot be bound
        port, why = 0, f": {exc}"
    else:
        why = ""
    if port == 0:
        await runtime.aclose()
        taken = port_taken(address)
        raise OSError(f"cannot listen on {address}: {taken}" if taken else f"cannot listen on {address}{why}")
    metrics_http = None
    if config.metrics.port:
        try:
            metrics_http = metrics.serve_http(config.metrics.port, config.metrics.host)
        except OSError as exc:
            await runtime.aclose()
            raise OSError(f"cannot serve metrics on {config.metrics.host}:{config.metrics.port}: {exc}") from None
    await server.start()
    running = RunningServer(server, port, runtime, health_servicer, metrics_http=metrics_http)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await running.refresh_health()
    running._refresher = asyncio.get_running_loop().create_task(running._refresh_forever())
    log.info(
        "server started",
        listen=address,
        port=port,
        profile=config.profile,
        adapters={s: a.name for s, a in runtime.adapters.items()},
        metrics=f"http://{config.metrics.host}:{config.metrics.port}/metrics" if metrics_http else "off",
    )
    return running


def tune_for_serving() -> None:
    """Process-wide settings for a process that serves; call it once the server is up.

    What exists at start (modules, adapters, caches) is frozen out of every garbage
    collection, and the youngest generation is collected every 10,000 net new
    objects instead of CPython's default 700: a server makes a few objects per
    media event, nearly all freed by reference counting, so frequent collections
    find almost nothing (docs/benchmarks.md, "Garbage collection", has the figures).
    """
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)


async def run_until_signalled(
    config: Config,
    listen: str | None = None,
    ready: Callable[[RunningServer], object] | None = None,
    *,
    share_port: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; `ready` is called once the server accepts calls."""
    import signal

    running = await serve(config, listen, share_port=share_port)
    tune_for_serving()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(running)
    await stop.wait()
    log.info("shutting down", grace_period_s=config.server.grace_period_s)
    await running.stop()
