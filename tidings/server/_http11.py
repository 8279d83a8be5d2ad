"""HTTP/1.1 over asyncio: one ``HttpProtocol`` per TCP connection.

Theory of operation
-------------------
httptools (llhttp) parses; its callbacks land on the protocol object. Each
request becomes a ``RequestCycle`` (``tidings.server._cycle``) holding the ASGI
scope, the buffered request body and the response state, and is run as one task.
Requests are answered strictly in arrival order (RFC 9112 section 9.3.2): while a
cycle is active, later pipelined requests wait in ``_queue`` and reading pauses
once ``max_pipeline`` are waiting.

Invariants:
- At most one cycle writes to the transport at a time (``_active``).
- Nothing buffers without bound: the header block is counted while it is still
  inside the parser; an unread request body pauses reading at ``_BODY_HIGH_WATER``;
  ``send()`` waits while the transport is above its high-water mark.
- A malformed request gets one status line (400, 413, 414, 431, 501, 505),
  ``Connection: close``, one log line and no traceback; requests already
  queued before it are answered first.
- Nothing the app sends is written unchecked (the cycle's invariants, in ``_cycle``).
- Timeouts are not timers per request: the server's once-a-second sweep calls
  ``check_timeouts``, which keeps the hot path free of ``call_later``.
- Every cycle whose app task runs is in ``_running`` until the task ends, also
  after its response is complete: when the connection is lost those tasks go to
  ``ServerState.orphaned``, which cancels any still running after
  ``--application-close-timeout``.

What must not go here: the request/response exchange (``RequestCycle`` in
``_cycle``), WebSocket framing (``tidings.wire`` and ``tidings.server._websocket``)
and anything that knows about Django.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import unquote

import httptools

from tidings import _metrics
from tidings.server._addresses import socket_addresses
from tidings.server._admission import refuse
from tidings.server._cycle import (
    PAUSE_BODY,
    PAUSE_PIPELINE,
    PAUSE_STOP,
    ClientDisconnected,
    RequestCycle,
)
from tidings.server._flow import WriteFlowControl
from tidings.server._state import ServerState, error_log, fmt_client
from tidings.wire.http11 import RequestError, check_request_head, simple_response

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "SHUTDOWN_EXTENSION",
    "ClientDisconnected",
    "HttpProtocol",
    "RequestCycle",
    "simple_response",
]

_ASGI_VERSIONS: Final = {"version": "3.0", "spec_version": "2.4"}
_EXTENSIONS: Final[dict[str, dict[object, object]]] = {
    "http.response.trailers": {},
    "http.response.pathsend": {},
}
#: The extension that announces graceful shutdown: ``{"event": asyncio.Event}``, set
#: when it starts. A response that streams until the client leaves (SSE, a held long
#: poll) should then send its last data and complete; the server waits for it only
#: up to --graceful-timeout.
SHUTDOWN_EXTENSION: Final = "tidings.shutdown"

_METHODS: dict[bytes, str] = {
    m: m.decode("ascii")
    for m in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS")
}

# Header names the protocol itself must look at (RFC 9112 sections 3.2, 6 and 9.6).
_HOST, _EXPECT, _TE, _CL, _UPGRADE, _XFF, _XFP = range(7)
_SPECIAL: Final = {
    b"host": _HOST,
    b"expect": _EXPECT,
    b"transfer-encoding": _TE,
    b"content-length": _CL,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
}

# Minimum average request body rate in bytes/s once --body-timeout has passed
# (Apache's mod_reqtimeout uses 500; we allow a little more slack for nothing).
_MIN_BODY_RATE: Final = 500
# Unread request body above which reading pauses until the app calls receive().
_BODY_HIGH_WATER: Final = 256 * 1024

_OWS: Final = (b" ", b"\t")

# The limit behind a refused request's status (431 is also --max-header-count's).
_LIMIT_OF_STATUS: Final = {413: "max_body_size", 414: "max_header_size", 431: "max_header_size"}


class HttpProtocol(WriteFlowControl, asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests, runs the ASGI app per request."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        config = state.config
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.root_path = config.root_path
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "https" if config.is_ssl else "http"
        self._extensions = {**_EXTENSIONS, SHUTDOWN_EXTENSION: state.shutdown_extension}
        # Request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_size = 0
        self._in_headers = False
        self._raw_bytes = 0  # bytes fed while inside a header block
        self._host_count = 0
        self._expect_continue = False
        self._te: bytes | None = None
        self._content_length = -1
        self._upgrade: bytes | None = None
        self._xff: bytes | None = None
        self._xfp: bytes | None = None
        self._parsing: RequestCycle | None = None
        # Requests answered in order.
        self._active: RequestCycle | None = None
        self._running: set[RequestCycle] = set()  # cycles whose app task has not ended
        self._queue: deque[RequestCycle | RequestError] = deque()
        self._paused = 0
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closing = False  # no further requests on this connection
        self._lost = False
        self._failed = False
        now = time.monotonic()
        self._header_start: float | None = now
        self._idle_since: float | None = None
        # Hook for the WebSocket upgrade; set by the server when WebSocket is on.
        self.upgrade_handler: Callable[[HttpProtocol, dict[str, Any], bytes], None] | None = (
            state.websocket_upgrade
        )
        self._pending_upgrade: dict[str, Any] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        state = self.state
        bucket = state.admission
        if bucket is not None and (retry_after := bucket.admit(now := time.monotonic())):
            self._closing = True  # over --max-accept-rate: 503 before anything is read
            refuse(transport, bucket, retry_after, now)
            return
        state.connections.add(self)
        if len(state.connections) > self.limits.max_connections or state.closing:
            # Over the limit, or accepted while shutting down: answer 503 and close
            # rather than hold the socket unanswered (the client sees why; a load
            # balancer can retry elsewhere).
            if not state.closing:
                _metrics.hit("max_connections")
            now = time.monotonic()
            if now - state.busy_logged_at >= 1.0:  # one line a second under a flood
                state.busy_logged_at = now
                if state.closing:
                    error_log.info("connection refused: the server is shutting down")
                else:
                    error_log.warning(
                        "connection refused: %d open connections is the limit (--max-connections)",
                        self.limits.max_connections,
                    )
            self._closing = True
            why = "Server shutting down" if state.closing else "Server busy, try again later"
            transport.write(simple_response(503, why))
            transport.close()
            return
        transport.set_write_buffer_limits(high=self.limits.write_high_water)
        self.client, self.server = socket_addresses(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        state = self.state
        state.forget_connection(self)
        for cycle in (self._active, self._parsing):
            if cycle is not None:
                cycle.on_disconnect()
        for cycle in self._running:
            # Also apps still running after their response was complete.
            cycle.on_disconnect()
            if cycle.task is not None:
                state.orphaned(cycle.task, cycle.scope["method"], cycle.scope["path"])
        for item in self._queue:
            if isinstance(item, RequestCycle):
                item.on_disconnect()
        self._queue.clear()
        self._release_drain_waiters()

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        if self._parsing is None:
            self._raw_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            err = exc.__context__
            if isinstance(err, RequestError):
                self._fail(err)
            else:
                error_log.error("internal error while parsing a request", exc_info=err)
                self._fail(RequestError(500, "internal error"))
            return
        except httptools.HttpParserError as exc:
            if self.parser.get_method() == b"PRI" and self._h2c(data):
                return
            self._fail(RequestError(400, _parser_reason(exc)))
            return
        if self._in_headers and self._raw_bytes > self.limits.max_header_size:
            # The parser holds the partial header block; cut it off here.
            self._fail(RequestError(431, "request header block too large"))

    def eof_received(self) -> bool | None:
        # The client closed its side. Browsers never half-close, and a server
        # streaming to a client that left (SSE, long downloads) must find out
        # now, not at its next write: treat EOF as the client going away.
        # Returning False lets the transport close; connection_lost follows.
        self._closing = True
        return False

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_size = 0
        self._in_headers = True
        self._host_count = 0
        self._expect_continue = False
        self._te = None
        self._content_length = -1
        self._upgrade = None
        self._xff = None
        self._xfp = None
        self._idle_since = None
        self._header_start = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_header_size:
            raise RequestError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self.limits.max_header_size:
            raise RequestError(431, "request header block too large")
        if not self._in_headers:
            # Trailer fields of a chunked body (RFC 9112 section 7.1.2): counted
            # against the header budget and discarded.
            return
        name = name.lower()
        if value[-1:] in _OWS:
            # llhttp strips leading whitespace only; a field value excludes
            # trailing whitespace too (RFC 9110 section 5.5).
            value = value.rstrip(b" \t")
        headers = self._headers
        headers.append((name, value))
        if len(headers) > self.limits.max_header_count:
            raise RequestError(431, "too many request header fields")
        kind = _SPECIAL.get(name)
        if kind is None:
            return
        if kind == _HOST:
            self._host_count += 1
        elif kind == _EXPECT:
            if value.lower() == b"100-continue":
                self._expect_continue = True
        elif kind == _TE:
            self._te = value if self._te is None else self._te + b"," + value
        elif kind == _CL:
            self._content_length = int(value)  # llhttp has validated the digits
        elif kind == _UPGRADE:
            self._upgrade = value
        elif kind == _XFF:
            self._xff = value if self._xff is None else self._xff + b"," + value
        elif kind == _XFP:
            self._xfp = value

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_start = None
        self._raw_bytes = 0
        parser = self.parser
        # By position: once per request, and cheaper than by keyword.
        head = check_request_head(
            parser.get_http_version(),
            self._host_count,
            self._te,
            self._content_length,
            self.limits.max_body_size,
        )
        version = head.version

        raw = self._url
        if raw[:1] == b"/":  # origin-form (RFC 9112 section 3.2.1), nearly always
            q = raw.find(b"?")
            if q < 0:
                raw_path, query = raw, b""
            else:
                raw_path, query = raw[:q], raw[q + 1 :]
        else:
            raw_path, query = _other_target(raw)
        path = raw_path.decode("utf-8", "surrogateescape")
        if "%" in path:
            path = unquote(path)
        root_path = self.root_path
        if root_path:
            path = root_path + path
            raw_path = root_path.encode("utf-8") + raw_path
        client = self.client
        scheme = self.scheme
        proxy = self.state.proxy
        # A Unix-socket peer (client None) is local and chosen by file permissions:
        # trusted like an allowed address when proxy headers are on.
        if proxy is not None and (client is None or proxy.is_trusted(client[0])):
            client, scheme = self._forwarded(client, scheme)
        method = parser.get_method()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI_VERSIONS,
            "http_version": version,
            "method": _METHODS.get(method) or method.decode("ascii"),
            "scheme": scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": root_path,
            "headers": self._headers,
            "client": client,
            "server": self.server,
            "state": self.state.lifespan_state.copy(),
            "extensions": self._extensions,
        }
        if self._upgrade is not None and self._websocket_upgrade():
            # Handled in data_received once the parser reports the upgrade.
            self._pending_upgrade = scope
            return
        cycle = RequestCycle(
            self,
            scope,
            keep_alive=parser.should_keep_alive() and not self._closing,
            expect_continue=self._expect_continue and version == "1.1",
        )
        cycle.started = cycle.last_body = now = time.monotonic()
        cycle.body_deadline = now + self.timeouts.body
        self._parsing = cycle
        if self._active is None and not self._queue:
            self._start(cycle)
        else:
            self._queue.append(cycle)
            if len(self._queue) >= self.limits.max_pipeline:
                self._pause(PAUSE_PIPELINE)

    def _forwarded(
        self, client: tuple[str, int] | None, scheme: str
    ) -> tuple[tuple[str, int] | None, str]:
        """Client and scheme as a trusted proxy's X-Forwarded-* fields give them."""
        proxy = self.state.proxy
        assert proxy is not None
        if self._xfp is not None:
            proto = self._xfp.decode("latin-1").split(",")[-1].strip().lower()
            if proto in ("http", "https", "ws", "wss"):
                scheme = "https" if proto in ("https", "wss") else "http"
        if self._xff is not None:
            forwarded = proxy.client_from(self._xff)
            if forwarded is not None:
                client = (forwarded, 0)
        return client, scheme

    def _websocket_upgrade(self) -> bool:
        upgrade = self._upgrade
        return (
            upgrade is not None
            and self.upgrade_handler is not None
            and self.parser.should_upgrade()
            and b"websocket" in upgrade.lower()
        )

    def on_body(self, body: bytes) -> None:
        cycle = self._parsing
        if cycle is None:
            return
        cycle.body_size += len(body)
        if cycle.body_size > self.limits.max_body_size:
            raise RequestError(413, "request body larger than --max-body-size")
        if cycle.discard_body:
            cycle.last_body = time.monotonic()
            cycle.body_deadline += len(body) / _MIN_BODY_RATE
            return
        cycle.body.append(body)
        cycle.buffered += len(body)
        cycle.last_body = time.monotonic()
        cycle.body_deadline += len(body) / _MIN_BODY_RATE
        waiter = cycle.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if cycle.buffered > _BODY_HIGH_WATER:
            self._pause(PAUSE_BODY)

    def on_message_complete(self) -> None:
        cycle = self._parsing
        if cycle is None:
            return
        self._parsing = None
        cycle.body_complete = True
        waiter = cycle.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- request flow -------------------------------------------------------------------

    def _start(self, cycle: RequestCycle) -> None:
        self._active = cycle
        self._running.add(cycle)
        task = self.loop.create_task(cycle.run(self.state.app))
        cycle.task = task
        self.state.tasks.add(task)

    def cycle_done(self, cycle: RequestCycle) -> None:
        """The response of ``cycle`` is complete (or failed): move to the next request."""
        if self._active is cycle:
            self._active = None
        if self._lost:
            return
        if not cycle.keep_alive:
            self._close()
            return
        if not cycle.body_complete:
            if cycle.expect_continue and not cycle.sent_continue:
                # The client is waiting for our go-ahead and will not send the
                # body: the connection can't be reused (RFC 9110 section 10.1.1).
                self._close()
                return
            cycle.discard_body = True
            cycle.body.clear()
            cycle.buffered = 0
            self._resume(PAUSE_BODY)
        if self._queue:
            nxt = self._queue.popleft()
            if isinstance(nxt, RequestError):
                self._write_error(nxt)
                return
            self._resume(PAUSE_PIPELINE)
            self._start(nxt)
            return
        if self._closing:
            self._close()
            return
        self._resume(PAUSE_PIPELINE)
        if self._parsing is None and not self._in_headers:
            self._idle_since = time.monotonic()

    def _close(self) -> None:
        self._closing = True
        self.transport.close()

    def _fail(self, err: RequestError) -> None:
        """The client sent something we refuse: answer once, in order, and close."""
        self._failed = True
        self._in_headers = False
        self._header_start = None
        self._pause(PAUSE_STOP)
        parsing = self._parsing
        self._parsing = None
        if parsing is not None and parsing is not self._active:
            # The request's headers were fine but its body is not (413, bad chunk):
            # it must not run.
            try:
                self._queue.remove(parsing)
            except ValueError:
                pass
        if parsing is not None:
            parsing.on_disconnect()
        limit = _LIMIT_OF_STATUS.get(err.status)
        if limit is not None:
            _metrics.hit("max_header_count" if "too many" in err.reason else limit)
        logger_level = logging.INFO if err.status < 500 else logging.ERROR
        error_log.log(
            logger_level,
            "%s - bad request: %d %s",
            fmt_client(self.client),
            err.status,
            err.reason,
        )
        if self._active is None and not self._queue:
            self._write_error(err)
        elif parsing is not None and parsing is self._active and not parsing.response_started:
            # Its body failed while the app runs: the app sees a disconnect and
            # the client gets the error status instead of a response.
            self._active = None
            self._write_error(err)
        else:
            self._queue.append(err)

    def _write_error(self, err: RequestError) -> None:
        self._closing = True
        if not self.transport.is_closing():
            self.transport.write(simple_response(err.status))
            self.transport.close()

    def _on_upgrade(self, trailing: bytes) -> None:
        scope = self._pending_upgrade
        if scope is None:
            # An upgrade we don't speak (e.g. h2c): the request was served as
            # plain HTTP/1.1; go on parsing what follows with a fresh parser.
            self.parser = httptools.HttpRequestParser(self)
            if trailing:
                self.data_received(trailing)
            return
        self._pending_upgrade = None
        if self._active is not None or self._queue:
            # Pipelined behind other requests: a client must not do this
            # (RFC 6455 section 4.1 waits for the 101); refuse rather than buffer.
            self._fail(RequestError(400, "WebSocket upgrade pipelined behind requests"))
            return
        handler = self.upgrade_handler
        assert handler is not None
        self.state.connections.discard(self)
        self._failed = True  # this object no longer parses
        handler(self, scope, trailing)
        # The parser holds our callbacks and we hold it: without this cycle this object
        # (and its header list) is freed now, not at a later garbage collection, so
        # its memory goes to the next connection instead of waiting as garbage.
        del self.parser

    def _h2c(self, data: bytes) -> bool:
        """Hand a connection that opened with the HTTP/2 preface to HTTP/2 (h2c)."""
        handoff = self.state.h2c_upgrade
        if handoff is None or self._active is not None or self._queue or self._running:
            return False
        # llhttp stops inside the preface's "PRI * HTTP/2.0" line; earlier chunks of
        # this message were a prefix of it, so HTTP/2 is told how many bytes that was.
        self.state.connections.discard(self)
        self._failed = True  # this object no longer parses
        handoff(self, self._raw_bytes - len(data), data)
        return True

    def _pause(self, reason: int) -> None:
        if not self._paused and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and not self.transport.is_closing():
            self.transport.resume_reading()
            cycle = self._parsing
            if cycle is not None:
                # Time spent paused by us doesn't count against the client.
                cycle.last_body = now = time.monotonic()
                cycle.body_deadline = max(cycle.body_deadline, now + self.timeouts.body)

    async def drain(self) -> None:
        """Wait until the transport is below its high-water mark."""
        if self._lost:
            raise ClientDisconnected("client disconnected")
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter
        if self._lost:
            raise ClientDisconnected("client disconnected")

    # -- lifecycle hooks used by the server -----------------------------------------------

    def check_timeouts(self, now: float) -> None:
        if self._lost or self.transport is None:
            return
        t = self.timeouts
        if self._header_start is not None and not self._paused:
            if now - self._header_start > t.header:
                error_log.info(
                    "%s - request headers not received within %.0f s (--header-timeout)",
                    fmt_client(self.client),
                    t.header,
                )
                _metrics.hit("header_timeout")
                self._timeout()
            return
        if self._idle_since is not None and self._active is None:
            if now - self._idle_since > t.keepalive:
                self._closing = True
                self.transport.close()
            return
        cycle = self._parsing
        if cycle is not None and not self._paused:
            # A body is arriving (for the app, or being skipped after its
            # response). It must not stall for --body-timeout, and must keep
            # up a minimum average rate: the deadline starts at --body-timeout
            # and each chunk extends it by len / _MIN_BODY_RATE seconds, like
            # Apache's mod_reqtimeout. A slow-body (R-U-Dead-Yet) client can't
            # hold a connection for long; a real upload is never cut.
            stalled = now - cycle.last_body > t.body
            if stalled or now > cycle.body_deadline:
                error_log.info(
                    "%s - request body %s (--body-timeout %.0f s)",
                    fmt_client(self.client),
                    "stalled" if stalled else "too slow",
                    t.body,
                )
                _metrics.hit("body_timeout")
                self._timeout()

    def _timeout(self) -> None:
        self._failed = True
        self._closing = True
        cycle = self._active
        if cycle is not None:
            cycle.on_disconnect()
        if cycle is None or not cycle.response_started:
            self.transport.write(simple_response(408))
        self.transport.close()

    def shutdown(self) -> None:
        self._closing = True
        if self._active is None and not self._queue:
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        for cycle in (self._active, *self._queue):
            if isinstance(cycle, RequestCycle) and cycle.task is not None:
                cycle.task.cancel()
        self.transport.close()


def _other_target(raw: bytes) -> tuple[bytes, bytes]:
    """Path and query of an asterisk-form or absolute-form target (RFC 9112 section 3.2)."""
    if raw == b"*":
        return raw, b""
    try:
        parsed = httptools.parse_url(raw)
    except httptools.HttpParserInvalidURLError:
        raise RequestError(400, "invalid request target") from None
    return parsed.path or b"/", parsed.query or b""


def _parser_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
