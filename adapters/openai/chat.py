"""`openai_chat`: Chat Completions streaming (SSE), for OpenAI and every OpenAI-compatible server.

The same adapter serves api.openai.com, vLLM, Ollama, llama.cpp's server, LM
Studio and gateways: they all speak `POST {base}/chat/completions` with
`"stream": true` and answer with `data: {chat.completion.chunk}` events ending in
`data: [DONE]`. What real streams do and this adapter handles: `: keep-alive`
comments, events split across network reads, a first chunk carrying only the
role, a final usage-only chunk whose `choices` is empty (or null), an error
object sent as an event after a 200, and a connection that ends before
`[DONE]` (which is a failure, not a short reply).

Options:

    model: gpt-4o-mini          the model name the server knows
    base_url: (unset)           else $OPENAI_BASE_URL, else https://api.openai.com/v1
    base_url_required: false    true: fail at start unless a base URL is given (self-hosted profiles)
    api_key_env: OPENAI_API_KEY the variable holding the key
    api_key_required: true      false: a server without auth; no Authorization header is sent
    temperature, max_tokens     passed through when set
    include_usage: true         ask for the final usage chunk (stream_options.include_usage)
    extra_body: {}              merged into the request (e.g. vLLM's chat_template_kwargs)
    timeout_s: 30               read timeout between bytes; the router's budgets are the real limits
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import field
from typing import Annotated, Any

from pydantic import Field
from pydantic.dataclasses import dataclass

from adapters.base import Capabilities, LLMAdapter, LLMRequest, Mode
from adapters.errors import ErrorCategory, ProviderError
from adapters.logs import log
from adapters.openai._http import HTTPOptions, ProviderHTTP, api_key, base_url, json_event, sse_events
from adapters.options import OPTIONS, GivenOptions

OPENAI_URL = "https://api.openai.com/v1"


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class OpenAIChatOptions(HTTPOptions):
    model: str = "gpt-4o-mini"
    temperature: float | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    include_usage: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)


class OpenAIChat(LLMAdapter):
    """Streams reply text from a Chat Completions endpoint."""

    mode = Mode.API
    Options = OpenAIChatOptions
    options: OpenAIChatOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._key = api_key(self.options, name, "OPENAI_API_KEY")
        url = base_url(self.options, name, OPENAI_URL, "OPENAI_BASE_URL")
        if not url.startswith("https://api.openai.com"):
            # A mode is a class attribute on the base; this instance reaches a server the user runs.
            setattr(self, "mode", Mode.SELF_HOST)  # noqa: B010
        headers = {"Accept": "text/event-stream"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._http = ProviderHTTP(name, url, headers, secrets=[self._key], timeout_s=self.options.timeout_s)

    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True, controls=frozenset({"character.persona_id"}))

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def body(self, request: LLMRequest) -> dict[str, Any]:
        """The JSON request for one reply."""
        messages = [{"role": "system", "content": request.system_prompt}]
        messages += [{"role": m.role, "content": m.text} for m in request.history]
        messages.append({"role": "user", "content": request.user_text})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if self.options.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        body.update(self.options.extra_body)
        return body

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        done = finished = False
        async with self._http.post_stream("/chat/completions", self.body(request)) as response:
            async for event in sse_events(response, self.name):
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                payload = json_event(event, self.name)
                if event.event == "error" or (isinstance(payload, Mapping) and payload.get("error")):
                    raise self._http.error(payload)
                for text, stop in _deltas(payload, self.name):
                    finished = finished or stop
                    if text:
                        yield text
        if not (done or finished):
            raise ProviderError(ErrorCategory.CONNECTIVITY, "the stream ended before [DONE]", provider=self.name)


def _deltas(payload: Any, provider: str) -> list[tuple[str, bool]]:
    """(text, finished) for the first choice of one chunk; the usage-only chunk gives nothing."""
    if not isinstance(payload, Mapping):
        raise ProviderError(ErrorCategory.SERVER, "malformed chunk: not an object", provider=provider)
    choices = payload.get("choices") or []
    if not choices and payload.get("usage"):
        log.debug("llm usage", adapter=provider, usage=payload["usage"])
    out = []
    for choice in choices:
        if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, Mapping) else None
        out.append((content if isinstance(content, str) else "", bool(choice.get("finish_reason"))))
    return out
