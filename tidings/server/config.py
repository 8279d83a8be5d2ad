"""Server configuration: one frozen value built from CLI flags or keyword arguments.

Every default is a named constant with the reason for its value next to it.
``Config`` is validated when built, so a bad value fails at start-up with the
name of the flag, never later on a live connection.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from tidings.wire.websocket import DEFAULT_MAX_FRAGMENTS

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

DEFAULT_HOST = "127.0.0.1"  # never expose a development server to the network by accident
DEFAULT_PORT = 8000  # what Django's runserver, Daphne and uvicorn use
DEFAULT_BACKLOG = 2048  # uvicorn and gunicorn use 2048; the kernel caps it at somaxconn

# Request line + all header lines together. nginx's default buffers allow
# 4 x 8 KiB and Node.js allows 16 KiB; 32 KiB admits large cookies and JWTs while
# still bounding what one slow client can make us hold.
DEFAULT_MAX_HEADER_SIZE = 32 * 1024
# Apache's LimitRequestFields default: no legitimate client sends more.
DEFAULT_MAX_HEADER_COUNT = 100
# Request bodies larger than this get 413. Large uploads belong in object
# storage; 100 MiB is generous for forms and APIs (nginx defaults to 1 MiB).
DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024
# Open connections per worker process; beyond it new ones get a 503 and are
# closed. Tens of thousands of idle WebSockets fit well under it on one box.
DEFAULT_MAX_CONNECTIONS = 10_000
# Requests a client may pipeline ahead of the one being answered before we stop
# reading from it (responses are still written in request order).
DEFAULT_MAX_PIPELINE = 16
# Above this many bytes queued for a socket, ``await send()`` waits (asyncio's
# own default high-water mark is 64 KiB).
DEFAULT_WRITE_HIGH_WATER = 64 * 1024

# The whole request line and header block must arrive within this many seconds
# of the first byte: this is what defeats slowloris. nginx uses 60 s between
# reads; a total budget is stricter and a real browser needs milliseconds.
DEFAULT_HEADER_TIMEOUT = 10.0
# An idle keep-alive connection is closed after this many seconds (uvicorn: 5 s,
# nginx: 75 s). Browsers reconnect cheaply; idle sockets cost memory.
DEFAULT_KEEPALIVE_TIMEOUT = 5.0
# Longest pause between two reads of a request body the app is waiting for
# (nginx's client_body_timeout is 60 s). Stops a trickled body from holding a
# request open for ever while not limiting a slow but steady upload.
DEFAULT_BODY_TIMEOUT = 30.0
# On SIGTERM, in-flight requests get this long to finish (gunicorn: 30 s).
DEFAULT_GRACEFUL_TIMEOUT = 30.0
# An app still running this long after its connection closed (it ignored
# http.disconnect / websocket.disconnect) is cancelled, so its task and all it
# holds don't live until shutdown. Daphne's --application-close-timeout is 10 s:
# ample for an app's clean-up after a disconnect, short enough not to pile up.
DEFAULT_APPLICATION_CLOSE_TIMEOUT = 10.0

# WebSocket defaults (see docs/reference.md).
DEFAULT_WS_MAX_MESSAGE_SIZE = 1024 * 1024  # 1 MiB, after decompression too
DEFAULT_WS_MAX_FRAME_SIZE = 1024 * 1024  # a single frame can't exceed a message
# Frames one message may span: a message of endless empty fragments is closed with
# 1009 (the rationale is at the wire constant).
DEFAULT_WS_MAX_FRAGMENTS = DEFAULT_MAX_FRAGMENTS
DEFAULT_WS_PING_INTERVAL = 20.0  # below the 30-60 s idle cut-offs of common proxies
DEFAULT_WS_PING_TIMEOUT = 20.0
DEFAULT_WS_HANDSHAKE_TIMEOUT = 10.0  # the app must accept or deny within this
# Bytes queued for a client that does not read, beyond which it is closed with
# 1008: a stalled reader must not grow server memory without bound.
DEFAULT_WS_MAX_SEND_BUFFER = 16 * 1024 * 1024
DEFAULT_WS_MAX_QUEUE = 32  # received messages the app has not consumed; then reading pauses


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and count limits, each enforced with the HTTP status in its comment."""

    max_header_size: int = DEFAULT_MAX_HEADER_SIZE  # 431 (414 when the target alone is too long)
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT  # 431
    max_body_size: int = DEFAULT_MAX_BODY_SIZE  # 413
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # 503 and close
    max_pipeline: int = DEFAULT_MAX_PIPELINE  # reading pauses
    write_high_water: int = DEFAULT_WRITE_HIGH_WATER  # send() waits
    backlog: int = DEFAULT_BACKLOG


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds. Checked by a once-per-second sweep, so they fire up to 1 s late."""

    header: float = DEFAULT_HEADER_TIMEOUT
    keepalive: float = DEFAULT_KEEPALIVE_TIMEOUT
    body: float = DEFAULT_BODY_TIMEOUT
    graceful: float = DEFAULT_GRACEFUL_TIMEOUT
    # From the moment a connection is gone to cancelling its app's task.
    application_close: float = DEFAULT_APPLICATION_CLOSE_TIMEOUT


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """WebSocket options; the values a connection uses once upgraded."""

    max_message_size: int = DEFAULT_WS_MAX_MESSAGE_SIZE
    max_frame_size: int = DEFAULT_WS_MAX_FRAME_SIZE
    max_fragments: int = DEFAULT_WS_MAX_FRAGMENTS
    ping_interval: float | None = DEFAULT_WS_PING_INTERVAL
    ping_timeout: float | None = DEFAULT_WS_PING_TIMEOUT
    handshake_timeout: float = DEFAULT_WS_HANDSHAKE_TIMEOUT
    per_message_deflate: bool = True
    max_send_buffer: int = DEFAULT_WS_MAX_SEND_BUFFER
    max_queue: int = DEFAULT_WS_MAX_QUEUE


LifespanMode = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``tidings serve`` can be told. Build with keywords; validated on creation."""

    app: str | object = ""
    factory: bool = False
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    uds: str | None = None
    fd: int | None = None
    workers: int = 1
    root_path: str = ""
    proxy_headers: bool = False
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    access_log: bool = True
    log_level: str = "info"
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    reload: bool = False
    reload_dirs: tuple[str, ...] = ()
    lifespan: LifespanMode = "auto"
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)

    def __post_init__(self) -> None:
        _check(self.port, 0, 65535, "--port")
        _check(self.workers, 1, 512, "--workers")
        if self.uds is not None and self.fd is not None:
            raise ConfigError("--uds and --fd cannot be used together")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError("--root-path must start with '/' and not end with '/'")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("--ssl-certfile and --ssl-keyfile must be given together")
        if self.log_level.lower() not in {"critical", "error", "warning", "info", "debug", "trace"}:
            raise ConfigError(f"--log-level {self.log_level!r} is not a log level")
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError("--lifespan must be auto, on or off")
        for entry in self.forwarded_allow_ips:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"--forwarded-allow-ips: {entry!r} is not an IP address or network"
                    ) from None
        lim = self.limits
        _check(lim.max_header_size, 1024, 1 << 24, "--max-header-size")
        _check(lim.max_header_count, 1, 10_000, "--max-header-count")
        _check(lim.max_body_size, 0, 1 << 62, "--max-body-size")
        _check(lim.max_connections, 1, 10_000_000, "--max-connections")
        _check(lim.max_pipeline, 1, 10_000, "--max-pipeline")
        _check(lim.write_high_water, 1024, 1 << 30, "--write-high-water")
        _check(lim.backlog, 1, 1 << 20, "--backlog")
        t = self.timeouts
        for name, value in (
            ("--header-timeout", t.header),
            ("--keepalive-timeout", t.keepalive),
            ("--body-timeout", t.body),
            ("--graceful-timeout", t.graceful),
            ("--application-close-timeout", t.application_close),
            ("--ws-handshake-timeout", self.websocket.handshake_timeout),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        ws = self.websocket
        _check(ws.max_message_size, 1, 1 << 40, "--ws-max-message-size")
        _check(ws.max_frame_size, 1, 1 << 40, "--ws-max-frame-size")
        _check(ws.max_fragments, 1, 1 << 30, "--ws-max-fragments")
        _check(ws.max_send_buffer, 1024, 1 << 40, "--ws-max-send-buffer")
        _check(ws.max_queue, 1, 1 << 20, "--ws-max-queue")
        for name, opt in (
            ("--ws-ping-interval", ws.ping_interval),
            ("--ws-ping-timeout", ws.ping_timeout),
        ):
            if opt is not None and not opt > 0:
                raise ConfigError(f"{name} must be positive (or 0 to disable), not {opt!r}")

    @property
    def is_ssl(self) -> bool:
        return self.ssl_certfile is not None

    def replace(self, **changes: object) -> Config:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _check(value: int, low: int, high: int, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{flag} must be an integer from {low} to {high}, not {value!r}")
