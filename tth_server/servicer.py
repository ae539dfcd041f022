"""The ConversationService servicer: unpack requests, call the runtime, pack events. Nothing else.

Reading and writing a `Converse` stream are independent: one task reads
requests into the session while the handler yields from the session's outbox,
so an interrupt is read even while media is being written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import structlog

from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server import convert
from tth_server.controls import ControlError
from tth_server.events import ErrorCode, ErrorOut, InterruptReason
from tth_server.logs import log
from tth_server.runtime import Runtime
from tth_server.session import Session

_MODES = {"local": pb.ADAPTER_MODE_LOCAL, "api": pb.ADAPTER_MODE_API, "self_host": pb.ADAPTER_MODE_SELF_HOST}


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


class ConversationServicer(pb_grpc.ConversationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseResponse]:
        requests = aiter(request_iterator)
        session = await self._open(requests, context)
        structlog.contextvars.bind_contextvars(session_id=session.id)
        log.info("session started", persona=session.persona_id)
        reader = asyncio.get_running_loop().create_task(self._read(requests, session))
        try:
            seq = 1
            yield convert.converse_response(session.started_event(), session.id, seq)
            while (event := await session.outbox.get()) is not None:
                seq += 1
                yield convert.converse_response(event, session.id, seq)
        finally:
            reader.cancel()
            await self.runtime.end_session(session)
            log.info("session ended", turns=session.turns)

    async def _open(self, requests: AsyncIterator[pb.ConverseRequest], context: grpc.aio.ServicerContext) -> Session:
        timeout = self.runtime.config.session.config_timeout_s
        try:
            first = await asyncio.wait_for(anext(requests), timeout)
        except StopAsyncIteration:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the stream ended before its first message; the first ConverseRequest must set config",
            )
        except TimeoutError:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"no config within {timeout:g} s; the first ConverseRequest must set config",
            )
        arm = first.WhichOneof("request")
        if arm != "config":
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first ConverseRequest must set config, got {arm or 'no field'}",
            )
        cfg = first.config
        try:
            if cfg.session_id:
                attached = self.runtime.attach(cfg.session_id)
                if attached is None:
                    await _abort(
                        context,
                        grpc.StatusCode.NOT_FOUND,
                        f"config.session_id {cfg.session_id!r} is not a "
                        "session waiting to be attached (unknown, expired or already attached)",
                    )
                return attached
            return self.runtime.new_session(
                cfg.persona_id,
                convert.patch_from_proto(cfg.default_control, "config.default_control"),
                convert.render_from_proto(cfg.render, "config.render"),
                "config",
            )
        except ControlError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _read(self, requests: AsyncIterator[pb.ConverseRequest], session: Session) -> None:
        try:
            async for request in requests:
                await self._handle(request, session)
            await session.drain()  # half-close: finish the running turn, then end with OK
        finally:
            session.outbox.close()

    async def _handle(self, request: pb.ConverseRequest, session: Session) -> None:
        arm = request.WhichOneof("request")
        try:
            if arm == "text":
                limit = self.runtime.config.session.max_text_chars
                text = convert.text_from_proto(request.text.text, limit, "text.text")
                await session.say(text, convert.patch_from_proto(request.text.control, "text.control"))
            elif arm == "control":
                session.update_controls(convert.patch_from_proto(request.control.control, "control.control"))
            elif arm == "interrupt":
                i = request.interrupt
                await session.interrupt(InterruptReason.CLIENT, i.played_ms if i.HasField("played_ms") else None)
            elif arm == "config":
                session.outbox.put_control(
                    ErrorOut(ErrorCode.FAILED_PRECONDITION, "config is allowed only as the first message; ignored")
                )
            else:
                session.outbox.put_control(
                    ErrorOut(
                        ErrorCode.INVALID_ARGUMENT,
                        "a ConverseRequest must set one of config, text, control or interrupt",
                    )
                )
        except ControlError as exc:
            session.outbox.put_control(ErrorOut(ErrorCode.INVALID_ARGUMENT, str(exc)))

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        try:
            session = self.runtime.create_session(
                request.persona_id,
                convert.patch_from_proto(request.default_control, "default_control"),
                convert.render_from_proto(request.render, "render"),
            )
        except ControlError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.CreateSessionResponse(
            session_id=session.id, attach_timeout_s=self.runtime.config.session.attach_timeout_s
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            limit = self.runtime.config.session.max_text_chars
            text = convert.text_from_proto(request.text, limit, "text")
            patch = convert.patch_from_proto(request.control, "control")
            render = convert.render_from_proto(request.render, "render")
            events = self.runtime.generate(text, request.persona_id, patch, render)
            first = await anext(events)
        except ControlError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        seq = 1
        yield convert.generate_response(first, seq)
        async for event in events:
            seq += 1
            yield convert.generate_response(event, seq)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
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
                    capabilities=pb.Capabilities(
                        streaming=caps.streaming,
                        controls=sorted(caps.controls),
                        emotions=sorted(convert.LABEL_TO_PROTO[e] for e in caps.emotions),
                        speech_marks=caps.speech_marks,
                    ),
                    health=pb.ADAPTER_HEALTH_SERVING if health.healthy else pb.ADAPTER_HEALTH_NOT_SERVING,
                    detail=health.detail,
                    fallbacks=[str(f.get("adapter", "")) for f in component.fallback],
                )
            )
        return pb.ListModelsResponse(
            stages=stages, profile=self.runtime.config.profile, persona_ids=self.runtime.personas.ids()
        )
