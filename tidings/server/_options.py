"""The server's option table: every ``tidings serve`` option, declared once.

Theory of operation
-------------------
Each :class:`Option` says where its value lives in :class:`~tidings.server.config.Config`
(``section`` and ``field``), its flag, its :class:`Kind` (how argparse reads it and how
the parsed value becomes the config value), its default and why that default, its
bounds or check, and its ``--help`` text. From :data:`OPTIONS`:

* ``config.py`` takes the dataclass defaults and the ``DEFAULT_*`` constants, and
  ``Config.__post_init__`` validates every field in one loop (:func:`check`);
* ``cli.py`` builds the ``serve`` parser and turns its namespace into a ``Config``;
* ``tests/test_docs_reference.py`` compares docs/reference.md with the parser.

The table is built once, at import; nothing here runs per connection. Only the rules
that tie two options together (``--uds`` with ``--fd``, the TLS pair) live in
``Config.__post_init__``. Do not add options that are not server options: this module
imports nothing outside the standard library and ``tidings.wire``.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final, Literal

from tidings.wire.websocket import DEFAULT_MAX_FRAGMENTS

__all__ = [
    "COMMA_LIST",
    "INT",
    "LOG_LEVELS",
    "OPTIONS",
    "REPEATED",
    "SECONDS",
    "SECONDS_OR_OFF",
    "SIZE",
    "SWITCH",
    "TEXT",
    "TOGGLE",
    "Check",
    "Kind",
    "Option",
    "check",
    "default",
    "human_size",
    "parse_seconds",
    "parse_size",
    "split_host_port",
]

Section = Literal["", "limits", "timeouts", "websocket"]

LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug", "trace")

# -- reading values from the command line ---------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """Parse ``1048576``, ``64KiB``, ``1M`` or ``2GiB`` (binary units) into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 65536, 64KiB, 1MiB)")
    unit = (match.group(2) or "")[:1].lower()
    return int(match.group(1)) * _UNITS[unit]


