"""`openai_chat` against a fake Chat Completions server speaking real SSE over chunked HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.base import LLMRequest, Message, Mode
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.openai.chat import OpenAIChat
from tests.fakes.http import Faults
from tests.fakes.openai import KEY, FakeOpenAI

REQUEST = LLMRequest("You are Alex.", "Hi there", (Message("user", "Earlier"), Message("assistant", "Reply")))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI(split=7).start()
    yield server
    await server.aclose()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


async def reply(fake: FakeOpenAI, **options: object) -> list[str]:
    async with OpenAIChat("openai_chat", {"base_url": fake.url, **options}) as llm:
        assert isinstance(llm, OpenAIChat)
        return [piece async for piece in llm.stream(REQUEST)]


async def failure(fake: FakeOpenAI, **options: object) -> tuple[ProviderError, list[str]]:
    got: list[str] = []
    async with OpenAIChat("openai_chat", {"base_url": fake.url, **options}) as llm:
        assert isinstance(llm, OpenAIChat)
        with pytest.raises(ProviderError) as err:
            async for piece in llm.stream(REQUEST):
                got.append(piece)
    return err.value, got


async def test_streams_the_reply_through_comments_split_reads_and_the_usage_chunk(fake: FakeOpenAI) -> None:
    pieces = await reply(fake)
    assert "".join(pieces) == fake.reply
    assert len(pieces) == len(fake.reply.split(" "))
    body = fake.chat_bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are Alex." and body["messages"][-1]["content"] == "Hi there"
    assert fake.server is not None and fake.server.requests[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_crlf_line_ends_and_no_usage_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await FakeOpenAI(crlf=True, split=1).start()
    try:
        assert "".join(await reply(fake, include_usage=False)) == fake.reply
        assert "stream_options" not in fake.chat_bodies[-1]
    finally:
        await fake.aclose()


async def test_options_pass_through_and_extra_body_merges(fake: FakeOpenAI) -> None:
    await reply(
        fake,
        model="Qwen/Qwen3-8B",
        temperature=0.2,
        max_tokens=50,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    body = fake.chat_bodies[-1]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("Qwen/Qwen3-8B", 0.2, 50)
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


async def test_a_wrong_key_is_auth_not_retryable_and_never_echoed(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-that-must-not-leak")
    error, got = await failure(fake)
    assert error.category is ErrorCategory.AUTH and not error.retryable and error.status == 401
    assert "sk-wrong-key-that-must-not-leak" not in str(error) and "***" in str(error)
    assert got == []


@pytest.mark.parametrize(
    ("faults", "category", "retryable", "retry_after"),
    [
        (Faults(status=429, retry_after="1.5"), ErrorCategory.RATE_LIMIT, True, 1.5),
        (Faults(status=500), ErrorCategory.SERVER, True, None),
        (Faults(status=400), ErrorCategory.INVALID_REQUEST, False, None),
    ],
)
async def test_error_statuses_are_classified(
    fake: FakeOpenAI, faults: Faults, category: ErrorCategory, retryable: bool, retry_after: float | None
) -> None:
    fake.chat_faults = faults
    error, got = await failure(fake)
    assert (error.category, error.retryable, error.retry_after_s) == (category, retryable, retry_after)
    assert got == []


async def test_a_connection_dropped_mid_stream_is_a_connectivity_error_after_what_was_sent(fake: FakeOpenAI) -> None:
    fake.chat_faults = Faults(drop_after=4)
    error, got = await failure(fake)
    assert error.category is ErrorCategory.CONNECTIVITY and error.retryable
    assert "".join(got) == "Hello there! It "


async def test_a_stream_without_done_is_not_a_short_reply(fake: FakeOpenAI) -> None:
    fake.chat_faults = Faults(drop_after=3, times=1)
    fake.reply = "one two three four five"
    # The drop comes after three events: the role chunk and two words, before finish_reason.
    error, got = await failure(fake)
    assert error.category is ErrorCategory.CONNECTIVITY and "".join(got) == "one two "


async def test_a_malformed_event_and_an_error_event_are_server_errors(fake: FakeOpenAI) -> None:
    fake.chat_faults = Faults(malformed_after=2)
    error, got = await failure(fake)
    assert error.category is ErrorCategory.SERVER and "malformed" in str(error) and len(got) == 1
    fake.chat_faults = Faults(error_event_after=2)
    error, got = await failure(fake)
    assert error.category is ErrorCategory.SERVER and "server had an error" in str(error)


async def test_the_key_and_base_url_come_from_the_environment(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
    async with OpenAIChat("openai_chat", {}) as llm:
        assert isinstance(llm, OpenAIChat)
        assert "".join([p async for p in llm.stream(REQUEST)]) == fake.reply
        assert llm.mode is Mode.SELF_HOST  # not api.openai.com: a server the user runs
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIChat("openai_chat", {}).mode is Mode.API
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIChat("openai_chat", {})


async def test_a_self_hosted_server_without_auth_gets_no_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    fake = await FakeOpenAI(key="").start()
    try:
        # The fake wants "Bearer " + "" for an empty key; no header at all must be sent, so it answers 401.
        error, _ = await failure(fake, api_key_required=False)
        assert error.category is ErrorCategory.AUTH
        assert fake.server is not None and "authorization" not in fake.server.requests[-1].headers
    finally:
        await fake.aclose()
