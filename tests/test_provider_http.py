"""The HTTP plumbing every HTTP provider adapter shares: SSE, PCM, error classification, keys."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.openai._http import (
    PcmChunker,
    ProviderOptions,
    api_key,
    base_url,
    error_from_payload,
    error_from_status,
    retry_after_s,
    sse_events,
)

STREAM = (
    ": keep-alive\r\n\r\n"
    'event: content_block_delta\r\ndata: {"text": "h\u00e9llo \u2603 \U0001f600"}\r\n\r\n'
    "data: line one\ndata: line two\n\n"
    "data:no space\r\r"
    "id: 7\nevent: ping\ndata: {}\n\n"
    "data: [DONE]\n\n"
).encode()
EXPECTED = [
    ("content_block_delta", '{"text": "h\u00e9llo \u2603 \U0001f600"}', ""),
    ("message", "line one\nline two", ""),
    ("message", "no space", ""),
    ("ping", "{}", "7"),
    ("message", "[DONE]", "7"),
]


class Pieces(httpx.AsyncByteStream):
    """A response body that arrives in the given pieces, as network reads would."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def read_events(pieces: list[bytes], content_type: str = "text/event-stream") -> list[tuple[str, str, str]]:
    response = httpx.Response(200, headers={"content-type": content_type}, stream=Pieces(pieces))

    async def read() -> list[tuple[str, str, str]]:
        return [(e.event, e.data, e.id) async for e in sse_events(response, "test")]

    return asyncio.run(read())


def parse_in_pieces(data: bytes, sizes: list[int]) -> list[tuple[str, str, str]]:
    pieces, i = [], 0
    for size in sizes:
        pieces.append(data[i : i + size])
        i += size
    return read_events([*pieces, data[i:]])


def test_sse_events_survive_any_split_including_inside_utf8_and_crlf() -> None:
    assert parse_in_pieces(STREAM, []) == EXPECTED
    assert parse_in_pieces(STREAM, [1] * len(STREAM)) == EXPECTED
    rng = random.Random(5)
    for _ in range(50):
        sizes = [rng.randint(1, 9) for _ in range(len(STREAM) // 3)]
        assert parse_in_pieces(STREAM, sizes) == EXPECTED


def test_sse_comments_dispatch_nothing_and_an_unterminated_event_is_dropped() -> None:
    assert read_events([b": ping\n\n: another\n\n"]) == []
    assert read_events([b"data: partial", b"\n"]) == []  # a data line, but no blank line before the end


def test_a_response_that_is_not_an_event_stream_is_malformed() -> None:
    with pytest.raises(ProviderError, match="malformed"):
        read_events([b"data: {}\n\n"], content_type="application/json")


def test_pcm_chunks_hold_whole_samples_whatever_the_network_reads() -> None:
    pcm = bytes(range(256)) * 40  # 10240 bytes = 5120 samples
    chunker, chunks = PcmChunker(24000, chunk_ms=10), []
    i = 0
    for size in [1, 3, 4801, 7, 2, 999, 4427]:
        chunks += chunker.feed(pcm[i : i + size])
        i += size
    chunks += chunker.feed(pcm[i:]) + chunker.flush()
    assert all(len(c.pcm) % 2 == 0 for c in chunks)
    assert b"".join(c.pcm for c in chunks) == pcm
    assert [c.timestamp_ms for c in chunks] == pytest.approx([10.0 * k for k in range(len(chunks))])


def test_a_dangling_odd_byte_at_the_very_end_is_dropped() -> None:
    chunker = PcmChunker(24000)
    assert chunker.feed(b"\x01\x02\x03") == []
    assert [c.pcm for c in chunker.flush()] == [b"\x01\x02"]


@pytest.mark.parametrize(
    ("status", "body", "category", "retryable"),
    [
        (
            401,
            b'{"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}',
            ErrorCategory.AUTH,
            False,
        ),
        (403, b'{"type": "error", "error": {"type": "permission_error", "message": "no"}}', ErrorCategory.AUTH, False),
        (400, b'{"detail": [{"msg": "speed must be in [0.7, 1.2]"}]}', ErrorCategory.INVALID_REQUEST, False),
        (408, b"", ErrorCategory.TIMEOUT, True),
        (
            429,
            b'{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}',
            ErrorCategory.RATE_LIMIT,
            True,
        ),
        (
            429,
            b'{"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}}',
            ErrorCategory.RATE_LIMIT,
            False,
        ),
        (500, b"<html>oops</html>", ErrorCategory.SERVER, True),
        (
            529,
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            ErrorCategory.SERVER,
            True,
        ),
    ],
)
def test_http_errors_are_classified_once(status: int, body: bytes, category: ErrorCategory, retryable: bool) -> None:
    error = error_from_status(status, body, {}, "p")
    assert (error.category, error.retryable, error.status) == (category, retryable, status)
    assert f"HTTP {status}" in str(error)


def test_retry_after_in_seconds_milliseconds_or_a_date() -> None:
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_s({}) is None
    assert error_from_status(429, b"", {"retry-after": "2"}, "p").retry_after_s == 2.0


def test_keys_are_redacted_from_error_text() -> None:
    key = "sk-secret-123456"
    error = error_from_status(
        401, f'{{"error": {{"message": "Incorrect API key provided: {key}"}}}}'.encode(), {}, "p", [key]
    )
    assert key not in str(error) and "***" in str(error)
    streamed = error_from_payload({"error": {"type": "server_error", "message": f"echo {key}"}}, "p", [key])
    assert key not in str(streamed) and streamed.category is ErrorCategory.SERVER


def test_a_missing_key_names_the_variable_and_a_pasted_key_is_not_echoed() -> None:
    with pytest.raises(ConfigError, match="set the environment variable OPENAI_API_KEY"):
        api_key(ProviderOptions(), "openai_chat", "OPENAI_API_KEY", env={})
    with pytest.raises(ConfigError, match="set the environment variable MY_KEY"):
        api_key(ProviderOptions(api_key_env="MY_KEY"), "x", "OPENAI_API_KEY", env={})
    with pytest.raises(ConfigError) as err:
        api_key(ProviderOptions(api_key_env="sk-live-abc"), "x", "OPENAI_API_KEY", env={})
    assert "sk-live-abc" not in str(err.value)
    assert api_key(ProviderOptions(api_key_required=False), "x", "OPENAI_API_KEY", env={}) is None
    assert api_key(ProviderOptions(), "x", "OPENAI_API_KEY", env={"OPENAI_API_KEY": " k "}) == "k"


def test_base_url_from_options_then_environment_then_default() -> None:
    assert (
        base_url(ProviderOptions(), "x", "https://api.openai.com/v1", "OPENAI_BASE_URL", env={})
        == "https://api.openai.com/v1"
    )
    env = {"OPENAI_BASE_URL": "http://gpu:8000/v1/"}
    assert base_url(ProviderOptions(), "x", "https://d", "OPENAI_BASE_URL", env=env) == "http://gpu:8000/v1"
    assert (
        base_url(ProviderOptions(base_url="http://o/v1"), "x", "https://d", "OPENAI_BASE_URL", env=env) == "http://o/v1"
    )
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        base_url(ProviderOptions(base_url_required=True), "x", "https://d", "OPENAI_BASE_URL", env={})
