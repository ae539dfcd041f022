"""A fake LLM that records every request it gets and replies with a fixed text, token by token.

Importing it registers nothing: the `recording_llm` fixture (tests/conftest.py) makes
`recording_llm` an adapter name for the tests that ask for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic.dataclasses import dataclass

from adapters.base import LLMAdapter, LLMRequest
from adapters.options import OPTIONS, AdapterOptions, GivenOptions


@dataclass(frozen=True, config=OPTIONS, kw_only=True)
class RecordingOptions(AdapterOptions):
    reply: str = "Hello there. This is a recorded reply."
    token_delay_ms: float = 0.0


class RecordingLLM(LLMAdapter):
    requests: list[LLMRequest] = []
    Options = RecordingOptions
    options: RecordingOptions

    def __init__(self, name: str, options: GivenOptions) -> None:
        super().__init__(name, options)
        self._reply = self.options.reply
        self._delay = self.options.token_delay_ms / 1000

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        RecordingLLM.requests.append(request)
        for token in self._reply.split(" "):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield token + " "