def parse_seconds(text: str) -> float:
    """Parse a non-negative number of seconds (``0.5``, ``30``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def human_size(n: int) -> str:
    """``1048576`` -> ``1 MiB``, ``65536`` -> ``64 KiB``, ``1000`` -> ``1000 bytes``."""
    if n % (1024**2) == 0:
        return f"{n // 1024**2} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


# -- validating config values ---------------------------------------------------------------

# A check gets the flag and the value and returns what is wrong with it, or None.
Check = Callable[[str, Any], str | None]


def _integer(low: int, high: int) -> Check:
    def check(flag: str, value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"{flag} must be an integer from {low} to {high}, not {value!r}"

    return check


def _positive_seconds(flag: str, value: Any) -> str | None:
    if value > 0:  # also refuses nan
        return None
    return f"{flag} must be a positive number of seconds, not {value!r}"


def _positive_or_off(flag: str, value: Any) -> str | None:
    if value is None or value > 0:
        return None
    return f"{flag} must be positive (or 0 to disable), not {value!r}"


def _root_path(flag: str, value: Any) -> str | None:
    if value and (not value.startswith("/") or value.endswith("/")):
        return f"{flag} must start with '/' and not end with '/'"
    return None


def _log_level(flag: str, value: Any) -> str | None:
    return None if value.lower() in LOG_LEVELS else f"{flag} {value!r} is not a log level"


def _lifespan(flag: str, value: Any) -> str | None:
    return None if value in ("auto", "on", "off") else f"{flag} must be auto, on or off"


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``; ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (examples: 127.0.0.1:9100, [::1]:9100)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:9100")
    return host, int(port)


def _host_port(flag: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        split_host_port(value)
    except ValueError as exc:
        return f"{flag}: {exc}"
    return None


def _networks(flag: str, value: Any) -> str | None:
    for entry in value:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return f"{flag}: {entry!r} is not an IP address or network"
    return None


# -- kinds: how argparse reads an option and how its value reaches Config ------------------


def _same(value: Any) -> Any:
    return value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True, slots=True)
class Kind:
    """How an option is read from the command line and handed to ``Config``.

    Attributes:
        parse: argparse's ``type=`` (None: the text itself).
        action: argparse's ``action=``.
        to_config: parsed value -> ``Config`` value.
        to_cli: ``Config`` default -> the parser's default.
        check: applied to every value of this kind (before the option's own).
    """

    parse: Callable[[str], Any] | None = None
    action: str | type[argparse.Action] = "store"
    to_config: Callable[[Any], Any] = _same
    to_cli: Callable[[Any], Any] = _same
    check: Check | None = None


TEXT: Final = Kind()
INT: Final = Kind(parse=int)
SIZE: Final = Kind(parse=parse_size)
SECONDS: Final = Kind(parse=parse_seconds, check=_positive_seconds)
# 0 on the command line turns the feature off: None in Config.
SECONDS_OR_OFF: Final = Kind(
    parse=parse_seconds, to_config=lambda v: v or None, check=_positive_or_off
)
SWITCH: Final = Kind(action="store_true")  # --reload
TOGGLE: Final = Kind(action=argparse.BooleanOptionalAction)  # --access-log / --no-access-log
COMMA_LIST: Final = Kind(to_config=_csv, to_cli=",".join)
REPEATED: Final = Kind(
    action="append", to_config=lambda v: tuple(v or ()), to_cli=lambda d: list(d) or None
)


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One server option: where it lives, how it is read, its default and why.

    Attributes:
        section: the ``Config`` attribute holding it ("" for ``Config`` itself).
        field: its name there; None for a command-line-only option (``--app-dir``).
        flag: the command-line flag; error messages name it.
        group: the ``--help`` section (None: the command's own options).
        default: the ``Config`` default.
        help: the ``--help`` text (the default is appended by argparse).
        why: the reason for the default (as nginx, uvicorn or Daphne would have it).
        kind: how it is parsed and converted.
        bounds: inclusive bounds of an integer option.
        choices: the values the command line accepts.
        check: a check of its own, after the kind's.
        env: an environment variable that replaces the command-line default.
    """

    section: Section
    field: str | None
    flag: str
    group: str | None
    default: Any
    help: str
    _: KW_ONLY
    why: str = ""
    kind: Kind = TEXT
    bounds: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    env: str | None = None

    @property
    def dest(self) -> str:
        """The argparse destination (``--reload-dir`` -> ``reload_dir``)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def path(self) -> str:
        """``limits.max_header_size``, or ``port`` for a field of ``Config`` itself."""
        return f"{self.section}.{self.field}" if self.section else str(self.field)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this option, or None."""
        checks = (
            self.kind.check,
            _integer(*self.bounds) if self.bounds else None,
            self.check,
        )
        for rule in checks:
            if rule is not None and (problem := rule(self.flag, value)) is not None:
                return problem
        return None


_SOCKETS = "sockets"
_PROCESSES = "processes"
_APPLICATION = "application"
_LOGGING = "logging"
_LIMITS = "limits (sizes accept KiB/MiB/GiB suffixes)"
_WEBSOCKET = "WebSocket"
_HTTP2 = "HTTP/2"

# fmt: off
OPTIONS: Final[tuple[Option, ...]] = (
    Option("", "factory", "--factory", None, False, "APP is a callable returning the app",
           kind=SWITCH),
    Option("", None, "--app-dir", None, ".", "directory added to sys.path to import APP"),
    # -- sockets
    Option("", "host", "--host", _SOCKETS, "127.0.0.1",
           "address to bind (0.0.0.0 or :: for all)",
           why="never expose a development server to the network by accident"),
    Option("", "port", "--port", _SOCKETS, 8000, "TCP port (0: any free port)",
           why="what Django's runserver, Daphne and uvicorn use", kind=INT, bounds=(0, 65535)),
    Option("", "uds", "--uds", _SOCKETS, None,
           "bind this Unix domain socket instead of TCP"),
    Option("", "fd", "--fd", _SOCKETS, None, "serve on this inherited socket fd", kind=INT),
    Option("limits", "backlog", "--backlog", _SOCKETS, 2048, "listen() backlog",
           why="uvicorn and gunicorn use 2048; the kernel caps it at somaxconn",
           kind=INT, bounds=(1, 1 << 20)),
    Option("", "ssl_certfile", "--ssl-certfile", _SOCKETS, None,
           "TLS certificate chain (PEM)"),
    Option("", "ssl_keyfile", "--ssl-keyfile", _SOCKETS, None, "TLS private key (PEM)"),
    Option("", "ssl_keyfile_password", "--ssl-keyfile-password", _SOCKETS, None,
           "password of the TLS key"),
    # -- processes
    Option("", "workers", "--workers", _PROCESSES, 1,
           "worker processes sharing the socket (restarted if they die)",
           kind=INT, bounds=(1, 512)),
    Option("", "reload", "--reload", _PROCESSES, False,
           "restart when .py files change (development)", kind=SWITCH),
    Option("", "reload_dirs", "--reload-dir", _PROCESSES, (),
           "directory to watch with --reload (repeatable; default: the current directory)",
           kind=REPEATED),
    Option("", "loop", "--loop", _PROCESSES, "auto",
           "event loop; auto uses uvloop when installed",
           choices=("auto", "asyncio", "uvloop")),
    Option("", "lifespan", "--lifespan", _PROCESSES, "auto",
           "ASGI lifespan events; auto skips them for apps that don't support them",
           choices=("auto", "on", "off"), check=_lifespan),
    # -- application
    Option("", "root_path", "--root-path", _APPLICATION, "",
           "path prefix the app is mounted at (ASGI root_path)", check=_root_path),
    Option("", "proxy_headers", "--proxy-headers", _APPLICATION, False,
           "trust X-Forwarded-For/-Proto from --forwarded-allow-ips",
           why="X-Forwarded-* headers are forgeable unless a known proxy sets them",
           kind=TOGGLE),
    Option("", "forwarded_allow_ips", "--forwarded-allow-ips", _APPLICATION,
           ("127.0.0.1", "::1"), "comma-separated proxy addresses or networks to trust, or *",
           why="a proxy on the same host",
           kind=COMMA_LIST, check=_networks, env="FORWARDED_ALLOW_IPS"),
    # -- logging
    Option("", "access_log", "--access-log", _LOGGING, True, "log one line per response",
           kind=TOGGLE),
    Option("", "log_level", "--log-level", _LOGGING, "info", "log level",
           choices=LOG_LEVELS, check=_log_level),
    Option("", "metrics_bind", "--metrics-bind", _LOGGING, None,
           "serve Prometheus metrics of every worker on HOST:PORT (a listener of its own)",
           why="off: an open metrics port tells anyone who reaches it about the site",
           check=_host_port),
    # -- limits
    Option("limits", "max_header_size", "--max-header-size", _LIMITS, 32 * 1024,
           "request line + headers, bytes; larger gets 431",
           why="request line + all header lines together. nginx's default buffers allow "
           "4 x 8 KiB and Node.js allows 16 KiB; 32 KiB admits large cookies and JWTs while "
           "still bounding what one slow client can make us hold",
           kind=SIZE, bounds=(1024, 1 << 24)),
    Option("limits", "max_header_count", "--max-header-count", _LIMITS, 100,
           "header fields; more gets 431",
           why="Apache's LimitRequestFields default: no legitimate client sends more",
           kind=INT, bounds=(1, 10_000)),
    Option("limits", "max_body_size", "--max-body-size", _LIMITS, 100 * 1024 * 1024,
           "request body, bytes; larger gets 413",
           why="large uploads belong in object storage; 100 MiB is generous for forms and "
           "APIs (nginx defaults to 1 MiB)",
           kind=SIZE, bounds=(0, 1 << 62)),
    Option("limits", "max_connections", "--max-connections", _LIMITS, 10_000,
           "open connections per worker; more get 503 and are closed",
           why="tens of thousands of idle WebSockets fit well under it on one box",
           kind=INT, bounds=(1, 10_000_000)),
    Option("limits", "max_accept_rate", "--max-accept-rate", _LIMITS, 2000,
           "new connections a worker takes per second (bursts as large); more get 503 "
           "with Retry-After and are closed (0: no limit)",
           why="the clients of a dead or restarted worker come back all at once; above "
           "what one worker completes in a second on a small machine, so that a restart "
           "is not slowed, while a storm or a flood is refused cheaply (nginx's "
           "limit_conn and HAProxy's rate-limit sessions are off by default)",
           kind=INT, bounds=(0, 10_000_000)),
    Option("limits", "max_pipeline", "--max-pipeline", _LIMITS, 16,
           "pipelined requests queued before reading pauses",
           why="responses are still written in request order; a client that pipelines "
           "more waits for us to catch up",
           kind=INT, bounds=(1, 10_000)),
    Option("limits", "write_high_water", "--write-high-water", _LIMITS, 64 * 1024,
           "bytes queued per socket before send() waits",
           why="asyncio's own default high-water mark is 64 KiB",
           kind=SIZE, bounds=(1024, 1 << 30)),
    # -- timeouts (same --help group as the limits, as before)
    Option("timeouts", "header", "--header-timeout", _LIMITS, 10.0,
           "seconds to receive request headers",
           why="the whole request line and header block must arrive within this of the "
           "first byte: this is what defeats slowloris. nginx uses 60 s between reads; a "
           "total budget is stricter and a real browser needs milliseconds",
           kind=SECONDS),
    Option("timeouts", "keepalive", "--keepalive-timeout", _LIMITS, 5.0,
           "seconds an idle keep-alive connection stays open",
           why="uvicorn: 5 s, nginx: 75 s. Browsers reconnect cheaply; idle sockets cost "
           "memory",
           kind=SECONDS),
    Option("timeouts", "body", "--body-timeout", _LIMITS, 30.0,
           "seconds the request body may stall",
           why="nginx's client_body_timeout is 60 s. Stops a trickled body from holding a "
           "request open for ever while not limiting a slow but steady upload",
           kind=SECONDS),
    Option("timeouts", "graceful", "--graceful-timeout", _LIMITS, 30.0,
           "seconds in-flight requests get on shutdown", why="gunicorn: 30 s", kind=SECONDS),
    Option("timeouts", "application_close", "--application-close-timeout", _LIMITS, 10.0,
           "seconds an app may keep running after its connection closed; then it is cancelled",
           why="an app that ignored http.disconnect / websocket.disconnect must not hold its "
           "task until shutdown. Daphne's --application-close-timeout is 10 s: ample for "
           "clean-up after a disconnect, short enough not to pile up",
           kind=SECONDS),
    # -- WebSocket
    Option("websocket", "max_message_size", "--ws-max-message-size", _WEBSOCKET, 1024 * 1024,
           "largest message, also after decompression; larger closes with 1009",
           why="1 MiB, after decompression too", kind=SIZE, bounds=(1, 1 << 40)),
    Option("websocket", "max_frame_size", "--ws-max-frame-size", _WEBSOCKET, 1024 * 1024,
           "largest single frame", why="a single frame can't exceed a message",
           kind=SIZE, bounds=(1, 1 << 40)),
    Option("websocket", "max_fragments", "--ws-max-fragments", _WEBSOCKET,
           DEFAULT_MAX_FRAGMENTS, "frames one message may span; more closes with 1009",
           why="a message of endless empty fragments is closed with 1009 (the rationale is "
           "at the wire constant)",
           kind=INT, bounds=(1, 1 << 30)),
    Option("websocket", "ping_interval", "--ws-ping-interval", _WEBSOCKET, 20.0,
           "seconds between pings (0: none)",
           why="below the 30-60 s idle cut-offs of common proxies", kind=SECONDS_OR_OFF),
    Option("websocket", "ping_timeout", "--ws-ping-timeout", _WEBSOCKET, 20.0,
           "seconds to wait for a pong before closing (0: never)",
           kind=SECONDS_OR_OFF),
    Option("websocket", "handshake_timeout", "--ws-handshake-timeout", _WEBSOCKET, 10.0,
           "seconds the app has to accept or deny", kind=SECONDS),
    Option("websocket", "per_message_deflate", "--ws-per-message-deflate", _WEBSOCKET, True,
           "negotiate permessage-deflate compression (RFC 7692)", kind=TOGGLE),
    Option("websocket", "max_send_buffer", "--ws-max-send-buffer", _WEBSOCKET,
           16 * 1024 * 1024,
           "bytes queued for a client that doesn't read before it is closed with 1008",
           why="a stalled reader must not grow server memory without bound",
           kind=SIZE, bounds=(1024, 1 << 40)),
    Option("websocket", "max_queue", "--ws-max-queue", _WEBSOCKET, 32,
           "received messages the app hasn't read before reading pauses",
           why="received messages the app has not consumed; then reading pauses",
           kind=INT, bounds=(1, 1 << 20)),
    # -- HTTP/2
    Option("", "http2", "--http2", _HTTP2, True,
           "serve HTTP/2: ALPN h2 with TLS, and cleartext h2c unless --no-h2c",
           why="browsers use HTTP/2 for every HTTPS page and open only 6 HTTP/1.1 "
           "connections per site", kind=TOGGLE),
    Option("", "h2c", "--h2c", _HTTP2, True,
           "accept cleartext HTTP/2 with prior knowledge (told apart by its preface)",
           why="HAProxy and Envoy reach backends this way; the preface can't be mistaken "
           "for an HTTP/1.1 request", kind=TOGGLE),
    Option("", "h2_connect_protocol", "--h2-connect-protocol", _HTTP2, True,
           "offer WebSocket over HTTP/2 (RFC 8441: SETTINGS_ENABLE_CONNECT_PROTOCOL)",
           why="browsers then open wss:// on the page's HTTP/2 connection; turn it off to "
           "keep every WebSocket on its own HTTP/1.1 connection", kind=TOGGLE),
    Option("limits", "h2_max_concurrent_streams", "--h2-max-concurrent-streams", _HTTP2, 100,
           "streams one HTTP/2 connection may have open; more are refused (REFUSED_STREAM)",
           why="RFC 9113 section 6.5.2 recommends no fewer than 100; nginx uses 128",
           kind=INT, bounds=(1, 10_000)),
    Option("limits", "h2_max_header_list_size", "--h2-max-header-list-size", _HTTP2,
           32 * 1024, "decoded header list (and compressed header block) of an HTTP/2 request",
           why="the same budget as --max-header-size; it also caps an HPACK bomb and an "
           "endless CONTINUATION sequence", kind=SIZE, bounds=(1024, 1 << 24)),
    Option("limits", "h2_initial_window_size", "--h2-initial-window-size", _HTTP2,
           64 * 1024, "request body bytes a client may send on a stream before the app reads",
           why="the RFC's default window (64 KiB); nginx pre-reads 64 KiB per stream",
           kind=SIZE, bounds=(1024, (1 << 31) - 1)),
    Option("limits", "h2_max_frame_size", "--h2-max-frame-size", _HTTP2, 16 * 1024,
           "largest HTTP/2 frame payload the client may send",
           why="the RFC's minimum and default (RFC 9113 section 6.5.2)",
           kind=SIZE, bounds=(1 << 14, (1 << 24) - 1)),
    Option("timeouts", "h2_stall", "--h2-stall-timeout", _HTTP2, 30.0,
           "seconds an HTTP/2 response may wait for the client to open its flow-control window",
           why="a client that never reads must not hold a stream, its app and its buffer for "
           "ever; as long as --body-timeout for the other direction",
           kind=SECONDS),
)
# fmt: on

_BY_PATH: Final = {option.path: option for option in OPTIONS if option.field is not None}


def default(path: str) -> Any:
    """The default of the option at ``path`` (``"port"``, ``"limits.backlog"``)."""
    return _BY_PATH[path].default


def check(config: object) -> str | None:
    """The first problem with any field of ``config`` (a ``Config``), or None."""
    for option in _BY_PATH.values():
        owner = getattr(config, option.section) if option.section else config
        problem = option.problem(getattr(owner, str(option.field)))
        if problem is not None:
            return problem
    return None
