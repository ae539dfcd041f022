"""A fake LLM that records every request it gets and replies with a fixed text, token by token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from adapters import registry
from adapters.base import LLMAdapter, LLMRequest


class RecordingLLM(LLMAdapter):
    requests: list[LLMRequest] = []

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self._reply = str(options.get("reply", "Hello there. This is a recorded reply."))
        self._delay = float(options.get("token_delay_ms", 0.0)) / 1000

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        RecordingLLM.requests.append(request)
        for token in self._reply.split(" "):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield token + " "


registry.register("recording_llm", RecordingLLM)
