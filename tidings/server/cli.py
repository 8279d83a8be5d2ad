"""The ``tidings serve`` command line: options, and turning them into a ``Config``.

``tidings serve module:app [options]`` serves an ASGI 3 application. The
top-level ``tidings`` command (``tidings.cli``) adds the other subcommands.
Every option's help text states its default; docs/reference.md lists them all.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from tidings import __version__
from tidings.server import config as c
from tidings.server.config import Config, ConfigError, Limits, Timeouts, WebSocketSettings

__all__ = ["add_serve_parser", "build_config", "main", "parse_size", "serve_main"]

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """Parse ``1048576``, ``64KiB``, ``1M`` or ``2GiB`` (binary units) into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 65536, 64KiB, 1MiB)")
    unit = (match.group(2) or "")[:1].lower()
    return int(match.group(1)) * _UNITS[unit]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _mib(n: int) -> str:
    if n % (1024**2) == 0:
        return f"{n // 1024**2} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand and its options to a subparsers object."""
    s = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve an ASGI application",
        description="Serve an ASGI 3 application over HTTP/1.1 and WebSocket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("app", help="the application as module:attribute, e.g. mysite.asgi:application")
    s.add_argument("--factory", action="store_true", help="APP is a callable returning the app")
    s.add_argument("--app-dir", default=".", help="directory added to sys.path to import APP")

    g = s.add_argument_group("sockets")
    g.add_argument("--host", default=c.DEFAULT_HOST, help="address to bind (0.0.0.0 or :: for all)")
    g.add_argument("--port", type=int, default=c.DEFAULT_PORT, help="TCP port (0: any free port)")
    g.add_argument("--uds", default=None, help="bind this Unix domain socket instead of TCP")
    g.add_argument("--fd", type=int, default=None, help="serve on this inherited socket fd")
    g.add_argument("--backlog", type=int, default=c.DEFAULT_BACKLOG, help="listen() backlog")
    g.add_argument("--ssl-certfile", default=None, help="TLS certificate chain (PEM)")
    g.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM)")
    g.add_argument("--ssl-keyfile-password", default=None, help="password of the TLS key")

    g = s.add_argument_group("processes")
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the socket (restarted if they die)",
    )
    g.add_argument(
        "--reload", action="store_true", help="restart when .py files change (development)"
    )
    g.add_argument(
        "--reload-dir",
        action="append",
        default=None,
        help="directory to watch with --reload (repeatable; default: the current directory)",
    )
    g.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop; auto uses uvloop when installed",
    )
    g.add_argument(
        "--lifespan",
        choices=["auto", "on", "off"],
        default="auto",
        help="ASGI lifespan events; auto skips them for apps that don't support them",
    )

    g = s.add_argument_group("application")
    g.add_argument(
        "--root-path", default="", help="path prefix the app is mounted at (ASGI root_path)"
    )
    g.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips",
    )
    g.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
        help="comma-separated proxy addresses or networks to trust, or *",
    )

    g = s.add_argument_group("logging")
    g.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per response",
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="log level",
    )

    lim = Limits()
    t = Timeouts()
    g = s.add_argument_group("limits (sizes accept KiB/MiB/GiB suffixes)")
    g.add_argument(
        "--max-header-size",
        type=parse_size,
        default=lim.max_header_size,
        help=f"request line + headers, bytes; larger gets 431 ({_mib(lim.max_header_size)})",
    )
    g.add_argument(
        "--max-header-count",
        type=int,
        default=lim.max_header_count,
        help="header fields; more gets 431",
    )
    g.add_argument(
        "--max-body-size",
        type=parse_size,
        default=lim.max_body_size,
        help=f"request body, bytes; larger gets 413 ({_mib(lim.max_body_size)})",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=lim.max_connections,
        help="open connections per worker; more get 503 and are closed",
    )
    g.add_argument(
        "--max-pipeline",
        type=int,
        default=lim.max_pipeline,
        help="pipelined requests queued before reading pauses",
    )
    g.add_argument(
        "--write-high-water",
        type=parse_size,
        default=lim.write_high_water,
        help="bytes queued per socket before send() waits",
    )
    g.add_argument(
        "--header-timeout",
        type=_seconds,
        default=t.header,
        help="seconds to receive request headers",
    )
    g.add_argument(
        "--keepalive-timeout",
        type=_seconds,
        default=t.keepalive,
        help="seconds an idle keep-alive connection stays open",
    )
    g.add_argument(
        "--body-timeout", type=_seconds, default=t.body, help="seconds the request body may stall"
    )
    g.add_argument(
        "--graceful-timeout",
        type=_seconds,
        default=t.graceful,
        help="seconds in-flight requests get on shutdown",
    )
    g.add_argument(
        "--application-close-timeout",
        type=_seconds,
        default=t.application_close,
        help="seconds an app may keep running after its connection closed; then it is cancelled",
    )

    ws = WebSocketSettings()
    g = s.add_argument_group("WebSocket")
    g.add_argument(
        "--ws-max-message-size",
        type=parse_size,
        default=ws.max_message_size,
        help="largest message, also after decompression; larger closes with 1009 "
        f"({_mib(ws.max_message_size)})",
    )
    g.add_argument(
        "--ws-max-frame-size",
        type=parse_size,
        default=ws.max_frame_size,
        help=f"largest single frame ({_mib(ws.max_frame_size)})",
    )
    g.add_argument(
        "--ws-max-fragments",
        type=int,
        default=ws.max_fragments,
        help=f"frames one message may span; more closes with 1009 ({ws.max_fragments})",
    )
    g.add_argument(
        "--ws-ping-interval",
        type=_seconds,
        default=ws.ping_interval,
        help="seconds between pings (0: none)",
    )
    g.add_argument(
        "--ws-ping-timeout",
        type=_seconds,
        default=ws.ping_timeout,
        help="seconds to wait for a pong before closing (0: never)",
    )
    g.add_argument(
        "--ws-handshake-timeout",
        type=_seconds,
        default=ws.handshake_timeout,
        help="seconds the app has to accept or deny",
    )
    g.add_argument(
        "--ws-per-message-deflate",
        action=argparse.BooleanOptionalAction,
        default=ws.per_message_deflate,
        help="negotiate permessage-deflate compression (RFC 7692)",
    )
    g.add_argument(
        "--ws-max-send-buffer",
        type=parse_size,
        default=ws.max_send_buffer,
        help="bytes queued for a client that doesn't read before it is closed with 1008 "
        f"({_mib(ws.max_send_buffer)})",
    )
    g.add_argument(
        "--ws-max-queue",
        type=int,
        default=ws.max_queue,
        help="received messages the app hasn't read before reading pauses",
    )


