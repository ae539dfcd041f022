"""The SDK's exceptions: one tree, every error a one-line message with the fix.

    TTHError                      every error the SDK raises; `.code`, `.details`, `.hint`
    ├── ConnectError              the server could not be reached, or the connection broke (UNAVAILABLE)
    ├── TimeoutError              a deadline passed (DEADLINE_EXCEEDED, or no `started` in time);
    │                             also a builtins.TimeoutError
    ├── StatusError               the server ended the call with another non-OK gRPC status
    │   ├── InvalidArgumentError  a request field is invalid (`.field` names it): the SDK's own check before
    │   │   │                     sending, the server's INVALID_ARGUMENT / OUT_OF_RANGE status, or its
    │   │   │                     in-stream refusal of that request; also a builtins.ValueError
    │   │   ├── InvalidControlError  the invalid field is a control: a range, an emotion name, a persona id
    │   │   └── ResumeOutOfRangeError  OUT_OF_RANGE on a resume: the events after `resume_after_seq` are no
    │   │                         longer held (or it is ahead of the session)
    │   ├── AuthenticationError   UNAUTHENTICATED or PERMISSION_DENIED: the API key was refused
    │   ├── NotFoundError         NOT_FOUND: for example attaching to an unknown or expired session
    │   ├── SessionTakenOverError ABORTED: another stream resumed the session and this one lost it
    │   └── ResourceExhaustedError RESOURCE_EXHAUSTED: a server limit was reached; `.retry_after_s`
    │       └── TurnResourceExhaustedError  also a TurnFailedError: a turn (or its text) met a limit in-stream
    ├── TurnFailedError           a turn ended with an `error` event (raised by `TurnResult.raise_for_outcome()`);
    │                             `.code` is the in-stream ErrorCode name, `.retryable`, `.retry_after_ms`,
    │                             `.retry_after_s`
    └── ClosedError               the session or call was closed; events not yet received are lost

`str(error)` is always one line: what happened, then "Fix: ..." when there is
something the caller can do. `.code` is the `grpc.StatusCode` (or, for
`TurnFailedError`, the `ErrorCode` name) and `.details` the server's own message.

Bad input always raises, at the call that sent it: `say()`, `update_controls()` and
`generate()` raise `InvalidControlError` / `InvalidArgumentError` before sending when
the SDK can tell (ranges, names, an empty text), and awaiting the turn (or the
update) raises the same class when the server refuses the request instead.
"""

from __future__ import annotations

import builtins
from typing import Any

import grpc

from tth_client._limits import CONTROL_RANGES

__all__ = [
    "AuthenticationError",
    "ClosedError",
    "ConnectError",
    "InvalidArgumentError",
    "InvalidControlError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ResumeOutOfRangeError",
    "SessionTakenOverError",
    "StatusError",
    "TTHError",
    "TimeoutError",
    "TurnFailedError",
    "TurnResourceExhaustedError",
    "from_rpc_error",
    "invalid_argument",
    "status_error",
]


class TTHError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        code: The gRPC status code, when the error came from one; for `TurnFailedError` the
            in-stream `ErrorCode` name (for example "INVALID_ARGUMENT").
        details: The server's message, unchanged, or the SDK's own description.
        hint: What the caller can do about it, or "" when nothing obvious.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | str | None = None, details: str = "", hint: str = ""):
        self.message = message
        self.code = code
        self.details = details or message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        line = self.message.replace("\n", " ").strip()
        return f"{line}. Fix: {self.hint}" if self.hint else line


class ConnectError(TTHError):
    """The server could not be reached, or the connection broke during a call."""


# Shadows the builtin inside this package on purpose; it is also a builtins.TimeoutError, so both catch it.
class TimeoutError(TTHError, builtins.TimeoutError):
    """A deadline passed: the server's DEADLINE_EXCEEDED, or the SDK's own wait (for `started`, for a close)."""


class StatusError(TTHError):
    """The server ended the call with a non-OK gRPC status; `.code` and `.details` say which and why."""


class InvalidArgumentError(StatusError, ValueError):
    """A request field is invalid; the message names the field and its limit.

    Attributes:
        field: The request field at fault as the SDK spells it: "text", "persona",
            "emotion", a numeric control's keyword ("speech_rate"), or "" when unknown.
    """

    def __init__(self, message: str, *, field: str = "", **kwargs: Any) -> None:
        self.field = field
        kwargs.setdefault("code", grpc.StatusCode.INVALID_ARGUMENT)
        super().__init__(message, **kwargs)


class InvalidControlError(InvalidArgumentError):
    """A control value is invalid: out of its range, an unknown emotion name, an unknown persona id."""


class AuthenticationError(StatusError):
    """The server refused the credentials (UNAUTHENTICATED or PERMISSION_DENIED)."""


class NotFoundError(StatusError):
    """The thing asked for does not exist, for example a session id to attach to."""


class ResumeOutOfRangeError(InvalidArgumentError):
    """A resume the session cannot serve: the events after `resume_after_seq` are no longer all held, or it is
    ahead of the session's last event. Start a new session, or attach with `session_id` alone (no
    `resume_after_seq`) to go on without the missing events."""


class SessionTakenOverError(StatusError):
    """Another stream resumed the session (ABORTED) and this one no longer has it; its events go there now."""


