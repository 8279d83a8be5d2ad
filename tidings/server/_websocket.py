"""WebSocket over asyncio: one ``WebSocketProtocol`` per upgraded TCP connection.

Theory of operation
-------------------
``install(state)`` sets ``ServerState.websocket_upgrade``. When ``HttpProtocol`` sees a
request with ``Upgrade: websocket`` it hands us the transport, the HTTP scope and the
bytes that followed the request; ``WebSocketProtocol`` replaces it as the transport's
protocol and runs the ASGI app (WebSocket spec version 2.4) as one task.

Phases (``_phase``)::

    HANDSHAKE --websocket.accept--> OPEN --close handshake / EOF / abort--> DONE
    HANDSHAKE --websocket.close, denial response, app error, timeout--> DONE

* HANDSHAKE: ``_ws_handshake`` checks the request (a bad one never reaches the app) and
  carries out the app's answer to ``websocket.connect``: ``websocket.accept`` goes OPEN;
  a refusal, a denial response, returning, raising or a timeout is an HTTP response,
  then DONE. Frames that arrive early are held (reading pauses past 64 KiB) and fed to
  the core on accept.
* OPEN: bytes go to ``wire.WebSocketConnection``; its events become ASGI messages in a
  deque that ``receive()`` pops, with one future for a ``receive()`` that waits. Pongs
  and close echoes the core queues are written once per ``data_received``. Reading
  pauses while ``max_queue`` messages wait for the app.
* DONE: ``receive()`` returns ``websocket.disconnect`` (the client's close code and
  reason; the code we failed the connection with; 1006 when the TCP connection ended
  without a closing handshake or the handshake never completed) after every message
  received before it. ``send()`` raises ``ClientDisconnected`` (an ``OSError``), except
  that a repeated ``websocket.close`` after the app's own is a no-op. An app task still
  running on entering DONE goes to ``ServerState.orphaned``: cancelled if it has not
  returned ``--application-close-timeout`` seconds later.

Flow control: the transport's high-water mark is the smaller of ``--write-high-water``
and ``--ws-max-send-buffer``. ``send()`` waits while the transport is above it
(``pause_writing``/``resume_writing``). Anything queued beyond ``max_send_buffer`` (many
concurrent senders, a ping flood from a client that does not read) means the client has
stopped reading: the connection is closed with 1008 and the transport aborted.

Memory: an idle connection holds its transport, this object, the app's task (with no
wrapper coroutine: when calling the app runs none of its code, the task runs the app's
own coroutine, and this object is the task's done callback), the future its waiting
``receive()`` yields to that task, its scope (key-sharing dicts, ``_ws_handshake``) and
the core, which holds no parser, buffer or list while idle. Everything else is made when
something needs it and dropped after (tests/server/test_websocket.py bounds the total).

Endings: how the connection ends (the app task's end, our close, a held protocol
error, an overflowing send buffer, shutdown and abort) is ``_ws_close``'s; the class
binds its functions as methods. Each runs a few times per connection at most.

Timers: none per connection. The server's once-a-second sweep calls ``check_timeouts``
(``_ws_timeouts``: keepalive pings; the handshake, ping and close timeouts). Activity is
a flag set in ``data_received``, so the hot path never reads the clock.

Extensions (the scope's ``extensions``): ``websocket.http.response`` (ASGI denial
responses) and ``tidings.websocket.direct`` (``tidings._types.WebSocketDirect``): its
``send_nowait`` writes a ``websocket.send`` message at once, or refuses, never waiting,
so a channel layer can write a group message to an idle member's socket without waking
its consumer. Uncompressed connections frame a str/bytes payload through
``ServerState.shared_frame``: a broadcast hands every member the same object, and it is
framed once per process.

What the app may send, in what order and with what fields, is ``tidings._asgi``'s
(the same rules as the session transports): ``send()`` asks it for an action and runs
the method for that action; the accepted-phase ``websocket.send`` is the hot path,
inline in ``send()`` with the one payload check (``send_payload``).

What must not go here: framing or handshake rules (``tidings.wire``), the ASGI message
rules (``tidings._asgi``), HTTP parsing (``http11``), anything that knows about Django
or channel layers, timeout checks (``_ws_timeouts``), the ways a connection ends
(``_ws_close``). What stays is the per-message path: frames in, ``receive``, ``send``,
direct delivery.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, cast

from tidings import _metrics
from tidings._asgi import (
    ACCEPTED,
    CLOSED,
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
from tidings.server import _ws_close, _ws_handshake, _ws_timeouts
from tidings.server._flow import WriteFlowControl
from tidings.server._http11 import ClientDisconnected
from tidings.server._state import ServerState, error_log, fmt_client
from tidings.wire import (
    BytesMessage,
    CloseReceived,
    ConnectionClosedError,
    ConnectionFailed,
    ConnectionLost,
    DeflateConfig,
    HandshakeRequest,
    PongReceived,
    TextMessage,
    WebSocketConnection,
    encode_message,
)

if TYPE_CHECKING:
    from tidings.server._http11 import HttpProtocol

__all__ = ["CLOSE_TIMEOUT", "WebSocketProtocol", "install"]

#: Seconds we wait for the client's close frame after sending ours, and for the last
#: bytes to flush before the TCP connection is cut (websockets uses 10 s; browsers
#: answer within milliseconds).
CLOSE_TIMEOUT: Final = 10.0
#: Bytes a client may send before the app accepts; reading pauses beyond it.
_HANDSHAKE_BUFFER: Final = 64 * 1024

_HANDSHAKE, _OPEN, _DONE = _ws_handshake.HANDSHAKE, _ws_handshake.OPEN, _ws_handshake.DONE
_disconnect = _ws_handshake.disconnect
_ACCEPTED: Final = ACCEPTED
_APP_CLOSED: Final = CLOSED
_MESSAGES: Final = (TextMessage, BytesMessage)
#: The permessage-deflate settings of ``--ws-per-message-deflate`` on and off.
_DEFLATE: Final = {enabled: DeflateConfig(enabled=enabled) for enabled in (False, True)}
#: The name of every WebSocket app task (``Task.get_name()``).
_TASK_NAME: Final = "tidings.websocket"
#: The application side of every connection in the accepted phase that has sent nothing
#: but ``websocket.send`` since (``_send_other`` gives a connection its own before any
#: other message, which may change it).
_ACCEPTED_APP: Final = ASGIWebSocketConnection(stream_denial=True)
_ACCEPTED_APP.phase = ACCEPTED
#: Held by every connection until one of its sends waits, never appended to (``_drain``
#: gives the connection a list of its own), so an idle connection holds no list.
_NO_WAITERS: Final[list[asyncio.Future[None]]] = []
#: The context the app task's done callback runs in: it reads no context variable.
_NO_CONTEXT: Final = contextvars.Context()


def _calls_create_coroutine(app: object) -> bool:
    """Whether calling ``app`` only creates a coroutine, running none of its code yet.

    True for an ``async def`` function and for an object whose class's ``__call__`` is
    one. Anything else (a plain ``__call__`` returning an awaitable, a partial) may run
    code when called, which must happen inside the app's task, so it is called there.
    """
    if inspect.isfunction(app):
        return inspect.iscoroutinefunction(app)
    return inspect.iscoroutinefunction(inspect.getattr_static(type(app), "__call__", None))


def install(state: ServerState) -> None:
    """Enable WebSocket on this server: set the HTTP protocol's upgrade hook."""
    direct = _calls_create_coroutine(state.app)

    def upgrade(http: HttpProtocol, scope: dict[str, Any], trailing: bytes) -> None:
        protocol = WebSocketProtocol(state, http.transport, scope)
        http.transport.set_protocol(protocol)
        protocol.start(scope["method"], trailing, direct=direct)

    state.websocket_upgrade = upgrade


