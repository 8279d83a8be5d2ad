"""State shared by every connection of one server process.

One ``ServerState`` lives per worker process. Connections register here so the
once-a-second sweep can enforce timeouts and graceful shutdown can find them;
the sweep also refreshes the cached ``Date`` header so that no request pays for
formatting a timestamp.

The server's clock is ``time.monotonic``: connections stamp their activity with
it and the sweep compares those stamps with its ``now``. ``sweep(now)`` takes the
moment to check against, so a test runs the sweep as it would run some seconds
later instead of waiting for them to pass.

A connection that ends while its app's task still runs hands the task to
``orphaned``; the sweep cancels it if it is still running
``--application-close-timeout`` seconds later (an app that ignores the disconnect
must not hold its task and what it references until shutdown). Nothing is
registered for an app that returned before its connection ended.

``shared_frame`` is the process's frame cache for broadcasts: every member of a
group gets the very same ``str``/``bytes`` object, so its uncompressed WebSocket
frame is built once per process (one event loop, one ``ServerState``) and reused
while that object is sent again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Protocol

from tidings import _metrics
from tidings._types import ASGIApp
from tidings.server._admission import AcceptRate
from tidings.server.config import Config
from tidings.wire import encode_message

if TYPE_CHECKING:
    from tidings.server._proxy import ProxyTrust

__all__ = ["Connection", "ServerState", "fmt_client", "loggable"]

error_log = logging.getLogger("tidings.error")
access_log = logging.getLogger("tidings.access")

# What must not reach a log line raw (nginx escapes the same way, as \xHH): C0 controls
# (CR and LF forge lines, ESC drives terminals), DEL, C1 controls (NEL, CSI), the Unicode
# line and paragraph separators, the quote and backslash (they delimit and escape
# fields), and the surrogates that stand for undecodable bytes of a path (a UTF-8
# handler would fail on them).
_UNSAFE_LOG_CHARS = re.compile(r'[\x00-\x1f\x7f-\x9f"\\\u2028\u2029\udc80-\udcff]')


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code >= 0xDC80:
        return f"\\x{code - 0xDC00:02x}"  # the byte surrogateescape stood for
    if code > 0xFF:
        return f"\\u{code:04x}"
    return f"\\x{code:02x}"


def loggable(text: str) -> str:
    """``text`` from a request, safe to put in a log line: one line, no terminal codes.

    Everything that came from the client (method, path, query, header values,
    forwarded addresses) passes through here where it enters a log message.
    """
    if _UNSAFE_LOG_CHARS.search(text) is None:
        return text
    return _UNSAFE_LOG_CHARS.sub(_escape_char, text)


# A ``sid`` query parameter carries a session id (Tidings' fallback transports): the
# access log keeps its first 6 characters, enough to follow one session, not to use it.
_SESSION_ID_PARAM = re.compile(rb"((?:^|[&;])sid=[^&;]{6})[^&;]+")


def loggable_query(query_string: bytes) -> str:
    """``?query`` for a log line (``""`` when empty): escaped, session ids shortened."""
    if not query_string:
        return ""
    if b"sid=" in query_string:
        query_string = _SESSION_ID_PARAM.sub(rb"\1...", query_string)
    return "?" + loggable(query_string.decode("latin-1"))


def fmt_client(client: tuple[str, int] | None) -> str:
    """``host:port`` of a scope's client for a log line (``-`` when unknown).

    The host may come from ``X-Forwarded-For``, so it is escaped like request data.
    """
    if client is None:
        return "-"
    return f"{loggable(client[0])}:{client[1]}"


class Connection(Protocol):
    """What the sweep and shutdown need from a live connection."""

    def check_timeouts(self, now: float) -> None: ...

    def shutdown(self) -> None:
        """Stop taking new requests; close at once if idle, else after the current one."""

    def abort(self) -> None:
        """Close now (graceful timeout exceeded)."""


class ServerState:
    """Per-process shared state: config, app, live connections, cached headers."""

    def __init__(
        self,
        config: Config,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        *,
        proxy: ProxyTrust | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.loop = loop
        self.proxy = proxy
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.lifespan_state: dict[str, Any] = {}
        self.closing = False
        # Set when graceful shutdown starts; HTTP scopes carry it as the
        # ``tidings.shutdown`` extension so that long responses (event streams,
        # held polls) can end at once instead of holding the shutdown.
        self.shutting_down = asyncio.Event()
        self.shutdown_extension: dict[object, object] = {"event": self.shutting_down}
        self.access_log = config.access_log
        self.date_header = b""
        self.busy_logged_at = -1.0  # last "connection refused" log line
        # --max-accept-rate's token bucket; None when the rate is not limited.
        rate = config.limits.max_accept_rate
        self.admission = AcceptRate(rate, time.monotonic()) if rate else None
        # App tasks whose connection is gone: task -> (deadline, what, path), for the sweep.
        self.orphans: dict[asyncio.Task[None], tuple[float, str, str]] = {}
        # Called with (http_protocol, scope, trailing_bytes) for a WebSocket upgrade.
        self.websocket_upgrade: Callable[[Any, dict[str, Any], bytes], None] | None = None
        # Called with (http_protocol, preface_bytes_before_data, data) when a connection
        # opens with the HTTP/2 preface (h2c prior knowledge); None when h2c is off.
        self.h2c_upgrade: Callable[[Any, int, bytes], None] | None = None
        # The payload ``shared_frame`` framed last (held by identity) and its frame.
        self.framed_payload: str | bytes | None = None
        self._frame = b""
        self.refresh()

        self._idle = asyncio.Event()

    def shared_frame(self, data: str | bytes) -> bytes:
        """The uncompressed WebSocket frame of ``data``, reused while the same object is sent.

        The cache is one entry, compared by identity (``is``): the payload of one
        broadcast is framed once for all its members; an equal payload in a new
        object is framed anew (comparing contents would cost what framing costs).
        """
        if self.framed_payload is not data:
            self._frame = encode_message(data)
            self.framed_payload = data
        return self._frame

    def forget_connection(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if self.closing and not self.connections and not self.tasks:
            self._idle.set()

    def forget_task(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.closing and not self.connections and not self.tasks:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no connection is open and no request task runs (after ``closing``)."""
        if not self.connections and not self.tasks:
            return
        await self._idle.wait()

    def orphaned(self, task: asyncio.Task[None], what: str, path: str) -> None:
        """The connection ``task`` serves is gone: cancel the task if it outlives the timeout.

        Args:
            task: the application task (nothing happens if it has finished).
            what: the request method, or ``WebSocket``, for the log line.
            path: the request path, for the log line.
        """
        if not task.done() and task not in self.orphans:
            deadline = time.monotonic() + self.config.timeouts.application_close
            self.orphans[task] = (deadline, what, path)

    def _reap(self, now: float) -> None:
        orphans = self.orphans
        for task, (deadline, what, path) in list(orphans.items()):
            if task.done():
                del orphans[task]
            elif now >= deadline:
                del orphans[task]
                _metrics.hit("application_close_timeout")
                error_log.warning(
                    "application for %s %s still running %.1f s after its connection closed; "
                    "cancelled (--application-close-timeout)",
                    loggable(what),
                    loggable(path),
                    self.config.timeouts.application_close,
                )
                task.cancel()

    def refresh(self) -> None:
        """Recompute values cached for one second (the Date header)."""
        self.date_header = b"date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"

    def sweep(self, now: float | None = None) -> None:
        """Run once a second: refresh caches, enforce per-connection timeouts, reap orphans.

        Args:
            now: the ``time.monotonic()`` moment to check the timeouts against; the
                current one when omitted (tests pass a later one).
        """
        self.refresh()
        if now is None:
            now = time.monotonic()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        if self.orphans:
            self._reap(now)