def build_config(ns: argparse.Namespace) -> Config:
    """Turn parsed ``serve`` arguments into a validated Config."""

    def optional(seconds: float | None) -> float | None:
        return seconds if seconds else None

    return Config(
        app=ns.app,
        factory=ns.factory,
        host=ns.host,
        port=ns.port,
        uds=ns.uds,
        fd=ns.fd,
        workers=ns.workers,
        root_path=ns.root_path,
        proxy_headers=ns.proxy_headers,
        forwarded_allow_ips=tuple(
            x.strip() for x in ns.forwarded_allow_ips.split(",") if x.strip()
        ),
        access_log=ns.access_log,
        log_level=ns.log_level,
        ssl_certfile=ns.ssl_certfile,
        ssl_keyfile=ns.ssl_keyfile,
        ssl_keyfile_password=ns.ssl_keyfile_password,
        reload=ns.reload,
        reload_dirs=tuple(ns.reload_dir or ()),
        lifespan=ns.lifespan,
        loop=ns.loop,
        limits=Limits(
            max_header_size=ns.max_header_size,
            max_header_count=ns.max_header_count,
            max_body_size=ns.max_body_size,
            max_connections=ns.max_connections,
            max_pipeline=ns.max_pipeline,
            write_high_water=ns.write_high_water,
            backlog=ns.backlog,
        ),
        timeouts=Timeouts(
            header=ns.header_timeout,
            keepalive=ns.keepalive_timeout,
            body=ns.body_timeout,
            graceful=ns.graceful_timeout,
            application_close=ns.application_close_timeout,
        ),
        websocket=WebSocketSettings(
            max_message_size=ns.ws_max_message_size,
            max_frame_size=ns.ws_max_frame_size,
            max_fragments=ns.ws_max_fragments,
            ping_interval=optional(ns.ws_ping_interval),
            ping_timeout=optional(ns.ws_ping_timeout),
            handshake_timeout=ns.ws_handshake_timeout,
            per_message_deflate=ns.ws_per_message_deflate,
            max_send_buffer=ns.ws_max_send_buffer,
            max_queue=ns.ws_max_queue,
        ),
    )


def serve_main(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``tidings serve`` with parsed arguments; return the exit status."""
    try:
        config = build_config(ns)
    except ConfigError as exc:
        parser.error(str(exc))
    from tidings.server.main import run

    try:
        return run(config)
    except ConfigError as exc:
        print(f"tidings: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tidings.server.cli serve ...``: the server alone, without Django parts."""
    parser = argparse.ArgumentParser(prog="tidings", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_serve_parser(sub)
    ns = parser.parse_args(argv)
    add_app_dir(ns.app_dir)
    return serve_main(ns, parser)


def add_app_dir(app_dir: str) -> None:
    """Make ``module:app`` importable from ``--app-dir`` (the current directory by default)."""
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
