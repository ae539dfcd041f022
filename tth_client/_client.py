"""`Client`: the service's other calls (ListModels, CreateSession, Generate, health) and sessions on one channel."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Literal, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tth_client._channel import Connection
from tth_client._controls import Controls, check_text, turn_control
from tth_client._events import events_from_response
from tth_client._exceptions import ClosedError, TTHError, from_rpc_error
from tth_client._session import Session
from tth_client._turn import Turn
from tth_client.v1 import controls_pb2 as cpb
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

__all__ = ["Client", "HealthStatus"]

HealthStatus = Literal["SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN"]
"""A `grpc.health.v1` status; SERVICE_UNKNOWN when the server does not know the service name."""


class Client:
    """A connection to one TTH server: `async with Client(...) as client`.

    All calls share one channel, opened on first use and closed by `close()`.
    Sessions made with `client.session()` ride on the same channel and must be
    closed before the client. Unary calls raise the SDK's errors (`ConnectError`,
    `StatusError` and its subclasses, `TimeoutError` after `timeout_s`).
    """

    def __init__(
        self,
        connection: str | Connection | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout_s: float | None = 30.0,
    ) -> None:
        """Describe the connection (a target or a `Connection`); see `Session` for `channel`.

        `timeout_s` bounds each unary call (ListModels, CreateSession, health), not streams.
        """
        self._connection = Connection.of(connection)
        self._given_channel = channel
        self._channel: grpc.aio.Channel | None = channel
        self._timeout_s = timeout_s
        self._calls: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def target(self) -> str:
        return self._connection.target

    @property
    def channel(self) -> grpc.aio.Channel:
        """The client's channel, opened on first use."""
        if self._channel is None:
            self._channel = self._connection.open_channel()
        return self._channel

    async def close(self) -> None:
        """Cancel running `generate()` calls (their turns raise `ClosedError`) and close the channel."""
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.wait(self._calls)
        channel, self._channel = self._channel, None
        if channel is not None and self._given_channel is None:
            await channel.close()

    def session(
        self,
        *,
        persona: str | None = None,
        default_control: cpb.TurnControl | None = None,
        render: cpb.RenderOptions | None = None,
        session_id: str | None = None,
        open_timeout_s: float = 10.0,
        max_buffered_events: int = 10_000,
        reconnect: bool = True,
        reconnect_timeout_s: float = 30.0,
        portrait: bytes | None = None,
    ) -> Session:
        """A `Session` on this client's channel and credentials; the arguments are `Session`'s."""
        return Session(
            self._connection,
            channel=self.channel,
            persona=persona,
            default_control=default_control,
            render=render,
            session_id=session_id,
            open_timeout_s=open_timeout_s,
            max_buffered_events=max_buffered_events,
            reconnect=reconnect,
            reconnect_timeout_s=reconnect_timeout_s,
            portrait=portrait,
        )

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._connection.metadata(), timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None

    async def list_models(self) -> pb.ListModelsResponse:
        """The active adapter per stage (mode, capabilities, health), the profile and the persona ids."""
        stub = pb_grpc.ConversationServiceStub(self.channel)
        response: pb.ListModelsResponse = await self._unary(stub.ListModels, pb.ListModelsRequest())
        return response

    async def create_session(
        self,
        *,
        default_control: cpb.TurnControl | None = None,
        render: cpb.RenderOptions | None = None,
        **controls: Unpack[Controls],
    ) -> pb.CreateSessionResponse:
        """Create a session ahead of time; attach with `client.session(session_id=...)` within `attach_timeout_s`.

        `persona=` is the session's persona; the other keyword controls are folded
        into its default controls.
        """
        persona = controls.pop("persona", "")
        request = pb.CreateSessionRequest(
            persona_id=persona, default_control=turn_control(default_control, **controls), render=render
        )
        stub = pb_grpc.ConversationServiceStub(self.channel)
        response: pb.CreateSessionResponse = await self._unary(stub.CreateSession, request)
        return response

    def generate(
        self,
        text: str,
        *,
        control: cpb.TurnControl | None = None,
        render: cpb.RenderOptions | None = None,
        portrait: bytes | None = None,
        **controls: Unpack[Controls],
    ) -> Turn:
        """Run one whole turn with no session, unpaced (as fast as the server makes it).

        `persona=` picks the persona; the other keyword controls are the turn's controls.
        `portrait=` (JPEG or PNG bytes) is the turn's face, for an avatar that animates photos.

        Returns the `Turn` at once; iterate it or await it as a session's turn.
        Bad input raises as in `Session.say()`: `InvalidControlError` or
        `InvalidArgumentError` here, before sending, when the SDK can tell (a range,
        an empty text); awaiting the turn raises the same class when the server
        refuses the request (an unknown persona, a text over its limit). `turn.interrupt()` cancels the call, and the
        turn then raises `ClosedError`.
        """
        persona = controls.pop("persona", "")
        request = pb.GenerateRequest(
            text=check_text(text),
            persona_id=persona,
            control=turn_control(control, **controls),
            render=render,
            batch_media=True,
            portrait=portrait or b"",
        )
        stub = pb_grpc.ConversationServiceStub(self.channel)
        call = stub.Generate(request, metadata=self._connection.metadata())

        async def cancel(_turn: Turn, _played_ms: float | None) -> None:
            call.cancel()

        turn = Turn(text, interrupt=cancel)
        task = asyncio.get_running_loop().create_task(self._feed(call, turn), name="tth generate")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return turn

    async def _feed(self, call: Any, turn: Turn) -> None:
        error: TTHError = ClosedError("the Generate call ended before its terminal event")
        try:
            async for response in call:
                for event in events_from_response(response):  # none for an event kind newer than this SDK
                    turn._push(event)
        except grpc.RpcError as exc:
            error = (
                ClosedError("the Generate call was cancelled; its remaining events are lost")
                if exc.code() is grpc.StatusCode.CANCELLED
                else from_rpc_error(exc, self.target)
            )
        except asyncio.CancelledError:
            call.cancel()
            turn._fail(ClosedError("the client was closed before the turn ended; its remaining events are lost"))
            raise
        turn._fail(error)  # a no-op when the terminal event arrived

    async def health(self, service: str = "") -> HealthStatus:
        """The `grpc.health.v1` status of `service`: "" is the whole server; "tth.llm", "tth.tts", "tth.avatar"
        are the stages and "tth.v1.ConversationService" the service."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                metadata=self._connection.metadata(),
                timeout=self._timeout_s,
            )
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_rpc_error(exc, self.target) from None
        statuses: dict[int, HealthStatus] = {
            health_pb2.HealthCheckResponse.SERVING: "SERVING",
            health_pb2.HealthCheckResponse.NOT_SERVING: "NOT_SERVING",
            health_pb2.HealthCheckResponse.SERVICE_UNKNOWN: "SERVICE_UNKNOWN",
        }
        return statuses.get(response.status, "UNKNOWN")
