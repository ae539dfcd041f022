"""What a client is told when something goes wrong: the server's refusals, one table of codes, and quoting.

Every refusal the server makes is a `ServerError`: an in-stream `ErrorCode`, the
gRPC status that ends a call, a message and when to retry. The servicer maps
one to the wire in one place: an in-stream error on an open stream (the
session goes on), else the end of the call with its status and a
`retry-after-ms` trailer. An adapter's `ControlError` becomes an
INVALID_ARGUMENT refusal in `refusal`. Provider error categories map to
in-stream error codes and gRPC status codes in one table.

A value that came from a client (a persona id, a session id) is quoted
in an error by `echo` only: its first `ECHO_CHARS` characters and its length, so
an error about a 4 MB field is still a short message. `bounded` is the last guard
where any message leaves (an in-stream error, a notice, a status): a message,
whatever built it, stays under `MAX_MESSAGE_CHARS`, far inside the gRPC message
limit and grpc-core's 16 KiB limit on the trailing metadata that carries a status.
"""

from __future__ import annotations

from enum import StrEnum

import grpc

from adapters.controls import ControlError
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


class ServerError(Exception):
    """A refusal as the client is told it: `code` in the stream, `status` at the end of a call, `retry_after_s`.

    `status` defaults to the one `code` maps to in `STATUS_CODES`; `retryable`
    goes on the in-stream error. The message is cut by `bounded` where it leaves.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        retry_after_s: float = 0.0,
        *,
        retryable: bool = False,
        status: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = STATUS_CODES[code] if status is None else status
        self.retry_after_s = retry_after_s
        self.retryable = retryable

    @property
    def retry_after_ms(self) -> int:
        """`retry_after_s` in whole milliseconds, as the in-stream error and the `retry-after-ms` trailer carry it."""
        return int(self.retry_after_s * 1000)

    def event(self, request_id: str = "") -> ErrorOut:
        """The in-stream error for this refusal of the request `request_id`."""
        return ErrorOut(self.code, str(self), self.retryable, self.retry_after_ms, request_id=request_id)


class InvalidArgument(ServerError):
    """A request the server cannot take as it is; the message names the field and what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_ARGUMENT, message)


class AttachReason(StrEnum):
    """Why a stream cannot have the session it asked for; each picks a gRPC status (`ATTACH_STATUS`)."""

    NOT_FOUND = "not_found"
    OUT_OF_RANGE = "out_of_range"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"


ATTACH_STATUS: dict[AttachReason, tuple[ErrorCode, grpc.StatusCode]] = {
    AttachReason.NOT_FOUND: (ErrorCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND),
    AttachReason.OUT_OF_RANGE: (ErrorCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE),
    AttachReason.RESOURCE_EXHAUSTED: (ErrorCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED),
    AttachReason.UNAVAILABLE: (ErrorCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
}


class AttachRefused(ServerError):
    """A stream cannot have the session it asked for; `reason` picks the gRPC status."""

    def __init__(self, reason: AttachReason, message: str, retry_after_s: float = 0.0) -> None:
        code, status = ATTACH_STATUS[reason]
        super().__init__(code, message, retry_after_s, status=status)
        self.reason = reason


def refusal(exc: ServerError | ControlError) -> ServerError:
    """`exc` as the server refuses it: a ControlError (an adapter's or a request's bad value) is INVALID_ARGUMENT."""
    return exc if isinstance(exc, ServerError) else InvalidArgument(str(exc))


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
