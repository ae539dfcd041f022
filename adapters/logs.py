"""The logger adapters and the server share: `log.info("event", key=value)`.

The server configures its output (JSON or console, the level) at start; `session_id` and
`turn_id` are bound with contextvars, so every line logged while a turn runs carries them.
"""

from __future__ import annotations

import structlog

log = structlog.get_logger("tth")
