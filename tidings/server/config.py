"""Server configuration: one frozen value built from CLI flags or keyword arguments.

Every option, its default and the reason for it, its bounds and its flag are
declared once, in the option table of :mod:`tidings.server._options`; the
dataclasses here take their defaults from it. ``Config`` is validated when built,
by one loop over that table, so a bad value fails at start-up with the name of
the flag, never later on a live connection.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Final, Literal

from tidings.server._options import check, default
from tidings.server.errors import ServerError

__all__ = [
    "DEFAULT_APPLICATION_CLOSE_TIMEOUT",
    "DEFAULT_BACKLOG",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_GRACEFUL_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADER_COUNT",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_PIPELINE",
    "DEFAULT_PORT",
    "DEFAULT_WRITE_HIGH_WATER",
    "Config",
    "ConfigError",
    "Limits",
    "Timeouts",
    "WebSocketSettings",
]

# Each default, and the reason for it, is declared once in the option table
# (tidings/server/_options.py); these names are read from it.
DEFAULT_HOST: Final[str] = default("host")
DEFAULT_PORT: Final[int] = default("port")
DEFAULT_BACKLOG: Final[int] = default("limits.backlog")

DEFAULT_MAX_HEADER_SIZE: Final[int] = default("limits.max_header_size")
DEFAULT_MAX_HEADER_COUNT: Final[int] = default("limits.max_header_count")
DEFAULT_MAX_BODY_SIZE: Final[int] = default("limits.max_body_size")
DEFAULT_MAX_CONNECTIONS: Final[int] = default("limits.max_connections")
DEFAULT_MAX_PIPELINE: Final[int] = default("limits.max_pipeline")
DEFAULT_WRITE_HIGH_WATER: Final[int] = default("limits.write_high_water")

DEFAULT_HEADER_TIMEOUT: Final[float] = default("timeouts.header")
DEFAULT_KEEPALIVE_TIMEOUT: Final[float] = default("timeouts.keepalive")
DEFAULT_BODY_TIMEOUT: Final[float] = default("timeouts.body")
DEFAULT_GRACEFUL_TIMEOUT: Final[float] = default("timeouts.graceful")
DEFAULT_APPLICATION_CLOSE_TIMEOUT: Final[float] = default("timeouts.application_close")

DEFAULT_WS_MAX_MESSAGE_SIZE: Final[int] = default("websocket.max_message_size")
DEFAULT_WS_MAX_FRAME_SIZE: Final[int] = default("websocket.max_frame_size")
DEFAULT_WS_MAX_FRAGMENTS: Final[int] = default("websocket.max_fragments")
DEFAULT_WS_PING_INTERVAL: Final[float] = default("websocket.ping_interval")
DEFAULT_WS_PING_TIMEOUT: Final[float] = default("websocket.ping_timeout")
DEFAULT_WS_HANDSHAKE_TIMEOUT: Final[float] = default("websocket.handshake_timeout")
DEFAULT_WS_MAX_SEND_BUFFER: Final[int] = default("websocket.max_send_buffer")
DEFAULT_WS_MAX_QUEUE: Final[int] = default("websocket.max_queue")


class ConfigError(ServerError, ValueError):
    """A configuration value is invalid; the message names the flag."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and count limits, each enforced with the HTTP status in its comment."""

    max_header_size: int = DEFAULT_MAX_HEADER_SIZE  # 431 (414 when the target alone is too long)
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT  # 431
    max_body_size: int = DEFAULT_MAX_BODY_SIZE  # 413
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # 503 and close
    max_accept_rate: int = default("limits.max_accept_rate")  # 503 + Retry-After; 0: off
    max_pipeline: int = DEFAULT_MAX_PIPELINE  # reading pauses
    write_high_water: int = DEFAULT_WRITE_HIGH_WATER  # send() waits
    backlog: int = DEFAULT_BACKLOG
    h2_max_concurrent_streams: int = default("limits.h2_max_concurrent_streams")  # REFUSED_STREAM
    h2_max_header_list_size: int = default("limits.h2_max_header_list_size")  # GOAWAY
    h2_initial_window_size: int = default("limits.h2_initial_window_size")  # flow control
    h2_max_frame_size: int = default("limits.h2_max_frame_size")  # FRAME_SIZE_ERROR


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds. Checked by a once-per-second sweep, so they fire up to 1 s late."""

    header: float = DEFAULT_HEADER_TIMEOUT
    keepalive: float = DEFAULT_KEEPALIVE_TIMEOUT
    body: float = DEFAULT_BODY_TIMEOUT
    graceful: float = DEFAULT_GRACEFUL_TIMEOUT
    # From the moment a connection is gone to cancelling its app's task.
    application_close: float = DEFAULT_APPLICATION_CLOSE_TIMEOUT
    # An HTTP/2 response waiting for the client's flow-control window: then RST_STREAM.
    h2_stall: float = default("timeouts.h2_stall")


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """WebSocket options; the values a connection uses once upgraded."""

    max_message_size: int = DEFAULT_WS_MAX_MESSAGE_SIZE
    max_frame_size: int = DEFAULT_WS_MAX_FRAME_SIZE
    max_fragments: int = DEFAULT_WS_MAX_FRAGMENTS
    ping_interval: float | None = DEFAULT_WS_PING_INTERVAL
    ping_timeout: float | None = DEFAULT_WS_PING_TIMEOUT
    handshake_timeout: float = DEFAULT_WS_HANDSHAKE_TIMEOUT
    per_message_deflate: bool = default("websocket.per_message_deflate")
    max_send_buffer: int = DEFAULT_WS_MAX_SEND_BUFFER
    max_queue: int = DEFAULT_WS_MAX_QUEUE


LifespanMode = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``tidings serve`` can be told. Build with keywords; validated on creation."""

    app: str | object = ""
    factory: bool = default("factory")
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    uds: str | None = default("uds")
    fd: int | None = default("fd")
    workers: int = default("workers")
    root_path: str = default("root_path")
    proxy_headers: bool = default("proxy_headers")
    forwarded_allow_ips: tuple[str, ...] = default("forwarded_allow_ips")
    access_log: bool = default("access_log")
    log_level: str = default("log_level")
    ssl_certfile: str | None = default("ssl_certfile")
    ssl_keyfile: str | None = default("ssl_keyfile")
    ssl_keyfile_password: str | None = default("ssl_keyfile_password")
    reload: bool = default("reload")
    reload_dirs: tuple[str, ...] = default("reload_dirs")
    lifespan: Literal["auto", "on", "off"] = default("lifespan")  # a LifespanMode
    loop: Literal["auto", "asyncio", "uvloop"] = default("loop")
    metrics_bind: str | None = default("metrics_bind")
    http2: bool = default("http2")
    h2c: bool = default("h2c")
    h2_connect_protocol: bool = default("h2_connect_protocol")
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)

    def __post_init__(self) -> None:
        problem = check(self)
        if problem is not None:
            raise ConfigError(problem)
        # The rules that tie two options together.
        if self.uds is not None and self.fd is not None:
            raise ConfigError("--uds and --fd cannot be used together")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("--ssl-certfile and --ssl-keyfile must be given together")
        metrics, tcp = self.metrics_bind, self.port and self.uds is None and self.fd is None
        if metrics is not None and tcp and metrics.endswith(f":{self.port}"):
            raise ConfigError("--metrics-bind must not use the application's --port")

    @property
    def is_ssl(self) -> bool:
        return self.ssl_certfile is not None

    def replace(self, **changes: object) -> Config:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
