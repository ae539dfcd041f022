"""How the SDK reaches a server: target, TLS, API key, keepalive and message size, in one place.

Every `Client` and `Session` opens (or shares) one `grpc.aio.Channel` made here.
The API key travels as `authorization: Bearer KEY` metadata on every call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

__all__ = ["DEFAULT_TARGET", "ChannelOptions", "Connection"]

DEFAULT_TARGET = "127.0.0.1:50051"
"""Where the SDK connects when neither `target` nor `TTH_TARGET` says otherwise (the server's default)."""


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """gRPC channel settings; the defaults suit long-lived `Converse` streams.

    Keepalive pings detect a dead connection while a session idles between turns.
    A gRPC server, by default, tolerates client pings without data no more often
    than every 5 minutes and closes the connection (GOAWAY "too_many_pings") when
    pinged faster, so the default here is 5 minutes; ping faster only against a
    server configured to allow it (`grpc.http2.min_ping_interval_without_data_ms`).
    """

    keepalive_time_ms: int = 300_000
    """Milliseconds between keepalive pings on an idle connection."""
    keepalive_timeout_ms: int = 20_000
    """Milliseconds to wait for a ping's answer before the connection counts as dead."""
    keepalive_without_calls: bool = False
    """Ping even when no call is open (only useful for channels kept warm for later calls)."""
    max_receive_message_bytes: int = 16 * 1024 * 1024
    """Largest message accepted from the server; raw RGB frames at 1024x1024 need 3 MiB."""
    max_send_message_bytes: int = 4 * 1024 * 1024
    """Largest message sent to the server (the server's own default limit is 4 MiB)."""
    extra: Sequence[tuple[str, str | int]] = ()
    """Further raw channel arguments, passed through unchanged (for example a load-balancing policy)."""

    def as_grpc(self) -> list[tuple[str, str | int]]:
        """The options as gRPC channel arguments."""
        return [
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_without_calls)),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            *self.extra,
        ]


@dataclass(frozen=True, slots=True)
class Connection:
    """Where a server is and how to reach it: taken by `Session`, `Client` and their sync forms.

        tth_client.Session("tts.example.com:443")                     # a target alone is enough
        conn = tth_client.Connection("tts.example.com:443", api_key=KEY, tls=True)
        async with tth_client.Client(conn) as client, tth_client.Session(conn, persona="casual") as s: ...

    Unset values come from the environment when the connection is made: `target` from
    `TTH_TARGET` (else 127.0.0.1:50051), `api_key` from `TTH_API_KEY` (`""` sends none).
    TLS is on when `tls` is True, or when it is None and certificates are given; with TLS
    and no root certificates the system's trust store is used. A client certificate
    chain and its private key (PEM) make it mutual TLS.
    """

    target: str = ""
    """HOST:PORT of the server."""
    api_key: str | None = field(default=None, repr=False)
    """Sent as `authorization: Bearer KEY` on every call."""
    tls: bool | None = None
    root_certificates: bytes | None = field(default=None, repr=False)
    """PEM roots to trust (None with TLS: the system's)."""
    certificate_chain: bytes | None = field(default=None, repr=False)
    """PEM client certificate chain, for mutual TLS (with `private_key`)."""
    private_key: bytes | None = field(default=None, repr=False)
    """PEM private key of the client certificate, for mutual TLS."""
    options: ChannelOptions = field(default_factory=ChannelOptions)
    """Keepalive and message size settings."""

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")
        fill = object.__setattr__  # frozen: the resolved values are set once, here
        fill(self, "target", self.target or os.environ.get("TTH_TARGET") or DEFAULT_TARGET)
        if self.api_key is None:
            fill(self, "api_key", os.environ.get("TTH_API_KEY") or None)
        if self.tls is None:
            fill(self, "tls", self.root_certificates is not None or self.certificate_chain is not None)

    @classmethod
    def of(cls, connection: str | Connection | None) -> Connection:
        """`connection` itself, or a connection to the target it names (None: the environment's)."""
        return connection if isinstance(connection, Connection) else cls(connection or "")

    def open_channel(self) -> grpc.aio.Channel:
        """A new asyncio channel; it connects lazily, on the first call."""
        if self.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.root_certificates,
                private_key=self.private_key,
                certificate_chain=self.certificate_chain,
            )
            return grpc.aio.secure_channel(self.target, credentials, options=self.options.as_grpc())
        return grpc.aio.insecure_channel(self.target, options=self.options.as_grpc())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the API key, when there is one."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()
