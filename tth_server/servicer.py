"""The ConversationService servicer: unpack requests, call the runtime, pack events. Nothing else.

A refusal (a `ServerError`, or an adapter's `ControlError`) reaches the wire in
one place, `_refusals`: on an open stream it is an in-stream error and the
session goes on; otherwise it ends the call with its gRPC status and, when it
says when to retry, a `retry-after-ms` trailer.

Reading and writing a `Converse` stream are independent: one task reads
requests into the session while the handler yields from the session's outbox,
so an interrupt is read even while media is being written.

A stream that drops (the client cancelled or the connection broke) detaches
from its session instead of ending it; a half-close still ends it. A stream
that resumes the session gets the events its client missed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import structlog

from adapters.controls import ControlError
from adapters.logs import log
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server import convert
from tth_server.auth import ANONYMOUS
from tth_server.convert import Malformed
from tth_server.errors import InvalidArgument, ServerError, bounded, refusal
from tth_server.events import ErrorCode, InterruptReason, MediaBatch
from tth_server.runtime import Runtime
from tth_server.session import Session
from tth_server.stream import Attachment

_SHUTTING_DOWN = "the server is shutting down; connect to another replica"
_MODES = {"local": pb.ADAPTER_MODE_LOCAL, "api": pb.ADAPTER_MODE_API, "self_host": pb.ADAPTER_MODE_SELF_HOST}
_CANCEL_GRACE_S = 0.1  # how long a half-close waits to be sure it is not a cancelled call (~3 loop turns)
_TAKEN_OVER = "another stream resumed this session (config.resume_after_seq); this stream no longer has it"


@dataclass(slots=True)
class _Refused:
    """What a refusal on an open stream answers: the request_id it echoes."""

    request_id: str = ""


async def _send(
    error: ServerError, context: grpc.aio.ServicerContext, stream: Session | None = None, request_id: str = ""
) -> None:
    """`error` on the wire: an in-stream error on the open `stream` (the session goes on), else the end of the
    call with its status and, when it says when to retry, a `retry-after-ms` trailer (then it raises)."""
    if stream is not None:
        stream.outbox.put_control(error.event(request_id))
        return
    if error.retry_after_s:
        context.set_trailing_metadata((("retry-after-ms", str(error.retry_after_ms)),))
    await context.abort(error.status, bounded(str(error)))  # a status travels in trailing metadata (16 KiB at most)
    raise AssertionError("unreachable: abort raises")


@contextlib.asynccontextmanager
async def _refusals(context: grpc.aio.ServicerContext, stream: Session | None = None) -> AsyncIterator[_Refused]:
    """Where refusals meet the wire: a ServerError or ControlError raised inside goes out by `_send`."""
    refused = _Refused()
    try:
        yield refused
    except (ServerError, ControlError) as exc:
        await _send(refusal(exc), context, stream, refused.request_id)


class ConversationServicer(pb_grpc.ConversationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseResponse]:
        async with _refusals(context):
            key = await self._admit(context)
            requests = aiter(request_iterator)
            session, attachment = await self._open(requests, key)
            structlog.contextvars.bind_contextvars(session_id=session.id, key_id=key)
            log.info("session started" if attachment.started_seq else "stream attached", persona=session.persona_id)
            loop = asyncio.get_running_loop()
            call_done = asyncio.Event()
            context.add_done_callback(lambda _: call_done.set())
            reader = loop.create_task(self._read(requests, session, key, attachment, call_done, context))
            over = False
            try:
                yield self._started(session, attachment)
                while (item := await session.next_event(attachment)) is not None:
                    seq, event = item
                    yield convert.converse_response(event, session.id, seq, session.request_id_of(event))
                over = not attachment.replaced  # the session closed and everything was sent
            finally:
                reader.cancel()
                if over:
                    await self.runtime.sessions.end(session)
                    log.info("session ended", turns=session.turns)
                else:  # dropped or taken over: the session lives on, waiting for a resume
                    self.runtime.sessions.detach(session, attachment)
            if attachment.replaced:
                raise ServerError(ErrorCode.FAILED_PRECONDITION, _TAKEN_OVER, status=grpc.StatusCode.ABORTED)
            if session.ended is not None:
                raise ServerError(session.ended.code, session.ended.message)

    async def _admit(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's key id (shutdown and limits are checked once the config is read)."""
        return self.runtime.keys.identify(context.invocation_metadata()) or ANONYMOUS

    @staticmethod
    def _started(session: Session, attachment: Attachment) -> pb.ConverseResponse:
        response = convert.converse_response(session.started_event(), session.id, attachment.started_seq)
        if attachment.resumed is not None:
            r = attachment.resumed
            response.started.resumed.CopyFrom(
                pb.SessionResumed(lossless=r.lossless, last_seq=r.last_seq, detail=r.detail)
            )
        return response

    def _refuse_if_draining(self) -> None:
        if self.runtime.draining:
            raise ServerError(ErrorCode.UNAVAILABLE, _SHUTTING_DOWN)

    async def _open(self, requests: AsyncIterator[pb.ConverseRequest], key: str) -> tuple[Session, Attachment]:
        timeout = self.runtime.config.session.config_timeout_s
        try:
            first = await asyncio.wait_for(anext(requests), timeout)
        except StopAsyncIteration:
            raise InvalidArgument(
                "the stream ended before its first message; the first ConverseRequest must set config"
            ) from None
        except TimeoutError:
            raise InvalidArgument(
                f"no config within {timeout:g} s; the first ConverseRequest must set config"
            ) from None
        # Refusals come after the first message is read: a client still writing its config when the
        # call ends would otherwise see its own transport error instead of this status.
        self._refuse_if_draining()
        if isinstance(first, Malformed):
            raise first.refused("the first ConverseRequest")
        arm = first.WhichOneof("request")
        if arm != "config":
            raise InvalidArgument(f"the first ConverseRequest must set config, got {arm or 'no field'}")
        cfg = first.config
        after = cfg.resume_after_seq if cfg.HasField("resume_after_seq") else None
        if cfg.session_id:
            session, attachment = await self.runtime.sessions.attach(cfg.session_id, key, after)
        elif after is not None:
            raise InvalidArgument("config.resume_after_seq needs config.session_id")
        else:
            defaults = convert.patch_from_proto(cfg.default_control, "config.default_control")
            render = convert.render_from_proto(cfg.render, "config.render")
            portrait = await self.runtime.prepare_portrait(cfg.portrait, "config.portrait") if cfg.portrait else ""
            session = self.runtime.new_session(cfg.persona_id, defaults, render, "config", key, portrait)
            attachment = await self.runtime.sessions.open(session)
        attachment.batch_media = cfg.batch_media
        return session, attachment

    async def _read(
        self,
        requests: AsyncIterator[pb.ConverseRequest],
        session: Session,
        key: str,
        attachment: Attachment,
        call_done: asyncio.Event,
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            async for request in requests:
                session.last_request = time.monotonic()
                await self._handle(request, session, key, context)
                if session.outbox.overflowed:  # the client stopped reading: stop reading it too, and end
                    await self._end_unread(session, context)
                    return
                await asyncio.sleep(0)  # a turn just started runs before this task asks gRPC for the next request
        except Exception as exc:  # the call broke; gRPC ends it, and the session waits for a resume
            log.info("reading the stream failed", error=f"{type(exc).__name__}: {exc}")
            return
        await session.drain()  # half-close: finish the running turn, then end with OK ...
        # ... unless the call was cancelled: gRPC ends the requests the same way then, and reports the
        # cancellation a few loop turns later. A dropped stream must leave its session waiting for a resume.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call_done.wait(), _CANCEL_GRACE_S)
        if not call_done.is_set() and attachment.active:
            session.outbox.close()

    @staticmethod
    async def _end_unread(session: Session, context: grpc.aio.ServicerContext) -> None:
        """End a session whose client left `session.max_unread_events` events unread, with RESOURCE_EXHAUSTED."""
        error = ServerError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"the client left {session.outbox.max_unread} events unread (in-stream errors, notices and turn ends; "
            "the limit is session.max_unread_events); the session ends: read the responses of a stream",
        )
        await session.end(error.code, str(error))
        # The handler may be stuck in a write the client never takes (flow control): end the call from here, so
        # its place and buffers are freed now, not when the client goes away.
        with contextlib.suppress(grpc.aio.AbortError, grpc.aio.UsageError):
            await _send(error, context)

    async def _handle(
        self, request: pb.ConverseRequest | Malformed, session: Session, key: str, context: grpc.aio.ServicerContext
    ) -> None:
        async with _refusals(context, session) as refused:  # the stream is open: refusals go in it
            if isinstance(request, Malformed):
                raise request.refused("a ConverseRequest", "; ignored")
            arm = request.WhichOneof("request")
            if arm in ("text", "control", "interrupt"):
                arm_message: pb.UserText | pb.ControlUpdate | pb.Interrupt = getattr(request, arm)
                refused.request_id = convert.request_id_from_proto(arm_message.request_id, f"{arm}.request_id")
            request_id = refused.request_id
            with structlog.contextvars.bound_contextvars(**({"request_id": request_id} if request_id else {})):
                await self._dispatch(request, arm, session, key, request_id)

    async def _dispatch(
        self, request: pb.ConverseRequest, arm: str | None, session: Session, key: str, request_id: str
    ) -> None:
        if arm == "text" and self.runtime.draining:
            raise ServerError(
                ErrorCode.UNAVAILABLE,
                "the server is shutting down; no new turns here: reconnect to another replica",
                retryable=True,
            )
        elif arm == "text":
            self.runtime.limits.admit_turn(key)
            limit = self.runtime.config.session.max_text_chars
            text = convert.text_from_proto(request.text.text, limit, "text.text")
            patch = convert.patch_from_proto(request.text.control, "text.control")
            await session.say(text, patch, request_id)
        elif arm == "control":
            await session.update_controls(convert.patch_from_proto(request.control.control, "control.control"))
        elif arm == "interrupt":
            i = request.interrupt
            await session.interrupt(InterruptReason.CLIENT, i.played_ms if i.HasField("played_ms") else None)
        elif arm == "config":
            raise ServerError(ErrorCode.FAILED_PRECONDITION, "config is allowed only as the first message; ignored")
        else:
            raise InvalidArgument("a ConverseRequest must set one of config, text, control or interrupt")

    async def CreateSession(
        self, request: pb.CreateSessionRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        async with _refusals(context):
            if isinstance(request, Malformed):
                raise request.refused("the CreateSessionRequest")
            self._refuse_if_draining()
            key = self.runtime.keys.identify(context.invocation_metadata()) or ANONYMOUS
            session = await self.runtime.create_session(
                request.persona_id,
                convert.patch_from_proto(request.default_control, "default_control"),
                convert.render_from_proto(request.render, "render"),
                key,
            )
        return pb.CreateSessionResponse(
            session_id=session.id, attach_timeout_s=self.runtime.config.session.attach_timeout_s
        )

    async def Generate(
        self, request: pb.GenerateRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        async with _refusals(context):
            if isinstance(request, Malformed):
                raise request.refused("the GenerateRequest")
            self._refuse_if_draining()
            key = await self._admit(context)
            limits = self.runtime.limits
            limit = self.runtime.config.session.max_text_chars
            text = convert.text_from_proto(request.text, limit, "text")
            patch = convert.patch_from_proto(request.control, "control")
            render = convert.render_from_proto(request.render, "render")
            portrait = await self.runtime.prepare_portrait(request.portrait, "portrait") if request.portrait else ""
            limits.open_generate(key)  # a session's place while it runs, and a turn of the key's budget
            try:
                events = self.runtime.generate(text, request.persona_id, patch, render, request.batch_media, portrait)
                first = await anext(events)  # the persona is checked here
                seq = 1
                yield convert.generate_response(first, seq)
                async for event in events:
                    seq += len(event.audio) + len(event.video) if isinstance(event, MediaBatch) else 1  # n items
                    yield convert.generate_response(event, seq)
            finally:
                limits.close_session(key)

    async def ListModels(
        self, request: pb.ListModelsRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        if isinstance(request, Malformed):
            await _send(request.refused("the ListModelsRequest"), context)
        stages = []
        for stage, adapter in self.runtime.adapters.items():
            caps = adapter.capabilities()
            health = await adapter.health()
            component = self.runtime.config.components[stage]
            stages.append(
                pb.StageModel(
                    stage=convert.STAGE_TO_PROTO[adapter.stage],
                    adapter=adapter.name,
                    mode=_MODES[adapter.mode.value],
                    model=adapter.model,
                    capabilities=convert.capabilities_to_proto(caps),
                    health=pb.ADAPTER_HEALTH_SERVING if health.healthy else pb.ADAPTER_HEALTH_NOT_SERVING,
                    detail=health.detail,
                    fallbacks=[f.adapter for f in component.fallback],
                )
            )
        return pb.ListModelsResponse(
            stages=stages, profile=self.runtime.config.profile, persona_ids=self.runtime.personas.ids()
        )
