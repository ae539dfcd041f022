"""HTTP plumbing shared by every HTTP provider adapter (OpenAI, Anthropic, ElevenLabs, Simli, Anam).

One place for what each of them would otherwise get subtly different:

- the API key and base URL, read from the environment (never from YAML), with a
  start-time `ConfigError` that names the variable to set;
- classifying failures once: an HTTP error status with its body and Retry-After,
  a transport failure (refused, dropped mid-stream, timed out), or an error
  object inside a stream, all become a `ProviderError` whose message never holds
  the key;
- Server-Sent Events, read with httpx-sse (bytes may split anywhere, including
  inside a UTF-8 character or between the CR and LF of a line end);
- PCM16 from a byte stream, cut into chunks of whole samples (an odd byte at the
  edge of a network read is carried over to the next one).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError
from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.errors import ConfigError, ErrorCategory, ProviderError
from adapters.media import BYTES_PER_SAMPLE, AudioChunk
from adapters.options import OPTIONS, AdapterOptions

_ERROR_BODY_LIMIT = 4096
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_MESSAGE_LIMIT = 300

# Error "type" or "code" strings the providers put in their error objects, by category.
_ERROR_TYPES: dict[str, ErrorCategory] = {
    "authentication_error": ErrorCategory.AUTH,
    "invalid_api_key": ErrorCategory.AUTH,
    "permission_error": ErrorCategory.AUTH,
    "unauthorized": ErrorCategory.AUTH,
    "rate_limit_error": ErrorCategory.RATE_LIMIT,
    "rate_limit_exceeded": ErrorCategory.RATE_LIMIT,
    "insufficient_quota": ErrorCategory.RATE_LIMIT,
    "too_many_concurrent_requests": ErrorCategory.RATE_LIMIT,
    "invalid_request_error": ErrorCategory.INVALID_REQUEST,
    "not_found_error": ErrorCategory.INVALID_REQUEST,
    "request_too_large": ErrorCategory.INVALID_REQUEST,
    "overloaded_error": ErrorCategory.SERVER,
    "api_error": ErrorCategory.SERVER,
    "server_error": ErrorCategory.SERVER,
    "internal_error": ErrorCategory.SERVER,
    "timeout_error": ErrorCategory.TIMEOUT,
}
# A spent quota answers 429 but will not recover by waiting.
_NOT_RETRYABLE = {"insufficient_quota", "quota_exceeded"}


# ---- keys and endpoints -----------------------------------------------------------------------------------------


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class ProviderOptions(AdapterOptions):
    """The options of every hosted provider's adapter: where its key is, and its endpoint."""

    api_key_env: str = ""  # the variable holding the key; empty: the provider's own (OPENAI_API_KEY, ...)
    api_key_required: bool = True  # false: a server without auth
    base_url: str = ""  # empty: the provider's variable (OPENAI_BASE_URL, ...), else its public API
    base_url_required: bool = False  # true: fail at start unless a base URL is given (self-hosted profiles)


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class HTTPOptions(ProviderOptions):
    """A provider called over HTTP: its model and the read timeout between bytes."""

    model: str = ""
    timeout_s: Annotated[float, Field(gt=0)] = 30.0


def api_key(
    options: ProviderOptions, adapter: str, default_env: str, *, env: Mapping[str, str] | None = None
) -> str | None:
    """The API key from the variable `options.api_key_env` names (default `default_env`).

    Raises ConfigError naming the variable when it is unset, unless the options say
    `api_key_required: false` (a self-hosted endpoint without auth), where None is returned.
    """
    env = os.environ if env is None else env
    var = options.api_key_env or default_env
    if not _ENV_NAME.fullmatch(var):
        # Never echo it: someone may have pasted the key itself here.
        raise ConfigError(f"{adapter}: options.api_key_env must name an environment variable (A-Z, 0-9, _)")
    value = env.get(var, "").strip()
    if value:
        return value
    if not options.api_key_required:
        return None
    raise ConfigError(f"{adapter} needs an API key: set the environment variable {var}")


