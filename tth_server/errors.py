"""What a client is told when something goes wrong: one table of codes, and how its own values are quoted back.

Provider error categories map to in-stream error codes and gRPC status codes in
one table. A value that came from a client (a persona id, a session id) is quoted
in an error by `echo` only: its first `ECHO_CHARS` characters and its length, so
an error about a 4 MB field is still a short message. `bounded` is the last guard
where any message leaves (an in-stream error, a notice, a status): a message,
whatever built it, stays under `MAX_MESSAGE_CHARS`, far inside the gRPC message
limit and grpc-core's 16 KiB limit on the trailing metadata that carries a status.
"""

from __future__ import annotations

import grpc

from adapters.errors import ErrorCategory, ProviderError
from tth_server.events import ErrorCode, ErrorOut

ECHO_CHARS = 64  # how much of a client's value an error quotes
MAX_MESSAGE_CHARS = 1024  # the longest message in an error, a notice or a status

CATEGORY_CODES: dict[ErrorCategory, tuple[ErrorCode, grpc.StatusCode]] = {
    ErrorCategory.AUTH: (ErrorCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
    ErrorCategory.RATE_LIMIT: (ErrorCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorCategory.CONNECTIVITY: (ErrorCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    ErrorCategory.INVALID_REQUEST: (ErrorCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorCategory.SERVER: (ErrorCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    ErrorCategory.TIMEOUT: (ErrorCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED),
}

STATUS_CODES: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


def echo(value: str) -> str:
    """`value` quoted for an error message: whole when short, else its first `ECHO_CHARS` characters and its length."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def bounded(message: str) -> str:
    """`message` cut to `MAX_MESSAGE_CHARS`, saying how long it was (a provider's error body can be any length)."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[: MAX_MESSAGE_CHARS - 40]}... (cut from {len(message)} characters)"


def root_cause(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (a TaskGroup's failure), or `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def turn_failure(exc: BaseException, turn_id: str) -> ErrorOut:
    """The terminal error event for a turn that raised `exc`."""
    exc = root_cause(exc)
    if isinstance(exc, ProviderError):
        code, _ = CATEGORY_CODES[exc.category]
        retry_ms = int(exc.retry_after_s * 1000) if exc.retry_after_s else 0
        return ErrorOut(code, str(exc), exc.retryable, retry_ms, turn_id)
    return ErrorOut(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", False, 0, turn_id)
