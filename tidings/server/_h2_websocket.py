"""WebSocket over one HTTP/2 stream: the extended CONNECT of RFC 8441.

Theory of operation
-------------------
When ``--h2-connect-protocol`` is on, the server advertises
SETTINGS_ENABLE_CONNECT_PROTOCOL, and a request with ``:method CONNECT`` and
``:protocol websocket`` becomes an ``H2WebSocket``: an ``H2Stream`` (``_h2_stream``)
whose DATA frames carry WebSocket frames instead of a body (RFC 8441 section 5).
Everything WebSocket is shared with the HTTP/1.1 path:

- the handshake's fields: ``sec-websocket-version`` must be 13 (else **400**, RFC
  8441 section 5 keeps RFC 6455's rule); subprotocols and permessage-deflate offers
  are parsed and negotiated by ``tidings.wire`` (no Sec-WebSocket-Key: HTTP/2 has no
  Upgrade to prove);
- what the app may send when: ``tidings._asgi.ASGIWebSocketConnection`` (an accept is
  a ``:status 200`` HEADERS frame, a refusal an HTTP response on the stream);
- frames, limits and deflate: ``tidings.wire.WebSocketConnection`` with the
  ``--ws-*`` limits of the HTTP/1.1 path.

Writing: every byte for the client (the app's messages and the frames the core queues
on its own: pongs, close echoes) goes through one lock, in order, with the stream's
flow control (``H2Stream._write``): a frame is never split by another. The app's
``send()`` waits for it; core frames queued while the app is not sending are written
by a short task, and past ``--ws-max-send-buffer`` of them the stream is reset.

Reading: DATA reopens the stream window once the app has taken the messages, so a
client is held by ``--ws-max-queue`` unread messages as over HTTP/1.1.

Ending: when the closing handshake completes the stream is ended (END_STREAM); a
client's END_STREAM or RST_STREAM before it is an abnormal closure (1006).

Not here: keepalive (the connection's PINGs, ``H2Protocol._keepalive``, with the
``--ws-ping-*`` settings) and a handshake timeout of its own (the connection's idle
and stall timeouts apply). Direct delivery
(``tidings.websocket.direct``) is not offered: group messages go through the consumer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from tidings import _metrics
from tidings._asgi import (
    ACCEPTED,
    Accept,
    ASGIMessageError,
    ASGIWebSocketConnection,
    Close,
    Refusal,
    SendBytes,
    SendText,
    send_payload,
)
from tidings._types import ASGIApp, Message
from tidings.server._cycle import ClientDisconnected
from tidings.server._h2_stream import H2Stream
from tidings.server._state import error_log, fmt_client
from tidings.server._ws_handshake import disconnect as _disconnect
from tidings.wire import (
    BytesMessage,
    CloseReceived,
    ConnectionClosedError,
    ConnectionFailed,
    ConnectionLost,
    ConnectionState,
    DeflateConfig,
    TextMessage,
    WebSocketConnection,
    negotiate_deflate,
)
from tidings.wire.handshake import parse_extensions
from tidings.wire.headers import InvalidField, check_fields
from tidings.wire.http2 import ErrorCode, StreamClosedError

if TYPE_CHECKING:
    from tidings.server._http2 import H2Protocol

__all__ = ["H2WebSocket"]

_ASGI: Final = {"version": "3.0", "spec_version": "2.4"}
_CLOSED: Final = ConnectionState.CLOSED
_DROPPED: Final = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)


class H2WebSocket(H2Stream):
    """One WebSocket on an HTTP/2 stream (RFC 8441), run as an ASGI ``websocket`` app."""

    __slots__ = (
        "_asgi",
        "_core",
        "_credit_held",
        "_done",
        "_early",
        "_ended",
        "_lock",
        "_messages",
        "_offers",
        "_pending",
        "_receiver",
        "_version",
        "_writers",
        "ws_scope",
    )

    def __init__(self, protocol: H2Protocol, stream_id: int, scope: dict[str, Any]) -> None:
        super().__init__(protocol, stream_id, scope)
        self.body_complete = False
        subprotocols: list[str] = []
        offers: list[bytes] = []
        version = b""
        for name, value in scope["headers"]:
            if name == b"sec-websocket-protocol":
                subprotocols += [p.strip() for p in value.decode("latin-1").split(",") if p]
            elif name == b"sec-websocket-extensions":
                offers.append(value)
            elif name == b"sec-websocket-version":
                version = value
        self._version = version
        self._offers = offers
        self.ws_scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": _ASGI,
            "http_version": "2",
            "scheme": "wss" if scope["scheme"] == "https" else "ws",
            "path": scope["path"],
            "raw_path": scope["raw_path"],
            "query_string": scope["query_string"],
            "root_path": scope["root_path"],
            "headers": scope["headers"],
            "client": scope["client"],
            "server": scope["server"],
            "subprotocols": [p.strip() for p in subprotocols if p.strip()],
            "state": scope["state"],
            "extensions": {"websocket.http.response": {}},
        }
        self._asgi = ASGIWebSocketConnection(stream_denial=True)
        self._core: WebSocketConnection | None = None
        self._messages: deque[Message] = deque([{"type": "websocket.connect"}])
        self._receiver: asyncio.Future[None] | None = None
        self._done: Message | None = None  # the websocket.disconnect, once over
        self._early: list[bytes] = []  # DATA before the app accepted
        self._credit_held = 0  # window held back while the app has max_queue unread
        self._lock = asyncio.Lock()  # one writer at a time: frames stay whole
        self._pending = 0  # bytes of core frames waiting for the lock
        self._ended = False  # END_STREAM or RST_STREAM sent
        self._writers: set[asyncio.Task[None]] = set()  # _out_later tasks, held until done

    # -- events from the protocol -------------------------------------------------------

    def on_data(self, data: bytes, flow: int) -> None:
        core = self._core
        if core is None:
            # Before accept: held, and the window stays shut (--h2-initial-window-size).
            self._early.append(data)
            self.buffered += flow
            return
        self._feed(core, data)
        settings = self.protocol.state.config.websocket
        if len(self._messages) < settings.max_queue:
            self.protocol.credit(self.stream_id, flow)
        else:
            self._credit_held += flow

    def on_end(self) -> None:
        self.body_complete = True
        if self._done is None:
            # The client ended its side without a closing handshake (RFC 8441 section
            # 5: END_STREAM is the TCP FIN).
            self._finish(_disconnect(1006))
            self._end_stream(ErrorCode.NO_ERROR)

    def on_disconnect(self) -> None:
        super().on_disconnect()
        self._finish(_disconnect(1006))

    def shutdown(self) -> None:
        """Graceful shutdown: close an open WebSocket with 1001, as over HTTP/1.1."""
        if self._core is not None:
            self._close(1001, "server shutting down")
        elif not self.head_sent:
            self._refuse_plain(503)

    def _feed(self, core: WebSocketConnection, data: bytes) -> None:
        core.receive_data(data)
        m = _metrics.ACTIVE
        if m is not None:
            m.ws_bytes_in += len(data)
        for event in core.events():
            if isinstance(event, TextMessage):
                self._deliver({"type": "websocket.receive", "text": event.data})
                if m is not None:
                    m.ws_messages_in += 1
            elif isinstance(event, BytesMessage):
                self._deliver({"type": "websocket.receive", "bytes": event.data})
                if m is not None:
                    m.ws_messages_in += 1
            elif isinstance(event, CloseReceived):
                self._finish(_disconnect(event.code, event.reason))
            elif isinstance(event, ConnectionFailed):
                error_log.info(
                    "%s - WebSocket protocol error: %s (close code %d)",
                    fmt_client(self.ws_scope["client"]),
                    event.reason,
                    event.code,
                )
                self._finish(_disconnect(event.code))
            elif isinstance(event, ConnectionLost):
                self._finish(_disconnect(1006))
            # PingReceived: the core has queued the pong (RFC 6455 section 5.5.2).
        self._queue_core_output(core)

    def _deliver(self, message: Message) -> None:
        self._messages.append(message)
        self._wake_receiver()

    def _finish(self, message: Message) -> None:
        if self._done is None:
            if self._core is not None and (m := _metrics.ACTIVE) is not None:
                m.closed(message["code"])
            self._done = message
            self._wake_receiver()

    def _wake_receiver(self) -> None:
        waiter = self._receiver
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- writing ------------------------------------------------------------------------

    def _queue_core_output(self, core: WebSocketConnection) -> None:
        """Write what the core queued on its own (pongs, close frames), in order."""
        out = core.data_to_send()
        end = core.state is _CLOSED
        if not out and not end:
            return
        limit = self.protocol.state.config.websocket.max_send_buffer
        self._pending += len(out)
        if self._pending > limit:
            # The client sends pings (or closes) without reading the answers.
            error_log.warning(
                "%s - WebSocket client not reading: --ws-max-send-buffer exceeded",
                fmt_client(self.ws_scope["client"]),
            )
            self._finish(_disconnect(1008, "send buffer full"))
            self._end_stream(ErrorCode.CANCEL)
            return
        self._spawn(self._out_later(out, end, len(out)))

    async def _out(self, data: bytes, end: bool, *, queued: int = 0) -> None:
        """Write ``data`` in order with every other write; end the stream if ``end``.

        Raises:
            ClientDisconnected: the stream was reset or the connection lost meanwhile.
        """
        async with self._lock:
            self._pending -= queued
            if self._ended:
                return
            await self._write(data, end)
            if end:
                self._ended = True
                self.protocol.stream_done(self)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.protocol.loop.create_task(coro)
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def _out_later(self, data: bytes, end: bool, queued: int) -> None:
        """``_out`` as a task of its own, for what no ``send()`` waits for."""
        try:
            await self._out(data, end, queued=queued)
        except ClientDisconnected:
            pass  # the client is gone: nothing left to tell it

    def _end_stream(self, code: ErrorCode) -> None:
        if not self._ended:
            self._ended = True
            self.protocol.reset(self.stream_id, code)
            self.protocol.stream_done(self)
            # Writes waiting for the window or the lock give up (ClientDisconnected).
            H2Stream.on_disconnect(self)

    # -- the application ----------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        protocol = self.protocol
        try:
            if self._version != b"13":
                # RFC 6455 section 4.2.2: name the version we speak.
                protocol.respond(self.stream_id, 400, [(b"sec-websocket-version", b"13")])
                self._ended = True
                protocol.stream_done(self)
                return
            try:
                await app(self.ws_scope, self.ws_receive, self.ws_send)
            except Exception as exc:
                self._app_failed(exc)
            else:
                self._app_returned()
        finally:
            protocol.task_done(self)

    def _app_failed(self, exc: Exception) -> None:
        if self._done is not None or isinstance(exc, ClientDisconnected):
            error_log.debug("ASGI application stopped after the client left: %r", exc)
            self._end_stream(ErrorCode.CANCEL)
        elif self._core is None:
            error_log.error("Exception in ASGI application before accept", exc_info=exc)
            self._refuse_plain(500)
        else:
            error_log.error("Exception in ASGI application", exc_info=exc)
            self._close(1011, "internal error")

    def _app_returned(self) -> None:
        if self._core is None:
            if not self.head_sent:
                self._refuse_plain(403)  # returning without an answer is a refusal
            else:
                self._end_stream(ErrorCode.INTERNAL_ERROR)  # a denial left unfinished
        elif self._done is None:
            self._close(1000, "")
        elif not self._ended:
            self._spawn(self._out_later(b"", True, 0))

    def _refuse_plain(self, status: int) -> None:
        if not self._ended:
            self._ended = True
            self._finish(_disconnect(1006))
            self.protocol.respond(self.stream_id, status)
            self.protocol.stream_done(self)

    def _close(self, code: int, reason: str) -> None:
        core = self._core
        if core is None or self._ended:
            return
        try:
            core.close(code, reason)
        except ConnectionClosedError:
            return
        self._queue_core_output(core)

    async def ws_receive(self) -> Message:
        """The ASGI ``receive``: ``websocket.connect``, messages, then the disconnect."""
        messages = self._messages
        while not messages:
            if self._done is not None:
                return self._done
            waiter = self._receiver = self.protocol.loop.create_future()
            try:
                await waiter
            finally:
                self._receiver = None
        message = messages.popleft()
        if self._credit_held and len(messages) < self.protocol.state.config.websocket.max_queue:
            credit, self._credit_held = self._credit_held, 0
            self.protocol.credit(self.stream_id, credit)
        return message

    async def ws_send(self, message: Message) -> None:
        """The ASGI ``send``, checked by the application's state machine."""
        core = self._core
        if (
            message["type"] == "websocket.send"
            and core is not None
            and self._asgi.phase is ACCEPTED
        ):
            if self._done is not None or self._ended:
                raise ClientDisconnected("WebSocket connection is closed")
            data = send_payload(message)
            try:
                if isinstance(data, str):
                    core.send_text(data)
                else:
                    core.send_bytes(data)
            except ConnectionClosedError:
                raise ClientDisconnected("WebSocket connection is closed") from None
            out = core.data_to_send()
            if (m := _metrics.ACTIVE) is not None:
                m.ws_messages_out += 1
                m.ws_bytes_out += len(out)
            await self._out(out, False)
            return
        if self._ended and message["type"] != "websocket.close":
            raise ClientDisconnected("WebSocket connection is closed")
        try:
            action = self._asgi.app_sent(message)
        except ASGIMessageError as exc:
            if exc.closed:
                raise ClientDisconnected("WebSocket connection is closed") from None
            raise
        if isinstance(action, Accept):
            self._accept(action)
        elif isinstance(action, Refusal):
            await self._refuse(action)
        elif isinstance(action, Close):
            if core is None:
                self._refuse_plain(403)
            else:
                try:
                    core.close(action.code, action.reason)
                except ValueError as exc:
                    raise RuntimeError(f"invalid websocket.close: {exc}") from None
                self._queue_core_output(core)
        elif isinstance(action, SendText | SendBytes):
            raise RuntimeError("websocket.send after a failed websocket.accept")

    def _accept(self, action: Accept) -> None:
        """``websocket.accept``: a 200 on the stream (RFC 8441 section 5), then frames."""
        if self._ended:
            raise ClientDisconnected("WebSocket connection is closed")
        settings = self.protocol.state.config.websocket
        headers = list(action.headers)
        try:
            check_fields(headers)
            offers = parse_extensions(self._offers)
        except (InvalidField, ValueError) as exc:
            raise RuntimeError(f"invalid websocket.accept: {exc}") from None
        negotiated = negotiate_deflate(offers, DeflateConfig(enabled=settings.per_message_deflate))
        fields = [(b":status", b"200")]
        if action.subprotocol is not None:
            fields.append((b"sec-websocket-protocol", action.subprotocol.encode("latin-1")))
        if negotiated is not None:
            fields.append((b"sec-websocket-extensions", negotiated[0]))
        fields += [(n.lower(), v) for n, v in headers if n.lower() not in _DROPPED]
        self.head_sent = True
        self.response_started = True
        self.status = 200
        if (m := _metrics.ACTIVE) is not None:
            m.ws_accepted += 1
        try:
            self.protocol.conn.send_headers(self.stream_id, fields, end_stream=False)
        except StreamClosedError:  # reset by the client meanwhile
            raise ClientDisconnected("WebSocket connection is closed") from None
        self.protocol.flush()
        core = self._core = WebSocketConnection(
            max_message_size=settings.max_message_size,
            max_frame_size=settings.max_frame_size,
            max_fragments=settings.max_fragments,
            deflate=None if negotiated is None else negotiated[1],
        )
        early, self._early = self._early, []
        if self.buffered:
            self.protocol.credit(self.stream_id, self.buffered)
            self.buffered = 0
        if early:
            self._feed(core, b"".join(early))

    async def _refuse(self, action: Refusal) -> None:
        """A denial: ``websocket.close`` (403) or the app's own HTTP response."""
        if action.body is None:
            self._refuse_plain(403)
            return
        if not self.head_sent:
            headers = list(action.headers)
            try:
                check_fields(headers)
            except InvalidField as exc:
                raise RuntimeError(f"websocket.http.response.start: {exc}") from None
            fields = [(b":status", b"%d" % action.status)]
            fields += [(n.lower(), v) for n, v in headers if n.lower() not in _DROPPED]
            self.head_sent = True
            self.status = action.status
            self._finish(_disconnect(1006))
            try:
                self.protocol.conn.send_headers(self.stream_id, fields, end_stream=False)
            except StreamClosedError:
                raise ClientDisconnected("WebSocket connection is closed") from None
        async with self._lock:
            await self._write(action.body, not action.more_body)
        if not action.more_body:
            self._ended = True
            self.protocol.stream_done(self)
