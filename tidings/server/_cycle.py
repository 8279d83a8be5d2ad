"""One HTTP/1.1 request and its response: the ``receive`` and ``send`` an ASGI app gets.

Theory of operation
-------------------
``HttpProtocol`` (``tidings.server._http11``) parses the request head and makes a
``RequestCycle``; the protocol's httptools callbacks append the request body to it,
and the protocol runs ``RequestCycle.run`` as the request's task. The cycle turns
the body into ``http.request`` messages and the app's messages into bytes: the
response head and its framing come from ``tidings.wire.http11.frame_response``
(no body, fixed length, chunked or until close), then body chunks, trailers
(``http.response.trailers``) or a file (``http.response.pathsend``). When the
response is complete it writes the access log line and hands the connection back
with ``HttpProtocol.cycle_done``.

Invariants:
- Nothing the app sends is written unchecked: response and trailer fields pass
  ``tidings.wire.headers.check_fields`` when they are sent (a bad one raises in the
  app's ``send``: a 500), and request data is escaped (``loggable``) before it is logged.
- A fixed-length body never goes past its ``Content-Length`` (the app's ``send``
  raises); a short one closes the connection rather than leave the client waiting.
- ``send()`` waits while the transport is above its high-water mark; once the
  client has gone it raises ``ClientDisconnected``.
- An app that fails, or returns before its response is complete, gets a 500 if no
  head was written, and otherwise a closed connection: never a hung one.

What must not go here: parsing, pipelining, pausing and timeouts (the protocol's),
and anything that knows about Django.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Final

from tidings import _metrics
from tidings._types import ASGIApp, Message
from tidings.server._state import access_log, error_log, fmt_client, loggable, loggable_query
from tidings.server.errors import ServerError
from tidings.wire.headers import InvalidField, check_fields
from tidings.wire.http11 import (
    CHUNKED,
    CONTINUE,
    LAST_CHUNK,
    NO_BODY,
    encode_chunk,
    encode_trailers,
    frame_response,
    last_chunk,
    simple_response,
)

if TYPE_CHECKING:
    from tidings.server._http11 import HttpProtocol

__all__ = [
    "PAUSE_BODY",
    "PAUSE_PIPELINE",
    "PAUSE_STOP",
    "ClientDisconnected",
    "RequestCycle",
]

# Reasons the protocol pauses reading, as bits: it resumes only when all are gone.
# Here because the cycle lifts PAUSE_BODY when the app reads the buffered body.
PAUSE_BODY, PAUSE_PIPELINE, PAUSE_STOP = 1, 2, 4
# Response chunk size for http.response.pathsend.
_FILE_CHUNK: Final = 256 * 1024


class ClientDisconnected(ServerError, OSError):
    """Raised by ``send()`` once the client has gone (ASGI spec: an OSError subclass)."""

    __module__ = "tidings.server._http11"  # where users import it from


class RequestCycle:
    """One request and its response: the ``receive`` and ``send`` the app gets."""

    __slots__ = (
        "body",
        "body_complete",
        "body_deadline",
        "body_delivered",
        "body_size",
        "buffered",
        "declared_length",
        "discard_body",
        "disconnected",
        "expect_continue",
        "head_written",
        "is_head",
        "keep_alive",
        "last_body",
        "protocol",
        "remaining",
        "response_complete",
        "response_headers",
        "response_started",
        "scope",
        "sent",
        "sent_continue",
        "started",
        "status",
        "task",
        "trailers",
        "transport",
        "waiter",
    )

    def __init__(
        self,
        protocol: HttpProtocol,
        scope: dict[str, Any],
        *,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.sent_continue = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_size = 0
        self.body_complete = False
        self.body_delivered = False
        self.discard_body = False
        self.last_body = 0.0
        self.body_deadline = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.head_written = False
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.declared_length = -1
        self.trailers = False
        self.is_head = scope["method"] == "HEAD"
        # Bytes of a fixed-length body still to send (>= 0), or its framing once the
        # head is written: UNTIL_CLOSE (also before), CHUNKED or NO_BODY.
        self.remaining = -1
        self.sent = 0
        self.task: asyncio.Task[None] | None = None
        self.started = 0.0  # time.monotonic() of the complete head (set by the protocol)

    def on_disconnect(self) -> None:
        self.disconnected = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
            if not self.response_started:
                if not self.disconnected:
                    error_log.error("ASGI application returned without starting a response")
                self._fail_response()
            elif not self.response_complete:
                if not self.disconnected:
                    error_log.error("ASGI application returned without completing the response")
                self._fail_response()
            elif self.trailers:
                if not self.disconnected:
                    error_log.error("ASGI application returned without the trailers it announced")
                self._fail_response()
        finally:
            protocol._running.discard(self)
            if self.task is not None:
                protocol.state.forget_task(self.task)

    def _fail_response(self) -> None:
        if self.response_complete:
            if self.trailers:
                # The body went out but the announced trailers never came: end the
                # chunked message with an empty trailer section (it must not stay
                # open: the connection would hang), and don't reuse the connection.
                self.trailers = False
                self.keep_alive = False
                if (
                    self.remaining == CHUNKED
                    and self.head_written
                    and not self.disconnected
                    and not self.transport.is_closing()
                ):
                    self.transport.write(encode_trailers((), more=False))
                self._complete()
            return
        self.keep_alive = False
        self.response_complete = True
        transport = self.transport
        if not self.head_written and not self.disconnected and not transport.is_closing():
            transport.write(simple_response(500, "Internal Server Error"))
            self.status = 500
        if (m := _metrics.ACTIVE) is not None:
            m.http_duration[self.status // 100].observe(time.monotonic() - self.started)
        self.protocol.cycle_done(self)

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        if self.body_delivered:
            # The whole body was delivered: the next event is the disconnect,
            # after the response is complete or when the client leaves.
            await self._wait()
            return {"type": "http.disconnect"}
        if not self.body and not self.body_complete:
            if self.expect_continue and not self.sent_continue and not self.response_started:
                self.sent_continue = True
                self.transport.write(CONTINUE)
            self.last_body = time.monotonic()
            self.protocol._resume(PAUSE_BODY)
            await self._wait()
            if self._gone():
                return {"type": "http.disconnect"}
        chunks = self.body
        if len(chunks) == 1:
            body = chunks[0]
            chunks.clear()
        elif chunks:
            body = b"".join(chunks)
            chunks.clear()
        else:
            body = b""
        if self.buffered:
            self.buffered = 0
            self.protocol._resume(PAUSE_BODY)
        more = not self.body_complete
        if not more:
            self.body_delivered = True
        return {"type": "http.request", "body": body, "more_body": more}

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
            status = message["status"]
            if not isinstance(status, int) or not 200 <= status <= 599:
                raise RuntimeError(f"invalid HTTP status {status!r} in http.response.start")
            headers = message.get("headers", ())
            if type(headers) is not list:
                headers = list(headers)
            try:
                # Before anything is written: a bad header is a 500, never on the wire.
                self.declared_length = check_fields(headers)
            except InvalidField as exc:
                raise RuntimeError(f"http.response.start: {exc}") from None
            self.response_started = True
            self.status = status
            self.response_headers = headers
            self.trailers = bool(message.get("trailers", False))
            return
        if self.response_complete and not self.trailers:
            raise RuntimeError(f"ASGI message {mtype!r} sent after the response was complete")
        if mtype == "http.response.body":
            if self.response_complete:
                raise RuntimeError("http.response.body sent after the response was complete")
            body = message.get("body", b"")
            if type(body) is not bytes:
                body = _as_bytes(body)
            more = message.get("more_body", False)
            self._write_body(body, more)
            if not more:
                if self.trailers:
                    self.response_complete = True
                else:
                    self._complete()
            if self.protocol._write_paused:
                await self.protocol.drain()
        elif mtype == "http.response.trailers":
            self._send_trailers(message)
        elif mtype == "http.response.pathsend":
            await self._send_path(message["path"])
        else:
            raise RuntimeError(f"unexpected ASGI message {mtype!r} during an HTTP response")

    def _send_trailers(self, message: Message) -> None:
        if not self.trailers or not self.response_complete or not self.head_written:
            raise RuntimeError("http.response.trailers sent out of order or not announced")
        more_trailers = message.get("more_trailers", False)
        fields = list(message.get("headers", ()))
        try:
            check_fields(fields)
        except InvalidField as exc:
            raise RuntimeError(f"http.response.trailers: {exc}") from None
        if self.remaining == CHUNKED:
            self.transport.write(encode_trailers(fields, more=more_trailers))
        if not more_trailers:
            self.trailers = False
            self._complete()

    def _write_body(self, body: bytes, more: bool) -> None:
        transport = self.transport
        if not self.head_written:
            head = self._head(len(body) if not more else -1)
            remaining = self.remaining
            if remaining == NO_BODY:
                self.head_written = True
                self.sent += len(body)
                transport.write(head)
                return
            if remaining == CHUNKED:
                self.head_written = True
                transport.writelines([head, *self._chunk_parts(body, more)])
                self.sent += len(body)
                return
            self._counted(len(body))  # raises before anything is written: a 500
            self.head_written = True
            if len(body) < 16384:
                transport.write(head + body)
            else:
                transport.writelines((head, body))
            if not more:
                self._check_length()
            return
        remaining = self.remaining
        if remaining == NO_BODY:
            self.sent += len(body)
            return
        if remaining == CHUNKED:
            parts = self._chunk_parts(body, more)
            if parts:
                transport.writelines(parts)
            self.sent += len(body)
            return
        self._counted(len(body))
        if body:
            transport.write(body)
        if not more:
            self._check_length()

    def _chunk_parts(self, body: bytes, more: bool) -> list[bytes]:
        """``body`` as one chunk, plus the last chunk when done (left open for trailers)."""
        parts = encode_chunk(body)
        if not more:
            parts.append(last_chunk(trailers=self.trailers))
        return parts

    def _counted(self, n: int) -> None:
        remaining = self.remaining
        if remaining >= 0:
            if remaining < n:
                raise RuntimeError("response body longer than its Content-Length")
            self.remaining = remaining - n
        self.sent += n

    def _check_length(self) -> None:
        if self.remaining > 0:
            # The client would wait for bytes that never come.
            error_log.error("response body shorter than its Content-Length; closing connection")
            self.keep_alive = False

    def _head(self, body_length: int) -> bytes:
        """The response head; sets the body framing. ``body_length`` is -1 when it streams."""
        protocol = self.protocol
        keep_alive = self.keep_alive and not protocol._closing
        if self.expect_continue and not self.sent_continue and not self.body_complete:
            # A client still waiting for "100 Continue" will not send the body
            # we would have to skip (RFC 9110 section 10.1.1): don't reuse.
            keep_alive = False
        head, self.remaining, self.keep_alive = frame_response(
            self.status,
            self.response_headers,
            self.declared_length,  # checked by check_fields at the start
            body_length,
            self.is_head,
            self.scope["http_version"] == "1.0",
            self.trailers,
            keep_alive,
            protocol.state.date_header,
        )
        return head

    async def _send_path(self, path: str) -> None:
        if self.head_written:
            raise RuntimeError("http.response.pathsend after the body had started")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise RuntimeError(f"http.response.pathsend: cannot open {path!r}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            transport = self.transport
            head = self._head(size)
            self.head_written = True
            transport.write(head)
            remaining = self.remaining
            if remaining != NO_BODY:
                if remaining >= 0 and remaining != size:
                    raise RuntimeError("http.response.pathsend: Content-Length differs from file")
                left = size
                while left > 0:
                    chunk = os.read(fd, min(_FILE_CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    if remaining == CHUNKED:
                        transport.writelines(encode_chunk(chunk))
                    else:
                        transport.write(chunk)
                    self.sent += len(chunk)
                    if self.protocol._write_paused:
                        await self.protocol.drain()
                    if self.disconnected:
                        raise ClientDisconnected("client disconnected")
                if left:
                    self.keep_alive = False  # the file shrank under us
                if remaining == CHUNKED:
                    transport.write(LAST_CHUNK)
                else:
                    self.remaining = 0
        finally:
            os.close(fd)
        self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        protocol = self.protocol
        if protocol.state.access_log:
            scope = self.scope
            access_log.info(
                '%s - "%s %s%s HTTP/%s" %d %d',
                fmt_client(scope["client"]),
                loggable(scope["method"]),
                loggable(scope["path"]),
                loggable_query(scope["query_string"]),
                scope["http_version"],
                self.status,
                self.sent,
            )
        if (m := _metrics.ACTIVE) is not None:
            # Histogram.observe, inline: this runs once per request.
            histogram = m.http_duration[self.status // 100]
            elapsed = time.monotonic() - self.started
            histogram.counts[bisect_left(histogram.bounds, elapsed)] += 1
            histogram.total += elapsed
        protocol.cycle_done(self)


def _as_bytes(body: object) -> bytes:
    if not isinstance(body, (bytearray, memoryview)):
        raise TypeError("http.response.body 'body' must be bytes")
    return bytes(body)
