"""API-key authentication: `authorization: Bearer KEY` on every call, checked in constant time.

Keys come from the environment variable TTH_API_KEYS (comma-separated) and from
`auth.keys_file` (one key per line, `#` comments). With no key configured the
server is open, and says so in its start-up log. Health checking and
reflection can stay open (the defaults) so probes, grpcurl and buf curl work
without a key. A key is never logged: sessions and limits know it by `key_id`,
a short hash.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from adapters.errors import ConfigError
from tth_server.config import AuthSettings

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
ANONYMOUS = "anonymous"


def key_id(key: str) -> str:
    """A stable, non-reversible name for a key, safe to log."""
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyStore:
    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in dict.fromkeys(k.strip() for k in keys) if k]

    @classmethod
    def from_settings(cls, settings: AuthSettings, env_keys: Iterable[str]) -> KeyStore:
        keys = list(env_keys)
        if settings.keys_file:
            try:
                lines = Path(settings.keys_file).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"auth.keys_file: cannot read {settings.keys_file}: {exc.strerror}") from None
            keys += [line.split("#", 1)[0] for line in lines]
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
        """The key id of a valid `authorization: Bearer KEY`, else None. Every key is compared, in constant time."""
        if not self.enabled:
            return ANONYMOUS
        presented = _bearer(metadata)
        if presented is None:
            return None
        match = False
        for key in self._keys:
            match |= hmac.compare_digest(key, presented)
        return key_id(presented.decode()) if match else None


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
    for name, value in metadata or ():
        if name == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip().encode() if scheme.lower() == "bearer" and token.strip() else None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a valid key with UNAUTHENTICATED, before any handler runs."""

    def __init__(self, keys: KeyStore, settings: AuthSettings) -> None:
        self._keys = keys
        open_prefixes: list[str] = []
        if settings.open_health:
            open_prefixes.append(HEALTH_PREFIX)
        if settings.open_reflection:
            open_prefixes += REFLECTION_PREFIXES
        self._open = tuple(open_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._open):
            return handler
        if self._keys.identify(details.invocation_metadata) is not None:
            return handler
        has_header = _bearer(details.invocation_metadata) is not None
        message = "invalid API key" if has_header else "missing API key: send metadata 'authorization: Bearer <key>'"
        return _refusal(handler, message)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kind = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return make(
        deny_stream if handler.response_streaming else deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
