"""The avatar worker contract: `remote_avatar` calling `python -m adapters.remote_avatar.worker` over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from adapters.base import AvatarAdapter, AvatarInput
from adapters.controls import ControlPatch, Controls, EmotionLabel, resolve
from adapters.errors import ErrorCategory, ProviderError
from adapters.local.stub_avatar import StubAvatar
from adapters.local.tone_tts import ToneTTS
from adapters.media import RenderSettings, VideoFrame
from adapters.remote_avatar.adapter import RemoteAvatar
from adapters.remote_avatar.worker import build_adapter, serve_worker
from tests.conftest import ServerFactory
from tests.wire import Conversation, arms, is_terminal
from tth_client.v1 import avatar_worker_pb2 as wpb
from tth_client.v1 import avatar_worker_pb2_grpc as wpb_grpc
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc

SETTINGS = RenderSettings(25, 128, 128)
UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}
Worker = Callable[..., Any]


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    servers: list[grpc.aio.Server] = []

    async def start(adapter: str = "stub_avatar", max_concurrent: int = 8, **options: Any) -> str:
        server, port = await serve_worker(build_adapter(adapter, options), "127.0.0.1:0", max_concurrent=max_concurrent)
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


def controls(**fields: Any) -> Controls:
    return resolve([("turn", ControlPatch(**fields))])


async def speech(text: str = "Hello there, how are you today?", c: Controls | None = None) -> list[AvatarInput]:
    tts = ToneTTS("tone_tts", {})
    c = c or controls()
    mapping = tts.map_controls(c)
    return [AvatarInput(chunk, mapping) async for chunk in tts.synthesize(text, mapping)]


async def feed(items: list[AvatarInput], delay_s: float = 0.0) -> AsyncIterator[AvatarInput]:
    for item in items:
        if delay_s:
            await asyncio.sleep(delay_s)
        yield item


async def frames(avatar: AvatarAdapter, items: list[AvatarInput], delay_s: float = 0.0) -> list[VideoFrame]:
    return [f async for f in avatar.render(feed(items, delay_s), SETTINGS)]


async def test_a_remote_renderer_gives_the_same_frames_as_the_local_one(worker: Worker) -> None:
    target = await worker("stub_avatar")
    items = await speech()
    local = await frames(StubAvatar("stub_avatar", {}), items)
    async with RemoteAvatar("remote_avatar", {"target": target}) as remote:
        assert isinstance(remote, RemoteAvatar)
        got = await frames(remote, items)
        health = await remote.health()
    assert got == local and len(got) > 10
    assert health.healthy and "stub_avatar" in health.detail
    assert [f.frame_index for f in got] == list(range(len(got)))


async def test_the_worker_says_what_its_renderer_honours_and_the_report_follows(worker: Worker) -> None:
    target = await worker("face_avatar")
    async with RemoteAvatar("remote_avatar", {"target": target}) as remote:
        assert isinstance(remote, RemoteAvatar)
        assert "character.motion_gain" in remote.capabilities().controls
        assert remote.model.startswith("face_avatar @ 127.0.0.1:")
        mapping = remote.map_controls(controls(label=EmotionLabel.HAPPY, motion_gain=1.5, speech_rate=1.2))
        assert {a.field for a in mapping.applied} >= {"emotion.label", "character.motion_gain"}
        assert {d.field for d in mapping.downgraded} == {"character.speech_rate"}
        got = await frames(remote, await speech("Happy words", controls(label=EmotionLabel.HAPPY)))
    assert got and all(f.data[:2] == b"\xff\xd8" for f in got)  # JPEG


async def test_the_worker_holds_the_contract(worker: Worker) -> None:
    target = await worker("stub_avatar")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.AvatarWorkerServiceStub(channel)

        async def audio_first() -> AsyncIterator[wpb.RenderRequest]:
            yield wpb.RenderRequest(audio=wpb.AvatarAudio())

        responses: list[wpb.RenderResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for response in stub.Render(audio_first()):
                responses.append(response)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "config" in (err.value.details() or "")
        # The status is announced in-band first, for clients whose writes race the end of the call.
        assert [r.WhichOneof("response") for r in responses] == ["error"]
        assert responses[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

        async def bad_size() -> AsyncIterator[wpb.RenderRequest]:
            yield wpb.RenderRequest(config=wpb.RenderConfig(fps=25, width=63, height=64))

        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [r async for r in stub.Render(bad_size())]
        assert "config.width must be an even number in [64, 1024], got 63" in (err.value.details() or "")


async def test_a_busy_worker_says_resource_exhausted_and_a_failing_renderer_keeps_its_category(worker: Worker) -> None:
    items = await speech()
    busy = await worker("stub_avatar", max_concurrent=1)
    async with RemoteAvatar("remote_avatar", {"target": busy}) as remote:
        assert isinstance(remote, RemoteAvatar)
        slow = asyncio.create_task(frames(remote, items, delay_s=0.02))
        await asyncio.sleep(0.1)
        with pytest.raises(ProviderError) as err:
            await frames(remote, items)
        assert err.value.category is ErrorCategory.RATE_LIMIT
        assert await slow
    failing = await worker("stub_avatar", fail_after=0, fail_category="auth")
    async with RemoteAvatar("remote_avatar", {"target": failing}) as remote:
        assert isinstance(remote, RemoteAvatar)
        with pytest.raises(ProviderError) as err:
            await frames(remote, items)
        assert err.value.category is ErrorCategory.AUTH and "injected failure" in str(err.value)


async def test_an_unreachable_worker_does_not_stop_start_but_says_so() -> None:
    async with RemoteAvatar("remote_avatar", {"target": "127.0.0.1:9", "describe_timeout_s": 0.5}) as remote:
        assert isinstance(remote, RemoteAvatar)
        health = await remote.health()
        assert not health.healthy and "127.0.0.1:9" in health.detail
        with pytest.raises(ProviderError) as err:
            await frames(remote, await speech())
        assert err.value.category is ErrorCategory.CONNECTIVITY


def remote_profile(target: str, fallback: bool = True) -> dict[str, Any]:
    avatar: dict[str, Any] = {"adapter": "remote_avatar", "options": {"target": target, "describe_timeout_s": 0.5}}
    if fallback:
        avatar["fallback"] = [{"adapter": "stub_avatar"}]
    return {
        "session": UNPACED,
        "components": {"avatar": avatar},
        "router": {"budgets": {"avatar": {"first_byte_ms": 2000}}},
    }


async def test_a_session_renders_through_the_worker(worker: Worker, start_server: ServerFactory) -> None:
    target = await worker("face_avatar")
    server = await start_server(**remote_profile(target))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        conv = Conversation(stub)
        await conv.start()
        await conv.say("Hello!")
        events = await conv.until_terminal()
        models = await stub.ListModels(pb.ListModelsRequest())
    assert arms(events)[-1] == "turn_complete" and "video" in arms(events)
    avatar = next(s for s in events[-1].turn_complete.metrics.stages if s.stage == pb.STAGE_AVATAR)
    assert (avatar.adapter, avatar.fallback_used) == ("remote_avatar", False)
    listed = next(s for s in models.stages if s.stage == pb.STAGE_AVATAR)
    assert listed.mode == pb.ADAPTER_MODE_SELF_HOST and list(listed.fallbacks) == ["stub_avatar"]
    assert listed.model.startswith("face_avatar @ ")


async def test_with_the_worker_down_the_local_face_takes_over_for_the_whole_turn(start_server: ServerFactory) -> None:
    server = await start_server(**remote_profile("127.0.0.1:9"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        conv = Conversation(pb_grpc.ConversationServiceStub(channel))
        await conv.start()
        await conv.say("Hello!")
        events = await conv.until_terminal()
    assert sum(map(is_terminal, events)) == 1 and arms(events)[-1] == "turn_complete"
    video = [e.video for e in events if e.WhichOneof("event") == "video"]
    assert [v.frame_index for v in video] == list(range(len(video))) and video  # from frame 0, no gap, no repeat
    avatar = next(s for s in events[-1].turn_complete.metrics.stages if s.stage == pb.STAGE_AVATAR)
    assert (avatar.adapter, avatar.fallback_used) == ("stub_avatar", True)
