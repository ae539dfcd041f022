"""Structured logging: JSON when stderr is not a terminal, console when it is.

The logger itself is `adapters.logs.log`, shared with the adapters; this module configures it.

`session_id` and `turn_id` are bound with contextvars, so every line logged
while a session or turn runs carries them; each turn ends with one summary line.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog

from tth_server.config import LogSettings


class _Stderr:
    """Whatever sys.stderr is when a line is written, not when a logger was first used.

    Loggers are cached on first use; holding the stream of that moment would send
    later lines to a stream that was since replaced (a test's capture, a redirect).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(settings: LogSettings) -> None:
    level = logging.getLevelNamesMapping().get(settings.level.upper(), logging.INFO)
    use_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _Stderr())),
        cache_logger_on_first_use=True,
    )
