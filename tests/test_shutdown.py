"""Graceful shutdown: NOT_SERVING first, new work refused, running turns end with their terminal event."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ServerFactory
from tests.wire import Conversation, arms
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc


async def _running_turn(start_server: ServerFactory, reply: str) -> tuple[object, Conversation, grpc.aio.Channel]:
    server = await start_server(
        session={"max_lead_ms": 100}, components={"llm": {"adapter": "scripted", "options": {"reply": reply}}}
    )
    channel = start_server.channel(server.port)
    conv = Conversation(pb_grpc.ConversationServiceStub(channel))
    await conv.start()
    await conv.say("Hello!")
    await conv.until("audio")
    return server, conv, channel


async def _rest(conv: Conversation) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            await conv.next()
    return err.value


async def test_shutdown_lets_the_running_turn_finish_and_refuses_new_work(start_server: ServerFactory) -> None:
    server, conv, channel = await _running_turn(start_server, "One, two. Three, four.")
    stopping = asyncio.ensure_future(server.stop(10.0))  # type: ignore[attr-defined]
    notice = await conv.until("notice")
    assert notice.notice.kind == pb.NOTICE_KIND_SERVER_SHUTTING_DOWN and notice.notice.ends_in_ms == 10_000
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await Conversation(pb_grpc.ConversationServiceStub(channel)).start()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    end = await _rest(conv)
    assert end.code() == grpc.StatusCode.UNAVAILABLE and "reconnect" in str(end.details())
    kinds = arms(conv.events)
    assert kinds.count("turn_complete") == 1 and "turn_interrupted" not in kinds
    await asyncio.wait_for(stopping, 10)


async def test_a_turn_still_running_when_the_grace_ends_is_interrupted(start_server: ServerFactory) -> None:
    server, conv, _ = await _running_turn(start_server, "Word " * 200)
    stopping = asyncio.ensure_future(server.stop(0.3))  # type: ignore[attr-defined]
    end = await _rest(conv)
    assert end.code() == grpc.StatusCode.UNAVAILABLE
    last_terminal = [e for e in conv.events if e.WhichOneof("event") == "turn_interrupted"]
    assert len(last_terminal) == 1 and last_terminal[0].turn_interrupted.reason == pb.INTERRUPT_REASON_SHUTDOWN
    await asyncio.wait_for(stopping, 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_stops_the_server_process_cleanly() -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tth_server.cli",
        "--profile",
        "mock",
        "--listen",
        f"127.0.0.1:{port}",
        env={**os.environ, "TTH_SERVER__GRACE_PERIOD_S": "2"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        assert (await pb_grpc.ConversationServiceStub(channel).ListModels(pb.ListModelsRequest())).profile == "mock"
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"shutting down" in stderr


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_to_the_process_group_stops_quietly_and_replaces_nothing(workers: str) -> None:
    """As `timeout 20 tth-server` or a terminal's Ctrl-C does: every process in the group gets the signal,
    the espeak-ng workers (profile local) and `--workers` processes included."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tth_server.cli", "--profile", "local", "--listen", f"127.0.0.1:{port}"),
        *("--workers", workers),
        env={**os.environ, "TTH_SERVER__GRACE_PERIOD_S": "2"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, which the test then signals whole
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service="")
        await health_pb2_grpc.HealthStub(channel).Check(request, timeout=60, wait_for_ready=True)
    await asyncio.sleep(0.5)  # every worker serving, not only the one that answered
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    log = stderr.decode(errors="replace")
    stopping = log[log.index('"shutting down"') :]
    assert proc.returncode == 0, log[-3000:]
    # Only the lines saying it stops: no warning, no error, no traceback (processes' lines may interleave).
    for noise in ('"level": "warning"', '"level": "error"', "Traceback", "Error"):
        assert noise not in stopping, stopping[-3000:]
    assert "replacement" not in log and "starting another" not in log, log[-3000:]
