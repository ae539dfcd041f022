"""`remote_avatar`: the avatar stage served by an avatar worker over gRPC (protos/tth/v1/avatar_worker.proto).

For the self-hosted path: a GPU box runs a MuseTalk-class model behind the
`AvatarWorkerService` contract and this adapter streams each turn's audio and
controls to it, frames coming back as they are rendered. TTH's own renderers can
be served the same way (`python -m adapters.remote_avatar.worker --adapter face_avatar`).

The worker is asked what it honours (`DescribeWorker`) at start and on health
checks; an unreachable worker does not stop the server from starting: its
health says so, and the router's breaker and fallback take over.

Options:

    target: 127.0.0.1:50061   the worker's host:port
    tls: false                true: TLS with the system's roots
    token_env: (unset)        a variable holding a bearer token sent as `authorization` metadata
    describe_timeout_s: 2     how long start and health checks wait for DescribeWorker
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated

import grpc
from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import (
    Applied,
    AvatarAdapter,
    AvatarInput,
    Capabilities,
    ControlMapping,
    Downgrade,
    HealthStatus,
    Mode,
)
from adapters.controls import PUBLIC_NAMES, Controls
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.logs import log
from adapters.media import RenderSettings, VideoFrame
from adapters.options import OPTIONS, AdapterOptions, GivenOptions
from adapters.remote_avatar import wire
from tth_client.v1 import avatar_worker_pb2 as wpb
from tth_client.v1 import avatar_worker_pb2_grpc as wpb_grpc


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class RemoteAvatarOptions(AdapterOptions):
    target: str = "127.0.0.1:50061"  # the worker's HOST:PORT
    tls: bool = False
    describe_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    token_env: str = ""  # the variable holding the worker's token; empty: none
    model: str = ""  # reported until the worker has described itself; empty: the target


class RemoteAvatar(AvatarAdapter):
    """Frames from an avatar worker, streamed."""

    mode = Mode.SELF_HOST
    Options = RemoteAvatarOptions
    options: RemoteAvatarOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self.target = self.options.target
        self._tls = self.options.tls
        self._describe_timeout_s = self.options.describe_timeout_s
        token_env = self.options.token_env
        self._token: str | None = None
        if token_env:
            self._token = os.environ.get(token_env, "").strip()
            if not self._token:
                raise ConfigError(f"{name} needs the worker's token: set the environment variable {token_env}")
        self._channel: grpc.aio.Channel | None = None
        self._stub: wpb_grpc.AvatarWorkerServiceStub | None = None
        self._described: wpb.DescribeWorkerResponse | None = None

    @property
    def model(self) -> str:
        if self._described is not None:
            worker = self._described.adapter + (f"/{self._described.model}" if self._described.model else "")
            return f"{worker} @ {self.target}"
        return self.options.model or self.target

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    async def start(self) -> None:
        if self._channel is None:
            if self._tls:
                self._channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials())
            else:
                self._channel = grpc.aio.insecure_channel(self.target)
            self._stub = wpb_grpc.AvatarWorkerServiceStub(self._channel)
        try:
            await self._describe()
        except ProviderError as exc:
            log.warning("avatar worker not reachable at start", adapter=self.name, target=self.target, error=str(exc))

    async def aclose(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def _describe(self) -> wpb.DescribeWorkerResponse:
        if self._stub is None:
            raise ProviderError(ErrorCategory.CONNECTIVITY, "adapter not started", provider=self.name)
        try:
            described: wpb.DescribeWorkerResponse = await self._stub.DescribeWorker(
                wpb.DescribeWorkerRequest(), timeout=self._describe_timeout_s, metadata=self._metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        self._described = described
        return described

    async def health(self) -> HealthStatus:
        try:
            described = await self._describe()
        except ProviderError as exc:
            return HealthStatus(False, f"{exc.category.value}: {exc.args[0]}")
        return HealthStatus(True, f"worker {self.target} runs {described.adapter}")

    def capabilities(self) -> Capabilities:
        if self._described is None:
            return Capabilities(streaming=True)
        return wire.capabilities_from_proto(self._described.capabilities)

    def map_controls(self, controls: Controls) -> ControlMapping:
        """The worker maps controls itself; this reports what its renderer says it honours."""
        honoured = self.capabilities().controls
        worker = self._described.adapter if self._described is not None else "the worker"
        applied, downgraded = [], []
        for name, source in controls.sources.items():
            field = PUBLIC_NAMES[name]
            if field in honoured:
                applied.append(Applied(field, f"by {worker} at {self.target}"))
            elif source != "default" and name != "persona_id":
                downgraded.append(Downgrade(field, f"{worker} does not honour it"))
        return ControlMapping(controls, {}, tuple(applied), tuple(downgraded))

    def _error(self, exc: grpc.aio.AioRpcError) -> ProviderError:
        return self._failure(exc.code(), exc.details() or "")

    def _failure(self, code: grpc.StatusCode, detail: str) -> ProviderError:
        category = wire.STATUS_CATEGORIES.get(code, ErrorCategory.SERVER)
        detail = detail or code.name
        if self._token:
            detail = detail.replace(self._token, "***")
        return ProviderError(category, f"worker {self.target}: {code.name}: {detail}", provider=self.name)

    async def render(self, audio: AsyncIterator[AvatarInput], settings: RenderSettings) -> AsyncIterator[VideoFrame]:
        if self._stub is None:
            raise ProviderError(ErrorCategory.CONNECTIVITY, "adapter not started", provider=self.name)

        async def requests() -> AsyncIterator[wpb.RenderRequest]:
            yield wpb.RenderRequest(config=wire.config_to_proto(settings))
            async for item in audio:
                message = wpb.AvatarAudio(
                    chunk=wire.audio_to_proto(item.chunk), control=wire.controls_to_proto(item.mapping.controls)
                )
                yield wpb.RenderRequest(audio=message)

        call = self._stub.Render(requests(), metadata=self._metadata())
        try:
            async for response in call:
                if response.WhichOneof("response") == "error":
                    code = wire.STATUS_BY_NUMBER.get(response.error.code, grpc.StatusCode.UNKNOWN)
                    raise self._failure(code, response.error.message)
                try:
                    yield wire.frame_from_proto(response.frame)
                except ValueError as exc:
                    raise ProviderError(ErrorCategory.SERVER, f"malformed frame: {exc}", provider=self.name) from None
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()
