"""Provider errors, classified once and provider-neutrally.

    ProviderError                  any failure of a provider call
      category: ErrorCategory      auth | rate_limit | connectivity | invalid_request | server | timeout
      retryable: bool              4xx is not retryable except 408 and 429
      retry_after_s: float | None  from a Retry-After header, where given

    ConfigError                    an adapter's options (or the server's configuration) are invalid

The server maps categories to gRPC codes, in one table (`tth_server.errors`).
"""

from __future__ import annotations

from enum import StrEnum


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the allowed values."""


class ErrorCategory(StrEnum):
    AUTH = "auth"
    RATE_LIMIT = "rate_limit"
    CONNECTIVITY = "connectivity"
    INVALID_REQUEST = "invalid_request"
    SERVER = "server"
    TIMEOUT = "timeout"


_RETRYABLE = {ErrorCategory.RATE_LIMIT, ErrorCategory.CONNECTIVITY, ErrorCategory.SERVER, ErrorCategory.TIMEOUT}


class ProviderError(Exception):
    """A provider call failed; `category` says how, `retryable` whether to try again."""

    def __init__(
        self,
        category: ErrorCategory,
        message: str,
        *,
        provider: str = "",
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.category = category
        self.provider = provider
        self.retryable = category in _RETRYABLE if retryable is None else retryable
        self.retry_after_s = retry_after_s
        self.status = status

    @classmethod
    def from_http_status(
        cls, status: int, message: str, *, provider: str = "", retry_after_s: float | None = None
    ) -> ProviderError:
        """Classify an HTTP status: 401/403 auth, 408 timeout, 429 rate limit, other 4xx invalid, 5xx server."""
        if status in (401, 403):
            category = ErrorCategory.AUTH
        elif status == 408:
            category = ErrorCategory.TIMEOUT
        elif status == 429:
            category = ErrorCategory.RATE_LIMIT
        elif 400 <= status < 500:
            category = ErrorCategory.INVALID_REQUEST
        else:
            category = ErrorCategory.SERVER
        return cls(category, message, provider=provider, retry_after_s=retry_after_s, status=status)

    def __str__(self) -> str:
        where = f"{self.provider}: " if self.provider else ""
        return f"{where}{self.category.value}: {super().__str__()}"
