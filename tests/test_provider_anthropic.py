"""`anthropic` against a fake Messages API streaming named SSE events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.anthropic.llm import AnthropicLLM
from adapters.base import LLMRequest, Message
from adapters.errors import ConfigError, ErrorCategory, ProviderError
from tests.fakes.anthropic import KEY, FakeAnthropic
from tests.fakes.http import Faults

REQUEST = LLMRequest("You are Sam.", "Tell me something", (Message("user", "Hi"), Message("assistant", "Hello!")))


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = await FakeAnthropic(split=5).start()
    yield server
    await server.aclose()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


async def run(fake: FakeAnthropic, request: LLMRequest = REQUEST) -> tuple[list[str], ProviderError | None]:
    got: list[str] = []
    async with AnthropicLLM("anthropic", {"base_url": fake.url}) as llm:
        assert isinstance(llm, AnthropicLLM)
        try:
            async for piece in llm.stream(request):
                got.append(piece)
        except ProviderError as exc:
            return got, exc
    return got, None


async def test_text_deltas_stream_through_pings_and_the_request_is_well_formed(fake: FakeAnthropic) -> None:
    got, error = await run(fake)
    assert error is None and "".join(got) == fake.reply
    body = fake.bodies[-1]
    assert body["system"] == "You are Sam." and body["max_tokens"] == 1024 and body["stream"] is True
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert fake.server is not None
    headers = fake.server.requests[-1].headers
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"


async def test_history_that_does_not_alternate_is_made_to(fake: FakeAnthropic) -> None:
    odd = LLMRequest("s", "again", (Message("assistant", "orphan"), Message("user", "one"), Message("user", "two")))
    got, error = await run(fake, odd)
    assert error is None and "".join(got) == fake.reply
    assert [m["role"] for m in fake.bodies[-1]["messages"]] == ["user"]
    assert fake.bodies[-1]["messages"][0]["content"] == "one\n\ntwo\n\nagain"


@pytest.mark.parametrize(
    ("faults", "category", "retryable", "retry_after"),
    [
        (Faults(status=429, retry_after="3"), ErrorCategory.RATE_LIMIT, True, 3.0),
        (Faults(status=500), ErrorCategory.SERVER, True, None),
        (Faults(status=529), ErrorCategory.SERVER, True, None),
    ],
)
async def test_error_statuses(
    fake: FakeAnthropic, faults: Faults, category: ErrorCategory, retryable: bool, retry_after: float | None
) -> None:
    fake.faults = faults
    got, error = await run(fake)
    assert error is not None and got == []
    assert (error.category, error.retryable, error.retry_after_s) == (category, retryable, retry_after)


async def test_a_wrong_key_is_auth(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    got, error = await run(fake)
    assert error is not None and error.category is ErrorCategory.AUTH and not error.retryable and got == []
    assert "authentication_error" in str(error) and "sk-ant-wrong" not in str(error)


async def test_an_overloaded_error_event_after_200_is_a_retryable_server_error(fake: FakeAnthropic) -> None:
    fake.faults = Faults(error_event_after=5)
    got, error = await run(fake)
    assert error is not None and error.category is ErrorCategory.SERVER and error.retryable
    assert "overloaded_error" in str(error) and "".join(got) == "Hi! I "


async def test_dropped_and_malformed_streams(fake: FakeAnthropic) -> None:
    fake.faults = Faults(drop_after=6)
    got, error = await run(fake)
    assert error is not None and error.category is ErrorCategory.CONNECTIVITY and len(got) == 3
    fake.faults = Faults(malformed_after=4)
    got, error = await run(fake)
    assert error is not None and error.category is ErrorCategory.SERVER and "malformed" in str(error)


async def test_the_key_is_required_and_named() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ANTHROPIC_API_KEY")
        with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
            AnthropicLLM("anthropic", {})
