"""An avatar worker: serve any local avatar adapter over the avatar worker contract.

    python -m adapters.remote_avatar.worker --adapter face_avatar --listen 0.0.0.0:50061
    python -m adapters.remote_avatar.worker --adapter stub_avatar --options '{first_byte_ms: 50}'

A GPU model (MuseTalk-class) is served the same way once it is wrapped in an
`AvatarAdapter` and registered under `tth.adapters`. The worker renders at most
`--max-concurrent` calls at once and answers RESOURCE_EXHAUSTED beyond that, so
TTH's router can fall back instead of queueing behind a busy GPU. It also serves
gRPC health checking ("" and "tth.v1.AvatarWorkerService") and reflection.
SIGTERM stops it gracefully: new calls are refused, running ones get the grace
period to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapters.base import AvatarAdapter, AvatarInput, ControlMapping
from adapters.controls import ControlError, Controls
from adapters.errors import ConfigError, ProviderError
from adapters.logs import log
from adapters.options import parse_options
from adapters.remote_avatar import wire
from tth_client.v1 import avatar_worker_pb2 as wpb
from tth_client.v1 import avatar_worker_pb2_grpc as wpb_grpc

SERVICE_NAME = wpb.DESCRIPTOR.services_by_name["AvatarWorkerService"].full_name


class _BadRequest(Exception):
    """A request on the stream broke the contract; the call ends with INVALID_ARGUMENT."""


class AvatarWorker(wpb_grpc.AvatarWorkerServiceServicer):
    """Serves one started avatar adapter to any number of TTH servers."""

    def __init__(self, adapter: AvatarAdapter, max_concurrent: int = 8) -> None:
        self.adapter = adapter
        self._slots = asyncio.Semaphore(max_concurrent)

    async def DescribeWorker(
        self, request: wpb.DescribeWorkerRequest, context: grpc.aio.ServicerContext
    ) -> wpb.DescribeWorkerResponse:
        return wpb.DescribeWorkerResponse(
            adapter=self.adapter.name,
            model=self.adapter.model,
            capabilities=wire.capabilities_to_proto(self.adapter.capabilities()),
        )

    async def Render(
        self, request_iterator: AsyncIterator[wpb.RenderRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wpb.RenderResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "config":
            message = "the first RenderRequest must set config"
            yield _error(grpc.StatusCode.INVALID_ARGUMENT, message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            return
        try:
            settings = wire.config_from_proto(first.config)
        except ValueError as exc:
            yield _error(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        if self._slots.locked():
            busy = "every render slot is busy; retry later"
            yield _error(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
            return
        async with self._slots:
            try:
                async for frame in self.adapter.render(self._inputs(requests), settings):
                    yield wpb.RenderResponse(frame=wire.frame_to_proto(frame))
            except _BadRequest as exc:
                yield _error(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except ProviderError as exc:
                yield _error(wire.CATEGORY_STATUS[exc.category], str(exc))
                await context.abort(wire.CATEGORY_STATUS[exc.category], str(exc))

    async def _inputs(self, requests: AsyncIterator[wpb.RenderRequest]) -> AsyncIterator[AvatarInput]:
        last: tuple[Controls, ControlMapping] | None = None
        async for request in requests:
            if request.WhichOneof("request") != "audio":
                raise _BadRequest("only the first RenderRequest may set config; later ones must set audio")
            try:
                chunk = wire.audio_from_proto(request.audio.chunk)
                controls = wire.controls_from_proto(request.audio.control)
            except (ValueError, ControlError) as exc:
                raise _BadRequest(str(exc)) from None
            if last is None or last[0] != controls:
                last = (controls, self.adapter.map_controls(controls))
            yield AvatarInput(chunk, last[1])


def _error(code: grpc.StatusCode, message: str) -> wpb.RenderResponse:
    """The in-band error that precedes an error status (see the contract, step 5)."""
    return wpb.RenderResponse(error=wpb.RenderError(code=code.value[0], message=message))


async def serve_worker(adapter: AvatarAdapter, listen: str, *, max_concurrent: int = 8) -> tuple[grpc.aio.Server, int]:
    """Start `adapter` and serve it on `listen` (port 0 picks a free port); returns (server, port)."""
    await adapter.start()
    server = grpc.aio.server()
    wpb_grpc.add_AvatarWorkerServiceServicer_to_server(AvatarWorker(adapter, max_concurrent), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def build_adapter(name: str, options: Mapping[str, Any]) -> AvatarAdapter:
    """An avatar adapter by registered name, as the TTH server would build it."""
    from adapters.registry import adapter_class

    cls = adapter_class(name, "--adapter")
    if not issubclass(cls, AvatarAdapter):
        raise ConfigError(f"--adapter: {name!r} is a {cls.stage.value} adapter, not an avatar adapter")
    return cls(name, parse_options(cls.Options, options, "--options"))


async def _run(args: argparse.Namespace) -> None:
    options = yaml.safe_load(args.options) if args.options else {}
    if not isinstance(options, Mapping):
        raise ConfigError("--options must be a mapping, for example '{seed: 1}'")
    adapter = build_adapter(args.adapter, options)
    server, port = await serve_worker(adapter, args.listen, max_concurrent=args.max_concurrent)
    log.info("avatar worker started", adapter=adapter.name, listen=args.listen, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("avatar worker stopping", grace_period_s=args.grace_period_s)
    # New calls are refused at once; running renders get the grace period, then are cancelled.
    await server.stop(args.grace_period_s)
    await adapter.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.remote_avatar.worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--adapter", default="face_avatar", help="registered avatar adapter to serve (face_avatar)")
    parser.add_argument("--options", default="", help="adapter options as a YAML/JSON mapping")
    parser.add_argument("--listen", default="127.0.0.1:50061", help="HOST:PORT (127.0.0.1:50061)")
    parser.add_argument("--max-concurrent", type=int, default=8, help="renders at once before RESOURCE_EXHAUSTED (8)")
    parser.add_argument("--grace-period-s", type=float, default=5.0, help="shutdown grace for running renders (5)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"avatar worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"avatar worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