def base_url(
    options: ProviderOptions,
    adapter: str,
    default: str,
    env_var: str | None,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """The endpoint: `options.base_url`, else `env_var` from the environment, else `default`.

    With `base_url_required: true` (the self-hosted profiles) a missing URL is a
    ConfigError naming the variable, instead of silently calling the public API.
    """
    env = os.environ if env is None else env
    url = (options.base_url or (env.get(env_var, "") if env_var else "")).strip()
    if not url:
        if options.base_url_required:
            hint = f"set the environment variable {env_var} or " if env_var else "set "
            raise ConfigError(f"{adapter} needs the endpoint of its server: {hint}options.base_url")
        url = default
    if not url.startswith(("http://", "https://", "ws://", "wss://")):
        raise ConfigError(f"{adapter}: base URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret replaced by '***'."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# ---- classifying failures ---------------------------------------------------------------------------------------


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_detail(payload: Any) -> tuple[str, str]:
    """(type or code, message) from the error objects the providers send, in body or stream.

    OpenAI: {"error": {"message", "type", "code"}}; Anthropic: {"type": "error",
    "error": {"type", "message"}}; ElevenLabs and other FastAPI servers:
    {"detail": {"status", "message"}}, {"detail": "..."} or {"detail": [{"msg"}]}.
    """
    if not isinstance(payload, Mapping):
        return "", str(payload)[:_MESSAGE_LIMIT] if payload is not None else ""
    err = payload.get("error", payload.get("detail", payload))
    if isinstance(err, str):
        return "", err
    if isinstance(err, list):
        msgs = [str(e.get("msg", e)) if isinstance(e, Mapping) else str(e) for e in err]
        return "", "; ".join(msgs)
    if isinstance(err, Mapping):
        kind = str(err.get("code") or err.get("type") or err.get("status") or "")
        if kind == "error":
            kind = ""
        message = str(err.get("message") or err.get("msg") or "")
        if not message:
            message = json.dumps(err)[:_MESSAGE_LIMIT]
        if err.get("type") and err.get("code") and err["type"] != err["code"]:
            kind = str(err["code"]) if str(err["code"]) in _ERROR_TYPES else str(err["type"])
        return kind, message
    return "", str(err)


def error_from_payload(payload: Any, provider: str, secrets: Iterable[str | None] = ()) -> ProviderError:
    """A ProviderError for an error object received inside a stream (HTTP status was 200)."""
    kind, message = error_detail(payload)
    category = _ERROR_TYPES.get(kind, ErrorCategory.SERVER)
    retryable = False if kind in _NOT_RETRYABLE else None
    text = redact(f"{kind}: {message}" if kind else message or "error event", secrets)
    return ProviderError(category, text[:_MESSAGE_LIMIT], provider=provider, retryable=retryable)


def error_from_status(
    status: int, body: bytes, headers: Mapping[str, str], provider: str, secrets: Iterable[str | None] = ()
) -> ProviderError:
    """A ProviderError for an HTTP error response (401/403 auth, 429 rate limit, 5xx server ...)."""
    try:
        payload: Any = json.loads(body.decode("utf-8", errors="replace")) if body else None
    except ValueError:
        payload = body.decode("utf-8", errors="replace").strip()
    kind, message = error_detail(payload) if payload is not None else ("", "")
    text = f"HTTP {status}" + (f" {kind}" if kind else "") + (f": {message}" if message else "")
    error = ProviderError.from_http_status(
        status, redact(text, secrets)[:_MESSAGE_LIMIT], provider=provider, retry_after_s=retry_after_s(headers)
    )
    if kind in _NOT_RETRYABLE:
        error.retryable = False
    return error


def transport_error(exc: Exception, provider: str, secrets: Iterable[str | None] = ()) -> ProviderError:
    """A ProviderError for a failure below HTTP: refused, reset, dropped mid-stream, timed out."""
    detail = redact(str(exc) or type(exc).__name__, secrets)[:_MESSAGE_LIMIT]
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return ProviderError(ErrorCategory.CONNECTIVITY, f"cannot connect: {detail}", provider=provider)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(ErrorCategory.TIMEOUT, f"timed out: {detail}", provider=provider)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ProviderError(ErrorCategory.CONNECTIVITY, f"connection dropped: {detail}", provider=provider)
    return ProviderError(ErrorCategory.CONNECTIVITY, f"transport error: {detail}", provider=provider)


def malformed(what: str, provider: str) -> ProviderError:
    """A stream the client cannot read: the provider's fault, and worth another try."""
    return ProviderError(ErrorCategory.SERVER, f"malformed {what}", provider=provider)


# ---- one HTTP client per adapter --------------------------------------------------------------------------------


class ProviderHTTP:
    """An httpx.AsyncClient for one adapter, whose failures all come out as ProviderError.

    Created in the adapter's `start()` and closed in its `aclose()`. The key lives
    only in the client's default headers and is redacted from every error message.
    """

    def __init__(
        self,
        provider: str,
        url: str,
        headers: Mapping[str, str],
        *,
        secrets: Iterable[str | None] = (),
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.provider = provider
        self.url = url
        self._headers = dict(headers)
        self._secrets = tuple(s for s in secrets if s)
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never show headers: they hold the key
        return f"ProviderHTTP({self.provider!r}, {self.url!r})"

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @asynccontextmanager
    async def post_stream(
        self, path: str, body: Mapping[str, Any], *, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """POST `body` as JSON; yields the response once its status is a success.

        Error statuses raise a classified ProviderError (body read, Retry-After
        parsed); transport failures while the body streams raise one too.
        """
        if self._client is None:
            raise ProviderError(ErrorCategory.CONNECTIVITY, "adapter not started", provider=self.provider)
        try:
            async with self._client.stream("POST", path, json=dict(body), params=params) as response:
                if response.status_code >= 400:
                    raw = b""
                    async for piece in response.aiter_bytes():
                        raw += piece
                        if len(raw) >= _ERROR_BODY_LIMIT:
                            break
                    raise error_from_status(response.status_code, raw, response.headers, self.provider, self._secrets)
                yield response
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.provider, self._secrets) from exc

    async def request_json(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One request with an optional JSON body; returns the decoded JSON answer.

        Error statuses and transport failures raise a classified ProviderError, as
        `post_stream`; an answer that is not JSON is a malformed response.
        """
        if self._client is None:
            raise ProviderError(ErrorCategory.CONNECTIVITY, "adapter not started", provider=self.provider)
        try:
            response = await self._client.request(method, path, json=dict(body) if body is not None else None)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.provider, self._secrets) from exc
        if response.status_code >= 400:
            raw = response.content[:_ERROR_BODY_LIMIT]
            raise error_from_status(response.status_code, raw, response.headers, self.provider, self._secrets)
        try:
            return response.json()
        except ValueError:
            raise malformed(f"answer to {method} {path}", self.provider) from None

    def error(self, payload: Any) -> ProviderError:
        return error_from_payload(payload, self.provider, self._secrets)


# ---- Server-Sent Events -----------------------------------------------------------------------------------------


async def sse_events(response: httpx.Response, provider: str) -> AsyncIterator[ServerSentEvent]:
    """The response's Server-Sent Events as they arrive (httpx-sse: WHATWG line and dispatch rules).

    A response that is not `text/event-stream` is a 'malformed' ProviderError;
    transport failures while it streams surface from `post_stream`.
    """
    try:
        async for event in EventSource(response).aiter_sse():
            yield event
    except SSEError as exc:
        raise malformed(f"stream ({exc})", provider) from None


def json_event(event: ServerSentEvent, provider: str) -> Any:
    """The event's data as JSON, or a 'malformed event' ProviderError."""
    try:
        return json.loads(event.data)
    except ValueError:
        raise malformed(f"event {event.data[:60]!r}", provider) from None


# ---- PCM from a byte stream -------------------------------------------------------------------------------------


class PcmChunker:
    """Cuts a PCM16 mono byte stream into `AudioChunk`s of whole samples, stamped from 0 ms.

    Chunks are `chunk_ms` long (the last may be shorter). A byte left over at the
    edge of a network read waits for its partner in the next one.
    """

    def __init__(self, sample_rate_hz: int, chunk_ms: float = 40.0) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._chunk_bytes = max(1, round(sample_rate_hz * chunk_ms / 1000)) * BYTES_PER_SAMPLE
        self._buffer = bytearray()
        self.samples = 0

    def feed(self, data: bytes) -> list[AudioChunk]:
        self._buffer += data
        out = []
        while len(self._buffer) >= self._chunk_bytes:
            out.append(self._take(self._chunk_bytes))
        return out

    def flush(self) -> list[AudioChunk]:
        """The rest, in whole samples; a dangling odd byte at the very end is dropped."""
        size = len(self._buffer) - len(self._buffer) % BYTES_PER_SAMPLE
        self._buffer = self._buffer[:size]
        return [self._take(size)] if size else []

    def _take(self, size: int) -> AudioChunk:
        pcm = bytes(self._buffer[:size])
        del self._buffer[:size]
        chunk = AudioChunk(pcm, self.sample_rate_hz, timestamp_ms=self.samples * 1000 / self.sample_rate_hz)
        self.samples += size // BYTES_PER_SAMPLE
        return chunk