class WebSocketProtocol(WriteFlowControl, asyncio.Protocol):
    """One WebSocket connection after the HTTP upgrade request: the ASGI glue.

    Built by the upgrade hook that ``install`` sets; ``start`` then checks the handshake
    and runs the app.

    Args:
        state: the server's shared state (config, app, connection registry).
        transport: the connection's transport, taken over from ``HttpProtocol``.
        scope: the HTTP scope ``HttpProtocol`` built for the upgrade request.
    """

    __slots__ = (
        "_asgi",
        "_chunked",
        "_conn",
        "_deadline",
        "_denial",
        "_disconnect",
        "_early",
        "_held",
        "_held_since",
        "_lost",
        "_max_queue",
        "_phase",
        "_ping_sent",
        "_queue",
        "_read_paused",
        "_request",
        "_seen",
        "_settings",
        "_since",
        "_waiter",
        "scope",
        "state",
        "task",
        "transport",
    )

    def __init__(
        self,
        state: ServerState,
        transport: asyncio.Transport,
        scope: dict[str, Any],
    ) -> None:
        self.state = state
        self.transport = transport
        self._settings = settings = state.config.websocket
        self._max_queue = settings.max_queue
        # Built per connection: direct delivery is bound to this socket.
        extensions = _ws_handshake.websocket_extensions(self.send_nowait)
        self.scope = _ws_handshake.websocket_scope(scope, extensions)
        self._phase = _HANDSHAKE
        self._request: HandshakeRequest | None = None
        self._conn: WebSocketConnection | None = None
        # Messages for receive(), oldest first (a deque of 760 bytes only while some wait),
        # and the future of a receive() that waits (only while there are none).
        self._queue: deque[Message] | None = None
        self._waiter: asyncio.Future[Message] | None = None
        self._disconnect: Message | None = None  # set once: the connection is over (DONE)
        # The application's side (what it may send now), and the denial response whose
        # head is written (with chunked framing or not).
        self._asgi = ASGIWebSocketConnection(stream_denial=True)
        self._denial: Refusal | None = None
        self._chunked = False
        self._early: bytearray | None = None  # bytes received before websocket.accept
        # A protocol error that came after messages the app has not answered yet: our
        # close frame and the disconnect, held until the app has read those messages.
        self._held: tuple[bytes, Message] | None = None
        self._held_since = 0.0
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        # Shared and empty until a send() has to wait (_drain): no list per connection.
        self._drain_waiters = _NO_WAITERS
        # Handshake start, then the last sweep that saw client activity.
        self._since = time.monotonic()
        self._seen = False  # data arrived since the last sweep
        self._ping_sent = 0.0  # when the unanswered keepalive ping went out; 0: none
        self._deadline = 0.0  # abort the transport after this; 0: no deadline
        self.task: asyncio.Task[None] | None = None

    # Read where they are needed (logs, a paused transport), not held per connection.

    @property
    def _client(self) -> tuple[str, int] | None:
        client: tuple[str, int] | None = self.scope.get("client")
        return client

    @property
    def _max_send_buffer(self) -> int:
        return self._settings.max_send_buffer

    @property
    def _deflate(self) -> DeflateConfig:
        """permessage-deflate settings (``enabled=False`` never negotiates it)."""
        return _DEFLATE[self._settings.per_message_deflate]

    # -- start ----------------------------------------------------------------------------

    def start(self, method: str, trailing: bytes, *, direct: bool = False) -> None:
        """Check the handshake (RFC 6455 §4.2.1) and start the app, or answer an HTTP error.

        Args:
            method: the request method (anything but GET gets 405).
            trailing: bytes the client sent after the request; fed in after accept.
            direct: calling the app only makes a coroutine (it is an ``async def``
                function or its class's ``__call__`` is one; see
                ``_calls_create_coroutine``), so its task runs that coroutine itself,
                without a wrapper coroutine kept for the life of the connection.
        """
        state = self.state
        state.connections.add(self)
        self.transport.set_write_buffer_limits(
            high=min(state.config.limits.write_high_water, self._max_send_buffer)
        )
        request = _ws_handshake.check_request(self, method)
        if request is None:
            return
        self._request = request
        self.scope["subprotocols"] = list(request.subprotocols)
        self._queue = deque(({"type": "websocket.connect"},))
        if trailing:
            self.data_received(trailing)
        app = state.app
        call = app(self.scope, self.receive, self.send) if direct else self._call(app)
        # One name for all: asyncio would otherwise make a "Task-<n>" string per task.
        task = self.task = self.state.loop.create_task(
            cast(Coroutine[Any, Any, None], call), name=_TASK_NAME
        )
        # What the app's end means is decided once the task is done (a wrapper coroutine
        # around the app would hold a frame for the life of the connection). The protocol
        # is the callback itself (``__call__``: no bound method held per connection), and
        # it reads no context variable: one empty context serves them all.
        task.add_done_callback(self, context=_NO_CONTEXT)
        state.tasks.add(task)

    # -- the app --------------------------------------------------------------------------

    async def _call(self, app: ASGIApp) -> None:
        """Call and await an app whose call may run code (in the task, not in ``start``)."""
        await app(self.scope, self.receive, self.send)

    #: The app's task ended (the protocol is its done callback): answer or close.
    __call__ = _ws_close.app_done

    @types.coroutine
    def receive(self) -> Generator[Any, None, Message]:
        """The ASGI ``receive``: ``websocket.connect``, messages, then ``websocket.disconnect``.

        A generator-based coroutine (``types.coroutine``), awaitable and accepted by
        ``create_task`` like an ``async def`` one: when it must wait it yields its
        future to the app's task itself, as ``await future`` would through an iterator
        object that an idle connection would hold for as long as it waits. Its frame,
        held as long, has two locals: the rest of the work is in ``_next``.
        """
        if self._queue:
            return self._next()
        if self._disconnect is not None:
            return self._disconnect
        if self._held is not None:
            # Everything before the protocol error has been read: fail now.
            return self._release_held()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            raise RuntimeError("receive() called while another receive() is waiting")
        waiter = self._waiter = self.state.loop.create_future()
        waiter._asyncio_future_blocking = True  # what Future.__await__ sets: "wait on me"
        yield waiter
        return waiter.result()

    def _next(self) -> Message:
        """The oldest message waiting for ``receive()`` (its own frame: see ``receive``)."""
        queue = self._queue
        assert queue
        message = queue.popleft()
        if not queue:
            self._queue = None
        if self._read_paused and len(queue) < self._max_queue and self._conn is not None:
            self._resume_reading()
        return message

    def send_nowait(self, message: Message) -> bool:
        """Write a ``websocket.send`` message now, without waiting; False if it can't.

        Offered to the app as the ``tidings.websocket.direct`` extension
        (``tidings._types.WebSocketDirect``) so a channel layer can hand a group
        message straight to an idle member's socket (see
        ``BaseChannelLayer.set_direct``). Returns False, and writes nothing, whenever only
        ``send()`` may handle the message: the connection is not open or is closing,
        the client is slow (writing is paused: ``send()`` must wait), or the message
        has no valid ``text``/``bytes``. An uncompressed connection reuses the frame
        encoded by the previous call when the payload is the very same object, so a
        broadcast to many members is encoded once per process.
        """
        conn = self._conn
        if (
            self._phase != _OPEN
            or conn is None
            or self._write_paused
            or self._lost
            or self._asgi.phase is not _ACCEPTED
            or self._held is not None
        ):
            return False
        data = message.get("text")
        if data is None:
            data = message.get("bytes")
            if not isinstance(data, bytes):
                return False
        elif not isinstance(data, str):
            return False
        try:
            # One call into the core per member (a broadcast pays this per socket); it
            # raises ConnectionClosedError unless the connection is OPEN.
            out = conn.send_shared(data, self.state.shared_frame(data))
        except (UnicodeEncodeError, ConnectionClosedError):
            return False
        self.transport.write(out)
        if (m := _metrics.ACTIVE) is not None:
            m.ws_out_sizes.append(len(out))
        return True

    async def send(self, message: Message) -> None:
        """The ASGI ``send``: checked by the application's state machine, then carried out.

        Raises:
            ClientDisconnected: the connection is closed or closing (an ``OSError``).
            RuntimeError: the message is not valid at this point
                (``tidings._asgi.ASGIMessageError`` for the ASGI rules).
        """
        mtype = message["type"]
        if mtype == "websocket.send" and self._phase == _OPEN and self._asgi.phase is _ACCEPTED:
            # The hot path, inline: one check of the payload, no action object, no await
            # unless the client is slow.
            data = send_payload(message)
            conn = self._conn
            assert conn is not None
            try:
                if type(data) is str and not conn.compressing:
                    # A handler forwarding a group message sends the very same str to
                    # every member: frame it once per process.
                    conn.send_encoded(self.state.shared_frame(data))
                elif isinstance(data, str):
                    conn.send_text(data)
                else:
                    conn.send_bytes(data)
            except ConnectionClosedError:
                if self._held is None:
                    raise ClientDisconnected("WebSocket connection is closed") from None
                # Answering a message that preceded the protocol error: the core is
                # closed, so frame it here (uncompressed is valid with deflate too).
                self.transport.write(encode_message(data))
                return
            if self._write_paused and self._over_limit():
                raise ClientDisconnected("client not reading: --ws-max-send-buffer exceeded")
            self.transport.write(out := conn.data_to_send())
            if (m := _metrics.ACTIVE) is not None:
                m.ws_out_sizes.append(len(out))
            if self._write_paused:
                await self._drain()
            return
        await self._send_other(mtype, message)

    async def _send_other(self, mtype: str, message: Message) -> None:
        """Everything but the accepted-phase ``websocket.send``: dispatch on the action."""
        if self._phase == _DONE:
            if mtype == "websocket.close" and self._asgi.phase is _APP_CLOSED:
                return  # closing twice is harmless
            raise ClientDisconnected("WebSocket connection is closed")
        asgi = self._asgi
        if asgi is _ACCEPTED_APP:
            # The shared accepted state is never changed: this connection gets its own.
            asgi = self._asgi = ASGIWebSocketConnection(stream_denial=True)
            asgi.phase = _ACCEPTED
        try:
            action = asgi.app_sent(message)
        except ASGIMessageError as exc:
            if exc.closed:
                raise ClientDisconnected("WebSocket connection is closed") from None
            raise
        if action is not None:
            await _ON_ACTION[type(action)](self, action)
            if self._phase == _OPEN and self._asgi.phase is _ACCEPTED:
                # Accepted: until the app sends something else than websocket.send, its
                # state is the same as every accepted connection's (no object of its own).
                self._asgi = _ACCEPTED_APP

    # -- actions (tidings._asgi); Accept and Refusal are _ws_handshake's, Close _ws_close's --

    async def _on_send(self, action: SendText | SendBytes) -> None:
        # Only reached when websocket.accept was refused by _ws_handshake.accept's checks.
        raise RuntimeError("websocket.send after a failed websocket.accept")

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            if self._phase == _HANDSHAKE:
                early = self._early
                if early is None:
                    early = self._early = bytearray()
                early += data
                if len(early) > _HANDSHAKE_BUFFER:
                    self._pause_reading()
            return
        self._seen = True
        conn.receive_data(data)
        events = conn.events()
        if len(events) == 1:
            # The common case, one message per chunk: no loop, nothing to flush; the
            # read is the message's, counted by its size (tidings._metrics).
            event = events[0]
            if type(event) is TextMessage:
                self._deliver({"type": "websocket.receive", "text": event.data})
                if (m := _metrics.ACTIVE) is not None:
                    m.ws_in_sizes.append(len(data))
                return
            if type(event) is BytesMessage:
                self._deliver({"type": "websocket.receive", "bytes": event.data})
                if (m := _metrics.ACTIVE) is not None:
                    m.ws_in_sizes.append(len(data))
                return
        if (m := _metrics.ACTIVE) is not None:
            m.ws_bytes_in += len(data)
            m.ws_messages_in += sum(type(e) in _MESSAGES for e in events)
        delivered = 0
        for event in events:
            if type(event) is TextMessage:
                self._deliver({"type": "websocket.receive", "text": event.data})
                delivered += 1
            elif type(event) is BytesMessage:
                self._deliver({"type": "websocket.receive", "bytes": event.data})
                delivered += 1
            elif type(event) is PongReceived:
                self._ping_sent = 0.0
            elif type(event) is CloseReceived:
                self._closed(event.code, event.reason)
                return
            elif type(event) is ConnectionFailed:
                _metrics.failed(event.code)
                error_log.info(
                    "%s - WebSocket protocol error: %s (close code %d)",
                    fmt_client(self._client),
                    event.reason,
                    event.code,
                )
                if delivered:
                    # Let the app answer the messages that came before the error
                    # (RFC 6455 §7.1.7 lets us fail after processing them); reading stops.
                    self._held = (conn.data_to_send(), _disconnect(event.code))
                    self._held_since = time.monotonic()
                    self._pause_reading()
                    return
                self._closed(event.code, "")
                return
            elif type(event) is ConnectionLost:
                self._closed(event.code, "")
                return
            # PingReceived: the core has queued the pong (RFC 6455 §5.5.2).
        self._flush()

    def _closed(self, code: int, reason: str) -> None:
        """The core is CLOSED: flush its last frame and close TCP (server first, §7.1.1)."""
        self._flush()
        self._finish(_disconnect(code, reason))
        self._close_transport()

    def _deliver(self, message: Message) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        queue = self._queue = self._queue or deque()
        queue.append(message)
        if len(queue) >= self._max_queue and not self._read_paused:
            self._pause_reading()

    def eof_received(self) -> bool | None:
        if self._conn is not None:
            self.data_received(b"")
        else:
            self._finish(_disconnect(1006))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        held = self._held
        if held is not None:
            self._held = None
            self._finish(held[1])
        self._finish(_disconnect(1006))
        self.state.forget_connection(self)
        self._release_drain_waiters()

    # -- helpers --------------------------------------------------------------------------

    def _finish(self, disconnect: Message) -> None:
        """The connection is over for the app: record why, wake a waiting receive()."""
        if self._disconnect is not None:
            return
        if self._phase == _OPEN and (m := _metrics.ACTIVE) is not None:
            m.closed(disconnect["code"])
        self._phase = _DONE
        self._disconnect = disconnect
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(disconnect)
        task = self.task
        if task is not None:
            self.state.orphaned(task, "WebSocket", self.scope["path"])

    def _flush(self) -> None:
        """Write what the core queued (pongs, close frames, pings)."""
        conn = self._conn
        assert conn is not None
        out = conn.data_to_send()
        if out and not self._lost:
            if self._write_paused and self._over_limit():
                return
            self.transport.write(out)

    def _over_limit(self) -> bool:
        """Whether the client stopped reading: more than max_send_buffer already queued.

        Checked *before* writing, so one message larger than the limit still goes to a
        client that reads; what is queued never exceeds the limit by more than one write.
        """
        if self.transport.get_write_buffer_size() > self._max_send_buffer:
            self._overflow()
            return True
        return False

    async def _drain(self) -> None:
        """Wait until the transport is below its high-water mark again (or gone)."""
        waiter = self.state.loop.create_future()
        waiters = self._drain_waiters
        if waiters is _NO_WAITERS:
            self._drain_waiters = [waiter]
        else:
            waiters.append(waiter)
        await waiter
        if self._lost:
            raise ClientDisconnected("WebSocket connection lost")

    def _set_deadline(self) -> None:
        if not self._deadline:
            self._deadline = time.monotonic() + CLOSE_TIMEOUT

    def _close_transport(self) -> None:
        transport = self.transport
        if not transport.is_closing():
            transport.close()
        self._set_deadline()

    def _pause_reading(self) -> None:
        if not self._read_paused and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self._read_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

    # -- the ways a connection ends (_ws_close); none runs per message ---------------------

    _close = _ws_close.close  # the closing handshake with a code we chose
    _release_held = _ws_close.release_held  # fail a held protocol error now
    _overflow = _ws_close.overflow  # the client stopped reading: 1008, abort

    # -- lifecycle hooks used by the server ---------------------------------------------------

    #: Called once a second: handshake timeout, keepalive pings, close timeout.
    check_timeouts = _ws_timeouts.check_timeouts
    #: Graceful shutdown: close open connections with 1001, refuse pending handshakes.
    shutdown = _ws_close.shutdown
    #: Close the transport now (the graceful timeout is over).
    abort = _ws_close.abort


#: What ``send`` does with each action of ``tidings._asgi`` (the hot path is ``send``'s own).
_ON_ACTION: Final[dict[type, Callable[[WebSocketProtocol, Any], Awaitable[None]]]] = {
    Accept: _ws_handshake.accept,
    Refusal: _ws_handshake.refuse,
    SendText: WebSocketProtocol._on_send,
    SendBytes: WebSocketProtocol._on_send,
    Close: _ws_close.on_close,
}
