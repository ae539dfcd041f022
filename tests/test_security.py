"""Who gets in: API keys, TLS and mutual TLS; how much they get: session and turn limits."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certs import make_certs
from tests.conftest import ServerFactory
from tests.wire import Conversation
from tth_client.v1 import conversation_pb2 as pb
from tth_client.v1 import conversation_pb2_grpc as pb_grpc
from tth_server.auth import KeyStore, key_id
from tth_server.server import RunningServer

UNPACED = {"max_lead_ms": 1_000_000, "outbox_capacity": 100_000}


class _Servers:
    """`mock` servers with unpaced media, started with the environment given, and stubs to them."""

    def __init__(self, start_server: ServerFactory) -> None:
        self._start_server = start_server

    async def __call__(self, env: dict[str, str] | None = None, **overrides: object) -> RunningServer:
        return await self._start_server(env=env, **{"session": UNPACED, **overrides})

    def stub(self, port: int) -> pb_grpc.ConversationServiceStub:
        return pb_grpc.ConversationServiceStub(self._start_server.channel(port))


@pytest.fixture
def servers(start_server: ServerFactory) -> _Servers:
    return _Servers(start_server)


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_keys_are_compared_whole_and_known_by_a_hash() -> None:
    store = KeyStore(["alpha", "beta"])
    assert store.identify((("authorization", "Bearer beta"),)) == key_id("beta")
    assert store.identify((("authorization", "Bearer bet"),)) is None
    assert store.identify((("authorization", "Basic beta"),)) is None
    assert store.identify(()) is None
    assert "beta" not in key_id("beta")
    assert KeyStore([]).identify(()) == "anonymous"


async def test_calls_without_a_valid_key_are_unauthenticated(servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers(env={"TTH_API_KEYS": "k-one, k-two"})
    stub = servers.stub(server.port)
    for key, expected in ((None, "missing API key"), ("nope", "invalid API key"), ("k-on", "invalid API key")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListModels(pb.ListModelsRequest(), metadata=_bearer(key) if key else None)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and expected in str(err.value.details())
        # The refusal comes before any request is read: wait for it without writing (a write racing the
        # refusal makes grpc's Python client report its own INTERNAL instead of the server's status).
        call = stub.Converse(metadata=_bearer(key) if key else None)
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await stub.ListModels(pb.ListModelsRequest(), metadata=_bearer("k-one"))).profile == "mock"
    conv = Conversation(stub, "k-two")
    assert (await conv.start()).WhichOneof("event") == "started"
    await conv.say("Hello!")
    assert (await conv.until_terminal())[-1].WhichOneof("event") == "turn_complete"


async def test_health_is_open_by_default_and_can_require_a_key(servers) -> None:  # type: ignore[no-untyped-def]
    for open_health, expected in ((True, health_pb2.HealthCheckResponse.SERVING), (False, None)):
        server = await servers(env={"TTH_API_KEYS": "k"}, auth={"open_health": open_health})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            if expected is None:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await check
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            else:
                assert (await check).status == expected


async def test_tls_and_mutual_tls_from_certificate_paths(servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path)
    tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    server = await servers(tls=tls)
    trust = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", trust) as channel:
        models = await pb_grpc.ConversationServiceStub(channel).ListModels(pb.ListModelsRequest())
        assert models.profile == "mock"
    with pytest.raises(grpc.aio.AioRpcError):  # plaintext to a TLS port fails
        await servers.stub(server.port).ListModels(pb.ListModelsRequest(), timeout=3)

    mutual = await servers(tls={**tls, "client_ca_file": str(certs.ca)})
    async with grpc.aio.secure_channel(f"127.0.0.1:{mutual.port}", trust) as channel:
        with pytest.raises(grpc.aio.AioRpcError):  # no client certificate
            await pb_grpc.ConversationServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=3)
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client_key.read_bytes(),
        certificate_chain=certs.client_cert.read_bytes(),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{mutual.port}", with_cert) as channel:
        assert (await pb_grpc.ConversationServiceStub(channel).ListModels(pb.ListModelsRequest())).profile == "mock"


async def test_sessions_beyond_the_limit_are_refused_with_when_to_retry(servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers(env={"TTH_API_KEYS": "a,b"}, limits={"max_sessions": 3, "max_sessions_per_key": 1})
    stub = servers.stub(server.port)
    first = Conversation(stub, "a")
    await first.start()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await Conversation(stub, "a").start()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_sessions_per_key" in str(err.value.details())
    assert dict(err.value.trailing_metadata() or ())["retry-after-ms"] == "5000"
    other = Conversation(stub, "b")
    assert (await other.start()).WhichOneof("event") == "started"  # another key still gets in
    await first.finish()
    again = Conversation(stub, "a")
    assert (await again.start()).WhichOneof("event") == "started"  # a closed session frees its slot


async def test_turns_beyond_the_per_minute_limit_get_an_in_stream_error(servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers(limits={"turns_per_minute_per_key": 2})
    conv = Conversation(servers.stub(server.port))
    await conv.start()
    for _ in range(2):
        await conv.say("Hi!")
        assert (await conv.until_terminal())[-1].WhichOneof("event") == "turn_complete"
    await conv.say("Hi!")
    refused = await conv.next()
    assert refused.WhichOneof("event") == "error" and refused.turn_id == ""
    assert refused.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED and refused.error.retryable
    assert 0 < refused.error.retry_after_ms <= 60_000
    assert "limits.turns_per_minute_per_key" in refused.error.message


async def test_generate_counts_against_the_turn_budget_and_holds_a_session_place_while_it_runs(servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers(env={"TTH_API_KEYS": "a"}, limits={"max_sessions_per_key": 1, "turns_per_minute_per_key": 3})
    stub = servers.stub(server.port)
    a = (("authorization", "Bearer a"),)
    conv = Conversation(stub, "a")
    await conv.start()  # the key's one place is taken: a Generate waits for none, it is refused
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [r async for r in stub.Generate(pb.GenerateRequest(text="Hi!"), metadata=a)]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_sessions_per_key" in str(err.value.details())
    await conv.finish()
    with pytest.raises(grpc.aio.AioRpcError) as err:  # refused at its start, it gives its place back too
        [r async for r in stub.Generate(pb.GenerateRequest(text="Hi!", persona_id="nobody"), metadata=a)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "persona_id" in str(err.value.details())
    for _ in range(2):  # a finished Generate gives its place back; its turns count (with the refused one: 3)
        responses = [r async for r in stub.Generate(pb.GenerateRequest(text="Hi!"), metadata=a)]
        assert responses[-1].WhichOneof("event") == "turn_complete"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [r async for r in stub.Generate(pb.GenerateRequest(text="Hi!"), metadata=a)]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.turns_per_minute_per_key" in str(err.value.details())
    assert 0 < int(dict(err.value.trailing_metadata() or ())["retry-after-ms"]) <= 60_001


async def test_an_idle_session_gets_a_notice_then_ends(servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers(limits={"session_idle_s": 0.6, "end_notice_s": 0.4})
    conv = Conversation(servers.stub(server.port))
    await conv.start()
    notice = await conv.next()
    assert notice.WhichOneof("event") == "notice" and notice.notice.kind == pb.NOTICE_KIND_SESSION_ENDING
    assert 0 < notice.notice.ends_in_ms <= 400 and "limits.session_idle_s" in notice.notice.message
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await conv.next()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "idle limit" in str(err.value.details())


async def test_a_session_at_its_maximum_length_is_warned_ahead_and_ended(servers) -> None:  # type: ignore[no-untyped-def]
    server = await servers(limits={"session_max_s": 0.8, "end_notice_s": 0.5, "session_idle_s": 0})
    conv = Conversation(servers.stub(server.port))
    await conv.start()
    await conv.say("Hello!")
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            events.append(await conv.next())
    kinds = [e.WhichOneof("event") for e in events]
    assert "turn_complete" in kinds and "notice" in kinds
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum length" in str(err.value.details())
