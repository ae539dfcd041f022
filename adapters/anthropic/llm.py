"""`anthropic`: the Anthropic Messages API, streamed as Server-Sent Events.

`POST {base}/v1/messages` with `"stream": true`, the key in `x-api-key` and an
`anthropic-version` header. The stream is a sequence of named events:
`message_start`, then per content block `content_block_start`, any number of
`content_block_delta` (text arrives as `text_delta`), `content_block_stop`, then
`message_delta` and `message_stop`. `ping` events may come at any point and an
`error` event (for example `overloaded_error`) may arrive after a 200; both are
handled. A stream that ends without `message_stop` is a dropped connection.

Options: `model` (claude-haiku-4-5), `max_tokens` (1024; required by the API),
`temperature`, `base_url` (else $ANTHROPIC_BASE_URL, else https://api.anthropic.com),
`api_key_env` (ANTHROPIC_API_KEY), `version` (2023-06-01), `timeout_s` (30).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import Capabilities, LLMAdapter, LLMRequest, Message, Mode
from adapters.errors import ErrorCategory, ProviderError
from adapters.openai._http import HTTPOptions, ProviderHTTP, api_key, base_url, json_event, sse_events
from adapters.options import OPTIONS, GivenOptions

ANTHROPIC_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class AnthropicOptions(HTTPOptions):
    model: str = "claude-haiku-4-5"
    api_key_required: Literal[True] = True
    max_tokens: Annotated[int, Field(gt=0)] = 1024  # required by the API
    temperature: float | None = None
    version: str = API_VERSION  # the anthropic-version header


class AnthropicLLM(LLMAdapter):
    """Streams reply text from Claude."""

    mode = Mode.API
    Options = AnthropicOptions
    options: AnthropicOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._key = api_key(self.options, name, "ANTHROPIC_API_KEY")
        url = base_url(self.options, name, ANTHROPIC_URL, "ANTHROPIC_BASE_URL")
        headers = {
            "x-api-key": self._key or "",
            "anthropic-version": self.options.version,
            "accept": "text/event-stream",
        }
        self._http = ProviderHTTP(name, url, headers, secrets=[self._key], timeout_s=self.options.timeout_s)

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True, controls=frozenset({"character.persona_id"}))

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def body(self, request: LLMRequest) -> dict[str, Any]:
        messages = _alternating([*request.history, Message("user", request.user_text)])
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.options.max_tokens,
            "system": request.system_prompt,
            "messages": messages,
            "stream": True,
        }
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        return body

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        stopped = False
        async with self._http.post_stream("/v1/messages", self.body(request)) as response:
            async for event in sse_events(response, self.name):
                payload = json_event(event, self.name)
                kind = payload.get("type") if isinstance(payload, Mapping) else None
                if event.event == "error" or kind == "error":
                    raise self._http.error(payload)
                if kind == "content_block_delta":
                    delta = payload.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield str(delta["text"])
                elif kind == "message_stop":
                    stopped = True
                    break
        if not stopped:
            raise ProviderError(ErrorCategory.CONNECTIVITY, "the stream ended before message_stop", provider=self.name)


def _alternating(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as the API wants them: starting with the user, roles alternating (same-role runs joined)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not out and message.role != "user":
            continue
        if out and out[-1]["role"] == message.role:
            out[-1]["content"] += "\n\n" + message.text
        else:
            out.append({"role": message.role, "content": message.text})
    return out
