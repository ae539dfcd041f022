"""Latency and fault-injection knobs shared by the local adapters.

Every local adapter reads the same option names, so a test or a profile can slow
a stage down or make it fail deterministically:

    first_byte_ms: 0        delay before the first output
    fail_after: -1          raise after this many outputs (0: before the first); -1 never
    fail_category: server   the ProviderError category raised (auth, rate_limit, ...)
    hang: false             never produce the first output (a provider that hangs)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass as options_dataclass

from adapters.errors import ErrorCategory, ProviderError
from adapters.options import OPTIONS, AdapterOptions


@options_dataclass(frozen=True, config=OPTIONS, kw_only=True)
class KnobOptions(AdapterOptions):
    """The knobs as options, which every local adapter's options extend."""

    first_byte_ms: Annotated[float, Field(ge=0)] = 0.0
    fail_after: Annotated[int, Field(ge=-1)] = -1
    fail_category: ErrorCategory = ErrorCategory.SERVER
    hang: bool = False


@dataclass(frozen=True, slots=True)
class Knobs:
    first_byte_ms: float = 0.0
    fail_after: int = -1
    fail_category: ErrorCategory = ErrorCategory.SERVER
    hang: bool = False

    @classmethod
    def from_options(cls, options: KnobOptions) -> Knobs:
        return cls(options.first_byte_ms, options.fail_after, options.fail_category, options.hang)

    async def before(self, index: int, provider: str) -> None:
        """Call before producing output number `index` (from 0)."""
        if index == 0:
            if self.hang:
                await asyncio.Event().wait()
            if self.first_byte_ms > 0:
                await asyncio.sleep(self.first_byte_ms / 1000)
        if index == self.fail_after:
            raise ProviderError(self.fail_category, f"injected failure after {index} outputs", provider=provider)