class ResourceExhaustedError(StatusError):
    """A server limit was reached; retry later or lower the load.

    Attributes:
        retry_after_s: Seconds the server advises waiting before trying again: from the
            `retry-after-ms` trailer of a RESOURCE_EXHAUSTED status, or the in-stream error's
            `retry_after_ms`; None when the server gave no advice (waiting would not help).
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kwargs)


class TurnFailedError(TTHError):
    """A turn ended with an `error` event instead of completing.

    Attributes:
        turn_id: The failed turn's id; "" when the server rejected the text before a turn started.
        retryable: True when sending the same text again may succeed.
        retry_after_ms: When retryable, how long to wait first (0: no advice).
        retry_after_s: The same in seconds, None when there is no advice.
    """

    def __init__(
        self, message: str, *, code: str, turn_id: str, retryable: bool, retry_after_ms: int, hint: str = ""
    ) -> None:
        self.turn_id = turn_id
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        super().__init__(message, code=code, details=message, hint=hint)
        self.retry_after_s: float | None = retry_after_ms / 1000 if retry_after_ms else None


class TurnResourceExhaustedError(TurnFailedError, ResourceExhaustedError):
    """A turn, or the text that would have started it, met a limit in-stream (ERROR_CODE_RESOURCE_EXHAUSTED): a
    turn rate limit or a provider's. Caught as either parent; `retry_after_s` is the error's `retry_after_ms`."""


class ClosedError(TTHError):
    """The session or call is closed: nothing more can be sent, and events not yet received are lost."""


def start_server(target: str) -> str:
    """How to start a server on `target` from a checkout of the project.

    `make run` serves the default (local) profile; the console scripts live in the
    project's venv, which is not on PATH unless it is activated.
    """
    return f"`make run LISTEN={target}` in the TTH checkout, or `.venv/bin/tth-server --listen {target}` there"


# The server names the field at fault first in its message, as a path into the request
# ("text.control.emotion.intensity must be ..."); its last part, spelled as the SDK's keyword.
_FIELDS = {"label": "emotion", "persona_id": "persona", "text": "text"}
_CONTROL_FIELDS = {"emotion", "persona", *CONTROL_RANGES}


def invalid_argument(
    message: str, details: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> InvalidArgumentError:
    """The error for a request the server refused, by status or in-stream, with `details` naming the field."""
    last = details.split(" ", 1)[0].split(":", 1)[0].rsplit(".", 1)[-1]
    field = _FIELDS.get(last, last if last in _CONTROL_FIELDS else "")
    if field == "text":
        hint = "send some text" if "empty" in details else "send a shorter text, or split it into several turns"
    elif field == "persona":
        hint = "use one of the known persona ids named above (Client.list_models() lists them)"
    elif field:
        hint = "use a value inside the range named above"
    else:
        hint = "change the field named above"
    cls = InvalidControlError if field in _CONTROL_FIELDS else InvalidArgumentError
    return cls(message, code=code, details=details, hint=hint, field=field)


_STATUS_CLASSES: dict[grpc.StatusCode, type[TTHError]] = {
    grpc.StatusCode.UNAVAILABLE: ConnectError,
    grpc.StatusCode.DEADLINE_EXCEEDED: TimeoutError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: ResumeOutOfRangeError,  # the only OUT_OF_RANGE the server sends
    grpc.StatusCode.ABORTED: SessionTakenOverError,  # the only ABORTED the server sends
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


def _hint(code: grpc.StatusCode, target: str) -> str:
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"start a server ({start_server(target)}), or point the client at a running one (--target or target=)"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return "pass a valid API key (Connection(api_key=...), --api-key or TTH_API_KEY)"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "raise the timeout, or check that the server is not overloaded"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "wait and retry, or lower the request rate"
    if code is grpc.StatusCode.NOT_FOUND:
        return "create the session again with CreateSession and attach within its attach timeout"
    if code is grpc.StatusCode.OUT_OF_RANGE:
        return (
            "start a new session, or attach with session_id alone (no resume_after_seq) to go on without the "
            "missing events; to resume without loss, resume sooner or from a later seq"
        )
    if code is grpc.StatusCode.ABORTED:
        return (
            "another client resumed this session and has it now; stop this one, or open a new Session with "
            "session_id and resume_after_seq to take it back"
        )
    return ""


def retry_after_s(trailers: Any) -> float | None:
    """Seconds from a status's `retry-after-ms` trailer (a decimal count of milliseconds); None when absent."""
    for key, value in trailers or ():
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None


def status_error(code: grpc.StatusCode, details: str, target: str, trailers: Any = None) -> TTHError:
    """The SDK error for a call to `target` that ended with `code`, the server's `details` and trailing metadata."""
    cls = _STATUS_CLASSES.get(code, StatusError)
    if cls is InvalidArgumentError:
        return invalid_argument(f"{target} refused the request: {details or 'no details'}", details, code)
    if cls is ResumeOutOfRangeError:
        message = f"{target} cannot resume the session there: {details or 'out of range'}"
        return ResumeOutOfRangeError(
            message, code=code, details=details, hint=_hint(code, target), field="resume_after_seq"
        )
    if cls is ConnectError:
        message = f"cannot reach the TTH server at {target}: {details or 'unavailable'}"
    else:
        message = f"{target} answered {code.name}: {details or 'no details'}"
    if cls is ResourceExhaustedError:
        return ResourceExhaustedError(
            message, code=code, details=details, hint=_hint(code, target), retry_after_s=retry_after_s(trailers)
        )
    return cls(message, code=code, details=details, hint=_hint(code, target))


def from_rpc_error(error: grpc.RpcError, target: str) -> TTHError:
    """The SDK error for a failed gRPC call to `target`."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else ""
    trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    return status_error(code, details or "", target, trailers)
