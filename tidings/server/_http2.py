"""HTTP/2 over asyncio: one ``H2Protocol`` per connection, many streams each.

Theory of operation
-------------------
``tidings.wire.http2.HTTP2Connection`` is the protocol core (frames, stream states,
flow control, SETTINGS, HPACK), driven bytes in, events out: ``data_received`` feeds
it, routes its events to the connection's streams (``_h2_stream.H2Stream``, one ASGI
``http`` scope with ``http_version`` "2" and one task each) and writes what it has
queued, once per read. Three ways in:

- TLS with ALPN: ``AlpnSelector`` is the protocol the server creates for a TLS
  connection; once the handshake has picked ``h2`` or ``http/1.1`` it hands the
  transport to an ``H2Protocol`` or an ``HttpProtocol``.
- h2c with prior knowledge: ``HttpProtocol`` recognises the connection preface
  (``PRI * HTTP/2.0``) and hands the connection over through
  ``ServerState.h2c_upgrade``, set by ``install`` unless ``--no-h2c``.
- ``Upgrade: h2c`` (RFC 7540 section 3.2, removed by RFC 9113) is not offered: the
  request is served over HTTP/1.1.

A request with ``:method CONNECT`` and ``:protocol websocket`` (RFC 8441, advertised
unless ``--no-h2-connect-protocol``) is a WebSocket on its stream: an ``H2WebSocket``
(``_h2_websocket``) instead of an ``H2Stream``.

Limits (RFC 9113 section 10.5; each has a test in ``tests/security/test_h2_*``):

- at most ``--h2-max-concurrent-streams`` open streams (the core's count) and as many
  apps running (ours: an app may outlive its stream): more are refused with
  REFUSED_STREAM, a stream error (RFC 9113 section 5.1.2);
- the core collects a header block (HEADERS plus CONTINUATION) only up to
  ``--h2-max-header-list-size`` octets, and its HPACK decoder caps the decoded list at
  the same size (an HPACK bomb): past either, GOAWAY ENHANCE_YOUR_CALM;
- RST_STREAM frames (from the client, plus the stream errors and refusals we answer,
  the core's ``resets``) past ``_MAX_RESETS`` a second: GOAWAY ENHANCE_YOUR_CALM
  (rapid reset, CVE-2023-44487), checked before the read's events run;
- PING and SETTINGS frames received while the client is not reading what we write
  (the socket is above its high-water mark), past ``_MAX_UNREAD_CONTROL`` (the core's
  ``control``): the connection is aborted (each queues an ACK);
- request bodies: per-stream windows (``_h2_stream``), ``--max-body-size``,
  ``--body-timeout``; responses: ``--h2-stall-timeout`` for a closed window.

Timeouts are checked by the server's sweep (``check_timeouts``), never by timers: a
connection without a running stream for ``--keepalive-timeout`` gets GOAWAY and is
closed; streams stalled on a window or a body are reset; a connection whose streams
run but whose client has been silent for ``--ws-ping-interval`` gets a PING, and is
closed if it stays silent for ``--ws-ping-timeout`` more (``_keepalive``).

Graceful shutdown (``shutdown``): GOAWAY (NO_ERROR, the last stream id received) is
sent at once, streams that arrive later are refused, streams in flight complete and the
connection closes when the last app returns. A client's GOAWAY, like a connection
error, is a disconnect for every app still running (a client sends it as it leaves):
their ``send()`` raises ``ClientDisconnected``, and the connection closes once they
return.

What must not go here: ASGI ``receive``/``send`` (``_h2_stream``, ``_h2_websocket``),
reading a request's header list (``_h2_request``), frame parsing or protocol state
(``tidings.wire.http2``), HTTP/1.1, anything that knows about Django.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final, cast

from tidings import _metrics
from tidings.server._addresses import socket_addresses
from tidings.server._cycle import ClientDisconnected
from tidings.server._flow import WriteFlowControl
from tidings.server._h2_hpack import StaticEncoder
from tidings.server._h2_request import MALFORMED, MalformedRequest, check_trailers, request_scope
from tidings.server._h2_stream import H2Stream, status_headers
from tidings.server._h2_websocket import H2WebSocket
from tidings.server._http11 import SHUTDOWN_EXTENSION, HttpProtocol
from tidings.server._state import ServerState, error_log, fmt_client, loggable
from tidings.wire import http2 as ev
from tidings.wire.http2 import (
    PREFACE,
    ErrorCode,
    HTTP2Connection,
    HTTP2ProtocolError,
    StreamClosedError,
)

__all__ = ["AlpnSelector", "H2Protocol", "install"]

# RST_STREAM frames a second (received, plus streams we refuse) before GOAWAY
# ENHANCE_YOUR_CALM. A browser resets a few streams when a page navigates away;
# the rapid-reset attack needs thousands a second to hurt.
_MAX_RESETS: Final = 200
# PING and SETTINGS frames that arrive while the client does not read what we write.
# Each queues an ACK of 9 to 17 bytes: this bounds that queue at ~17 KiB above the
# write high-water mark.
_MAX_UNREAD_CONTROL: Final = 1000


def _new_connection(state: ServerState) -> HTTP2Connection:
    """A server connection core with our settings, its SETTINGS frame queued."""
    limits = state.config.limits
    return HTTP2Connection(
        StaticEncoder(),  # responses: cached encodings, no dynamic table
        max_concurrent_streams=limits.h2_max_concurrent_streams,
        initial_window_size=limits.h2_initial_window_size,
        max_frame_size=limits.h2_max_frame_size,
        max_header_list_size=limits.h2_max_header_list_size,
        # RFC 8441 section 3: WebSocket over HTTP/2 (extended CONNECT), unless switched off.
        enable_connect_protocol=state.config.h2_connect_protocol,
    )


class H2Protocol(WriteFlowControl, asyncio.Protocol):
    """One HTTP/2 connection: feeds the core, runs one ASGI app task per stream."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        config = state.config
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.root_path = config.root_path
        self.connect_protocol = config.h2_connect_protocol
        self.conn = _new_connection(state)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "https" if config.is_ssl else "http"
        self.extensions = {
            "http.response.trailers": {},
            "http.response.pathsend": {},
            SHUTDOWN_EXTENSION: state.shutdown_extension,
        }
        self.streams: dict[int, H2Stream] = {}  # by id, until the response ends
        self.running: set[H2Stream] = set()  # streams whose app task runs
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.lost = False
        self._closing = False  # GOAWAY sent or received: no new streams
        self._dead = False  # no more reading: a protocol error or a limit
        self._idle_since: float | None = time.monotonic()
        self._unflushed = 0  # bytes queued in the core since the last write (flush_soon)
        self._flush_scheduled = False
        self._unread_control = 0
        self._reset_start = 0.0
        self._resets = 0
        self._last_heard = time.monotonic()  # when the client last sent anything
        self._ping_sent: float | None = None  # our unanswered keepalive PING, sent then

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TLS connection that chose h2 by ALPN: --max-accept-rate applies here (h2c
        # was counted by the HTTP/1.1 protocol that took its first bytes).
        bucket = self.state.admission
        over_rate = bucket is not None and bucket.admit(time.monotonic()) > 0
        self._attach(cast(asyncio.Transport, transport), over_rate=over_rate)
        self.client, self.server = socket_addresses(transport)

    def adopt(self, http: HttpProtocol, data: bytes) -> None:
        """Take over the connection of ``http``, which received ``data`` (the preface on)."""
        transport = http.transport
        transport.set_protocol(self)
        self.client = http.client
        self.server = http.server
        self._attach(transport)
        if not self._dead:
            self.data_received(data)

    def _attach(self, transport: asyncio.Transport, *, over_rate: bool = False) -> None:
        self.transport = transport
        state = self.state
        state.connections.add(self)
        transport.set_write_buffer_limits(high=self.limits.write_high_water)
        if over_rate:
            _metrics.hit("max_accept_rate")
        if over_rate or len(state.connections) > self.limits.max_connections or state.closing:
            # As over HTTP/1.1 (a 503 there): GOAWAY before any stream, and close; the
            # client may retry elsewhere.
            self._dead = True
            self._goaway(ErrorCode.NO_ERROR)
            transport.close()
            return
        self.flush()  # our SETTINGS: the server's preface (RFC 9113 section 3.4)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._closing = True
        state = self.state
        state.forget_connection(self)
        for stream in self.running:
            stream.on_disconnect()
            if stream.task is not None:
                state.orphaned(stream.task, stream.scope["method"], stream.scope["path"])
        self.streams.clear()
        self._release_drain_waiters()

    def resume_writing(self) -> None:
        self._unread_control = 0
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        self._last_heard = time.monotonic()
        self._ping_sent = None  # anything from the client shows it is there
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except HTTP2ProtocolError as exc:
            if exc.error_code == ErrorCode.ENHANCE_YOUR_CALM:
                # A limit of ours (a header block or list past --h2-max-header-list-size).
                error_log.warning(
                    "%s - HTTP/2 connection closed: %s", fmt_client(self.client), exc.reason
                )
            else:
                error_log.info(
                    "%s - HTTP/2 protocol error: %s", fmt_client(self.client), loggable(str(exc))
                )
            self._dead = True
            self._disconnect_all()
            self.flush()  # the core has queued its GOAWAY
            if self._write_paused:
                self.transport.abort()  # it doesn't read: don't wait to write to it
            else:
                self.transport.close()
            return
        # The counts are checked before the events run: past a limit, nothing of
        # this read reaches an app.
        if conn.resets:
            resets, conn.resets = conn.resets, 0
            if not self._count_resets(resets):
                return
        if conn.control:
            if self._write_paused:
                self._unread_control += conn.control
                if self._unread_control > _MAX_UNREAD_CONTROL:
                    self._calm("PING/SETTINGS frames while not reading the answers")
                    return
            conn.control = 0
        # What this read queues (ACKs, window updates) and what the apps it wakes send
        # in this turn of the loop leave in one write, after them: the flush is
        # scheduled once the events have run, behind the tasks they woke.
        scheduled = self._flush_scheduled
        self._flush_scheduled = True
        try:
            handlers = _HANDLERS
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(self, event)
        finally:
            if not scheduled:
                self.loop.call_soon(self._flush_later)

    def eof_received(self) -> bool | None:
        return False  # as over HTTP/1.1: the client has gone

    # -- events -------------------------------------------------------------------------

    def _on_request(self, event: ev.RequestReceived) -> None:
        sid = event.stream_id
        if self._closing:
            self.conn.reset_stream(sid, ErrorCode.REFUSED_STREAM)
            return
        if len(self.running) >= self.limits.h2_max_concurrent_streams:
            # The core refuses streams past the limit it advertised; an app may still
            # run after its stream closed.
            if self._count_resets(1):
                self.conn.reset_stream(sid, ErrorCode.REFUSED_STREAM)
            return
        ended = event.ended
        request = request_scope(self, event.headers, ended)
        if request == MALFORMED:
            self._malformed(sid)
            return
        if isinstance(request, int):
            self.respond(sid, request)
            if not ended:
                self.reset(sid, ErrorCode.NO_ERROR)  # we won't read its body
            return
        scope, declared = request
        if scope["method"] == "CONNECT":
            stream: H2Stream = H2WebSocket(self, sid, scope)
        else:
            stream = H2Stream(self, sid, scope)
        stream.declared = declared
        stream.last_body = time.monotonic()
        self.streams[sid] = stream
        self.running.add(stream)
        self._idle_since = None
        task = self.loop.create_task(stream.run(self.state.app))
        stream.task = task
        self.state.tasks.add(task)
        if ended:
            stream.on_end()

    def _on_data(self, event: ev.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.body_delivered:
            return
        stream.on_data(event.data, event.flow_controlled_length)
        declared = stream.declared
        if declared >= 0 and (
            stream.body_size > declared or (event.ended and stream.body_size != declared)
        ):
            # RFC 9113 section 8.1.1: DATA that disagrees with Content-Length.
            self._malformed(event.stream_id)
            return
        if stream.body_size > self.limits.max_body_size:
            self._too_large(stream)
        elif event.ended:
            stream.on_end()

    def _on_trailers(self, event: ev.TrailersReceived) -> None:
        # ASGI has no message for request trailers: as over HTTP/1.1 they are
        # accepted (within the header list limit) and dropped; the body ends here.
        try:
            check_trailers(event.headers)
        except MalformedRequest:
            self._malformed(event.stream_id)
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            declared = stream.declared
            if declared >= 0 and stream.body_size != declared:
                self._malformed(event.stream_id)
                return
            stream.on_end()

    def _malformed(self, sid: int) -> None:
        """RFC 9113 section 8.1.1: a malformed request is a stream error."""
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.on_disconnect()
        self.reset(sid, ErrorCode.PROTOCOL_ERROR)

    def _on_reset(self, event: ev.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            stream.on_disconnect()

    def _on_window(self, event: ev.WindowUpdated) -> None:
        sid = event.stream_id
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.wake_window()
        else:
            self._wake_windows()

    def _on_settings(self, event: ev.SettingsChanged) -> None:
        self._wake_windows()  # SETTINGS_INITIAL_WINDOW_SIZE may have opened windows

    def _on_goaway(self, event: ev.ConnectionTerminated) -> None:
        # RFC 9113 section 6.8 lets the streams in flight complete, but a client sends
        # GOAWAY as it leaves (h2load does as it stops): for the apps still running,
        # the client has left, as if the connection were lost.
        self._closing = True
        self._disconnect_all()
        if not self.running:
            self.flush()
            self.transport.close()

    def _disconnect_all(self) -> None:
        """The connection can carry nothing more: every running app sees a disconnect."""
        for stream in list(self.running):
            stream.on_disconnect()

    def _wake_windows(self) -> None:
        for stream in self.streams.values():
            stream.wake_window()

    # -- the request --------------------------------------------------------------------

    def _too_large(self, stream: H2Stream) -> None:
        stream.body.clear()
        stream.on_disconnect()
        if not stream.head_sent:
            stream.status = 413
            self.respond(stream.stream_id, 413)
            # The answer is complete: NO_ERROR asks the client to stop sending the body
            # without discarding the answer (RFC 9113 section 8.1).
            self.reset(stream.stream_id, ErrorCode.NO_ERROR)
        else:
            self.reset(stream.stream_id, ErrorCode.CANCEL)
        self.streams.pop(stream.stream_id, None)

    # -- what streams call --------------------------------------------------------------

    def flush(self) -> None:
        """Write what the core has queued."""
        self._unflushed = 0
        data = self.conn.data_to_send()
        if data and not self.lost:
            self.transport.write(data)

    def flush_soon(self, size: int) -> None:
        """Write what the core has queued once this turn of the event loop is over.

        The responses of the streams that run in one turn then leave in one write
        (one system call instead of one each). ``size`` is what was just queued: past
        the write high-water mark it is written now, so that ``send()`` sees the
        transport pause as it would over HTTP/1.1.
        """
        self._unflushed += size
        if self._unflushed >= self.limits.write_high_water:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_scheduled = False
        self.flush()

    async def drain(self) -> None:
        """Wait until the transport is below its high-water mark."""
        if self.lost:
            raise ClientDisconnected("client disconnected")
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter
        if self.lost:
            raise ClientDisconnected("client disconnected")

    def credit(self, stream_id: int, n: int) -> None:
        """Reopen a stream's receive window by ``n`` bytes the app has taken.

        The WINDOW_UPDATE leaves with whatever else this turn of the loop writes (a
        WebSocket's echo, the end of ``data_received``): one write, not two.
        """
        self.conn.open_window(stream_id, n)  # nothing once the stream has closed
        self.flush_soon(0)

    def respond(
        self, stream_id: int, status: int, fields: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer a stream with an empty response of ``status`` (and ``fields``)."""
        headers = status_headers(status)
        if fields:
            headers += fields
        try:
            self.conn.send_headers(stream_id, headers, end_stream=True)
        except StreamClosedError:  # the stream or the connection has closed
            return
        self.flush()

    def reset(self, stream_id: int, code: ErrorCode) -> None:
        self.conn.reset_stream(stream_id, code)  # nothing once the stream has closed
        self.flush()

    def stream_done(self, stream: H2Stream) -> None:
        """The response of ``stream`` has ended (END_STREAM or RST_STREAM sent)."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if not stream.body_complete and not stream.disconnected:
            # RFC 9113 section 8.1: the response is complete, the request is not;
            # ask the client to stop sending it.
            self.reset(stream.stream_id, ErrorCode.NO_ERROR)

    def task_done(self, stream: H2Stream) -> None:
        """The app task of ``stream`` has ended."""
        self.running.discard(stream)
        if stream.task is not None:
            self.state.forget_task(stream.task)
        if not self.running and not self.lost:
            self._idle_since = time.monotonic()
            if self._closing:
                self.flush()
                self.transport.close()

    # -- limits -------------------------------------------------------------------------

    def _count_resets(self, n: int) -> bool:
        """Count ``n`` stream resets; False once past the limit (the connection is closing)."""
        now = time.monotonic()
        if now - self._reset_start > 1.0:
            self._reset_start = now
            self._resets = 0
        self._resets += n
        if self._resets > _MAX_RESETS:
            self._calm(f"more than {_MAX_RESETS} stream resets a second (rapid reset)")
            return False
        return True

    def _calm(self, why: str) -> None:
        """GOAWAY ENHANCE_YOUR_CALM and close: the client broke one of our limits."""
        error_log.warning("%s - HTTP/2 connection closed: %s", fmt_client(self.client), why)
        # What the core queued for the offending read (the RST_STREAMs or ACKs that
        # broke the limit) is dropped: GOAWAY goes out alone.
        self.conn.data_to_send()
        self._end(ErrorCode.ENHANCE_YOUR_CALM, "")

    def _end(self, code: ErrorCode, why: str) -> None:
        """GOAWAY with ``code`` and close: a connection error (logged here if ``why``)."""
        if why:
            error_log.info("%s - HTTP/2 protocol error: %s", fmt_client(self.client), why)
        self._dead = True
        self._goaway(code)
        self._disconnect_all()
        if self._write_paused:
            self.transport.abort()  # it doesn't read: don't wait to write to it
        else:
            self.transport.close()

    def _goaway(self, code: ErrorCode) -> None:
        """Send GOAWAY with the last stream id we received, after what is queued."""
        self.conn.send_goaway(code)
        self.flush()

    # -- lifecycle hooks used by the server ---------------------------------------------

    def check_timeouts(self, now: float) -> None:
        if self.lost or self.transport is None:
            return
        t = self.timeouts
        idle = self._idle_since
        if idle is not None and not self.running and now - idle > t.keepalive:
            self._closing = True
            self._goaway(ErrorCode.NO_ERROR)
            self.transport.close()
            return
        if self.running and not self._keepalive(now):
            return
        for stream in list(self.streams.values()):
            blocked = stream.blocked_since
            if blocked is not None and now - blocked > t.h2_stall:
                why = "the client's flow-control window stayed closed (--h2-stall-timeout)"
            elif (
                stream.waiter is not None
                and not stream.body_complete
                and now - stream.last_body > t.body
            ):
                why = "request body stalled (--body-timeout)"
            else:
                continue
            error_log.info("%s - HTTP/2 stream reset: %s", fmt_client(self.client), why)
            stream.on_disconnect()
            self.streams.pop(stream.stream_id, None)
            self.reset(stream.stream_id, ErrorCode.CANCEL)

    def _keepalive(self, now: float) -> bool:
        """PING a silent connection whose streams run; False once it has been closed.

        Long-lived streams (SSE, WebSockets) may carry nothing for minutes: with the
        WebSocket ping settings, a connection the client has sent nothing on for
        ``--ws-ping-interval`` gets a PING (RFC 9113 section 6.7), and one that then
        stays silent for ``--ws-ping-timeout`` is closed, its apps disconnected. The
        PING keeps proxies and NATs from dropping the connection, and finds a client
        that has gone without a word.
        """
        settings = self.state.config.websocket
        sent = self._ping_sent
        if sent is not None:
            if settings.ping_timeout is not None and now - sent > settings.ping_timeout:
                error_log.info(
                    "%s - HTTP/2 connection closed: keepalive PING unanswered (--ws-ping-timeout)",
                    fmt_client(self.client),
                )
                self._end(ErrorCode.NO_ERROR, "")
                return False
        elif settings.ping_interval is not None and now - self._last_heard > settings.ping_interval:
            self._ping_sent = now
            self.conn.ping(b"tidings!")
            self.flush()
        return True

    def shutdown(self) -> None:
        if self._closing or self.lost:
            return
        self._closing = True
        self._goaway(ErrorCode.NO_ERROR)
        for stream in list(self.streams.values()):
            stream.shutdown()  # WebSockets close with 1001; responses complete
        self.flush()
        if not self.running:
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        for stream in self.running:
            if stream.task is not None:
                stream.task.cancel()
        self.transport.close()


_HANDLERS: Final[dict[type, Callable[[H2Protocol, Any], None]]] = {
    ev.RequestReceived: H2Protocol._on_request,
    ev.DataReceived: H2Protocol._on_data,
    ev.TrailersReceived: H2Protocol._on_trailers,
    ev.StreamReset: H2Protocol._on_reset,
    ev.WindowUpdated: H2Protocol._on_window,
    ev.SettingsChanged: H2Protocol._on_settings,
    ev.ConnectionTerminated: H2Protocol._on_goaway,
}


class AlpnSelector(asyncio.Protocol):
    """The protocol of a new TLS connection until ALPN has chosen HTTP/2 or HTTP/1.1."""

    __slots__ = ("state",)

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.Protocol = (
            H2Protocol(self.state) if chosen == "h2" else HttpProtocol(self.state)
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def install(state: ServerState) -> None:
    """Accept h2c (the HTTP/2 preface on a cleartext connection) unless configured off."""
    config = state.config
    if not (config.http2 and config.h2c):
        return

    def handoff(http: Any, earlier: int, data: bytes) -> None:
        H2Protocol(state).adopt(http, PREFACE[:earlier] + data)

    state.h2c_upgrade = handoff
