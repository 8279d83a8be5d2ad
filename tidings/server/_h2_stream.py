"""One HTTP/2 stream: the ASGI ``receive`` and ``send`` of one request.

Theory of operation
-------------------
``H2Protocol`` (``tidings.server._http2``) feeds the connection core
(``tidings.wire.http2``) and routes its events: a new
request becomes an ``H2Stream`` run as one task; DATA frames append to ``body``;
END_STREAM sets ``body_complete``; RST_STREAM calls ``on_disconnect``; WINDOW_UPDATE
wakes a ``send`` waiting for flow-control window.

Flow control, both ways, is per stream (RFC 9113 section 5.2):
- In: the client may send ``--h2-initial-window-size`` bytes the app has not read. The
  stream's window is reopened by what ``receive()`` hands the app, so an app that does
  not read stops only its own upload. (The connection's window is reopened by the
  core, ``tidings.wire.http2``, as data arrives: one stream must not starve the others.)
- Out: ``send()`` writes DATA frames as far as the stream's and the connection's
  windows allow and waits for WINDOW_UPDATE for the rest: nothing is buffered beyond
  what the app handed over in the message it is sending. A response that waits longer
  than ``--h2-stall-timeout`` is reset (the protocol's sweep). ``send()`` also waits
  while the socket is above its high-water mark, as over HTTP/1.1.

The response rules are those of HTTP/1.1 where they apply: header fields pass
``tidings.wire.headers.check_fields`` (a bad one is a 500 that never reaches the wire),
a body never goes past its ``Content-Length``, responses that have no body (HEAD,
204, 304, 1xx) send none. Connection-specific fields are dropped (RFC 9113 section
8.2.2). Trailers are a HEADERS frame that ends the stream (RFC 9113 section 8.1).

Invariant: every stream ends, for the client, with END_STREAM or RST_STREAM, also when
the app fails or returns early; ``protocol.stream_done`` is then called exactly once.

What must not go here: frame parsing, connection state, timeouts (the protocol's).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any, Final

from tidings import _metrics
from tidings._types import ASGIApp, Message
from tidings.server._cycle import ClientDisconnected
from tidings.server._state import access_log, error_log, fmt_client, loggable, loggable_query
from tidings.wire.headers import InvalidField, check_fields
from tidings.wire.http2 import ErrorCode, StreamClosedError

if TYPE_CHECKING:
    from tidings.server._http2 import H2Protocol

__all__ = ["H2Stream", "status_headers"]

# Fields that mean something for one HTTP/1.1 connection only: an HTTP/2 message
# carrying one is malformed (RFC 9113 section 8.2.2). Dropped from what the app sends.
_CONNECTION_FIELDS: Final = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
# RFC 9110 section 6.4.1: responses that never have content.
_BODYLESS: Final = frozenset([*range(100, 200), 204, 304])
_FILE_CHUNK: Final = 256 * 1024


def status_headers(status: int) -> list[tuple[bytes, bytes]]:
    """The header list of a response with only a status."""
    return [(b":status", b"%d" % status)]


class H2Stream:
    """One request on an HTTP/2 connection and its response."""

    __slots__ = (
        "blocked_since",
        "body",
        "body_complete",
        "body_delivered",
        "body_size",
        "buffered",
        "declared",
        "disconnected",
        "head_sent",
        "is_head",
        "last_body",
        "protocol",
        "remaining",
        "response_complete",
        "response_headers",
        "response_started",
        "scope",
        "sent",
        "started",
        "status",
        "stream_id",
        "task",
        "trailer_fields",
        "trailers",
        "waiter",
        "window_waiter",
    )

    def __init__(self, protocol: H2Protocol, stream_id: int, scope: dict[str, Any]) -> None:
        self.protocol = protocol
        self.stream_id = stream_id
        self.scope = scope
        self.is_head = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0  # flow-controlled bytes received and not yet credited back
        self.body_size = 0
        self.declared = -1  # the request's Content-Length, if any (checked by the protocol)
        self.body_complete = False
        self.body_delivered = False
        self.last_body = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.window_waiter: asyncio.Future[None] | None = None
        self.blocked_since: float | None = None
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.head_sent = False
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.remaining = -1  # bytes a declared Content-Length still allows, or -1
        self.trailers = False
        self.trailer_fields: list[tuple[bytes, bytes]] = []
        self.sent = 0
        self.task: asyncio.Task[None] | None = None
        self.started = time.monotonic()  # the head is complete: the request's duration starts

    # -- events from the protocol -------------------------------------------------------

    def on_data(self, data: bytes, flow: int) -> None:
        self.body.append(data)
        self.buffered += flow
        self.body_size += len(data)
        self.last_body = time.monotonic()
        self._wake()

    def on_end(self) -> None:
        self.body_complete = True
        self._wake()

    def on_disconnect(self) -> None:
        self.disconnected = True
        self._wake()
        self.wake_window()

    def shutdown(self) -> None:
        """The server is shutting down: an HTTP response just completes (GOAWAY said so)."""

    def wake_window(self) -> None:
        waiter = self.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the application ----------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        protocol = self.protocol
        try:
            await app(self.scope, self.receive, self.send)
        except Exception as exc:
            if self.disconnected or isinstance(exc, ClientDisconnected):
                error_log.debug("ASGI application stopped after the client left: %r", exc)
            else:
                _metrics.app_raised("http")
                error_log.error("Exception in ASGI application", exc_info=exc)
            self._fail_response()
        else:
            if not self.response_complete or self.trailers:
                if not self.disconnected:
                    error_log.error("ASGI application returned without completing the response")
                self._fail_response()
        finally:
            protocol.task_done(self)

    def _fail_response(self) -> None:
        if self.response_complete and not self.trailers:
            return
        self.response_complete = True
        self.trailers = False
        protocol = self.protocol
        if not self.disconnected and not protocol.lost:
            if not self.head_sent:
                self.status = 500
                protocol.respond(self.stream_id, 500)
            else:
                protocol.reset(self.stream_id, ErrorCode.INTERNAL_ERROR)
        self._response_ended()

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        if self.body_delivered:
            await self._wait()
            return {"type": "http.disconnect"}
        if not self.body and not self.body_complete:
            # The stall timeout counts from now: the client may have been waiting
            # for the window this app had not reopened.
            self.last_body = time.monotonic()
            await self._wait()
            if self._gone():
                return {"type": "http.disconnect"}
        chunks = self.body
        if len(chunks) == 1:
            body = chunks.pop()
        elif chunks:
            body = b"".join(chunks)
            chunks.clear()
        else:
            body = b""
        if self.buffered:
            if not self.body_complete:
                # What the app has taken may be sent again (RFC 9113 section 6.9).
                self.protocol.credit(self.stream_id, self.buffered)
            self.buffered = 0
        if self.body_complete:
            self.body_delivered = True
        return {"type": "http.request", "body": body, "more_body": not self.body_complete}

    def _gone(self) -> bool:
        return self.disconnected

    async def _wait(self) -> None:
        waiter = self.waiter = self.protocol.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    # -- send ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        mtype = message["type"]
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        if not self.response_started:
            if mtype != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {mtype!r}")
            self._start(message)
            return
        try:
            if mtype == "http.response.body":
                if self.response_complete:
                    raise RuntimeError("http.response.body sent after the response was complete")
                body = message.get("body", b"")
                if type(body) is not bytes:
                    body = _as_bytes(body)
                await self._send_body(body, bool(message.get("more_body", False)))
            elif mtype == "http.response.trailers":
                self._send_trailers(message)
            elif mtype == "http.response.pathsend":
                await self._send_path(message["path"])
            else:
                raise RuntimeError(f"unexpected ASGI message {mtype!r} during an HTTP response")
        except StreamClosedError:
            # The stream or the connection closed under the app: as over HTTP/1.1
            # once the client has left.
            self.on_disconnect()
            raise ClientDisconnected("client disconnected") from None

    def _start(self, message: Message) -> None:
        status = message["status"]
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise RuntimeError(f"invalid HTTP status {status!r} in http.response.start")
        headers = message.get("headers", ())
        if type(headers) is not list:
            headers = list(headers)
        try:
            # Before anything is written: a bad header is a 500, never on the wire.
            declared = check_fields(headers)
        except InvalidField as exc:
            raise RuntimeError(f"http.response.start: {exc}") from None
        self.response_started = True
        self.status = status
        self.remaining = declared
        self.trailers = bool(message.get("trailers", False))
        fields = [(b":status", b"%d" % status)]
        for name, value in headers:
            name = name.lower()
            if name not in _CONNECTION_FIELDS:
                fields.append((name, value))
        date = self.protocol.state.date_header  # b"date: ...\r\n", refreshed each second
        fields.append((b"date", date[6:-2]))
        self.response_headers = fields

    def _head(self, body_length: int, end: bool) -> None:
        """Send the response's HEADERS frame; ``body_length`` is -1 while it streams."""
        fields = self.response_headers
        if (
            self.remaining < 0
            and body_length >= 0
            and not self.trailers
            and self.status not in _BODYLESS
            and (body_length or not self.is_head)
        ):
            # The length of a body given whole. An empty body to HEAD is no claim
            # about what GET would send (RFC 9110 section 9.3.2): left out.
            fields.append((b"content-length", b"%d" % body_length))
        self.head_sent = True
        self.protocol.conn.send_headers(self.stream_id, fields, end_stream=end)

    async def _send_body(self, body: bytes, more: bool) -> None:
        size = len(body)
        remaining = self.remaining
        if remaining >= 0:
            if size > remaining:
                raise RuntimeError("response body longer than its Content-Length")
            self.remaining = remaining - size
        bodyless = self.is_head or self.status in _BODYLESS
        end = not more and not self.trailers
        if not self.head_sent:
            # A body without content (or all in this message) ends with the head.
            self._head(-1 if more else size, end and (bodyless or size == 0))
            if bodyless or size == 0:
                self.sent += size if bodyless else 0
                if not more:
                    self._body_done()
                self.protocol.flush_soon(0)
                return
        elif bodyless:
            if not more:
                if not self.trailers:
                    self.protocol.conn.end_stream(self.stream_id)
                self._body_done()
                self.protocol.flush_soon(0)
            return
        if size or end:
            await self._write(body, end)
        if not more:
            if self.remaining > 0:
                error_log.error("response body shorter than its Content-Length; resetting stream")
                self.protocol.reset(self.stream_id, ErrorCode.INTERNAL_ERROR)
                self.trailers = False
            self._body_done()

    def _body_done(self) -> None:
        self.response_complete = True
        if not self.trailers:
            self._complete()

    async def _write(self, data: bytes, end: bool) -> None:
        """Send ``data`` as DATA frames as the windows allow, waiting for them to open."""
        protocol = self.protocol
        conn = protocol.conn
        sid = self.stream_id
        size = len(data)
        pos = 0
        try:
            while True:
                if self.disconnected:
                    raise ClientDisconnected("client disconnected")
                window = conn.send_window(sid)
                frame = conn.max_outbound_frame_size
                while window > 0 and pos < size:
                    n = min(window, frame, size - pos)
                    chunk = data if n == size else data[pos : pos + n]
                    pos += n
                    window -= n
                    conn.send_data(sid, chunk, end_stream=end and pos == size)
                if pos == size:
                    if size == 0 and end:
                        conn.end_stream(sid)
                    break
                protocol.flush()
                await self._wait_window()
        except StreamClosedError:
            self.on_disconnect()
            raise ClientDisconnected("client disconnected") from None
        self.sent += size
        protocol.flush_soon(size)
        if protocol._write_paused:
            await protocol.drain()

    async def _wait_window(self) -> None:
        waiter = self.window_waiter = self.protocol.loop.create_future()
        self.blocked_since = time.monotonic()
        try:
            await waiter
        finally:
            self.window_waiter = None
            self.blocked_since = None

    def _send_trailers(self, message: Message) -> None:
        if not self.trailers or not self.response_complete or not self.head_sent:
            raise RuntimeError("http.response.trailers sent out of order or not announced")
        fields = list(message.get("headers", ()))
        try:
            check_fields(fields)
        except InvalidField as exc:
            raise RuntimeError(f"http.response.trailers: {exc}") from None
        self.trailer_fields += fields
        if message.get("more_trailers", False):
            return
        trailers = [(name.lower(), value) for name, value in self.trailer_fields]
        self.trailers = False
        self.protocol.conn.send_headers(self.stream_id, trailers, end_stream=True)
        self.protocol.flush_soon(0)
        self._complete()

    async def _send_path(self, path: str) -> None:
        if self.head_sent:
            raise RuntimeError("http.response.pathsend after the body had started")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise RuntimeError(f"http.response.pathsend: cannot open {path!r}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if self.remaining >= 0 and self.remaining != size:
                raise RuntimeError("http.response.pathsend: Content-Length differs from file")
            if self.is_head or self.status in _BODYLESS or size == 0:
                await self._send_body(b"", False)
                return
            self.remaining = -1
            self._head(size, False)
            left = size
            while left > 0:
                chunk = os.read(fd, min(_FILE_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                await self._write(chunk, left == 0)
            if left:
                # The file shrank under us: the client must not take it for complete.
                self.protocol.reset(self.stream_id, ErrorCode.INTERNAL_ERROR)
        finally:
            os.close(fd)
        self.trailers = False
        self._body_done()

    def _complete(self) -> None:
        self.response_complete = True
        self._wake()
        protocol = self.protocol
        if protocol.state.access_log:
            scope = self.scope
            access_log.info(
                '%s - "%s %s%s HTTP/2" %d %d',
                fmt_client(scope["client"]),
                loggable(scope["method"]),
                loggable(scope["path"]),
                loggable_query(scope["query_string"]),
                self.status,
                self.sent,
            )
        self._response_ended()

    def _response_ended(self) -> None:
        """Count the request's duration (by status class, as over HTTP/1.1); the stream is done."""
        if (m := _metrics.ACTIVE) is not None:
            m.http_duration[self.status // 100].observe(time.monotonic() - self.started)
        self.protocol.stream_done(self)


def _as_bytes(body: object) -> bytes:
    if not isinstance(body, (bytearray, memoryview)):
        raise TypeError("http.response.body 'body' must be bytes")
    return bytes(body)
