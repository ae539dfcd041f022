"""One table from provider error categories to in-stream error codes and gRPC status codes."""

from __future__ import annotations

import grpc

from adapters.errors import ErrorCategory, ProviderError
from tth_server.events import ErrorCode, ErrorOut

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
