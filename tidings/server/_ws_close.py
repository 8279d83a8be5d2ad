"""How a server WebSocket ends: the app's end, our close, overflow, shutdown and abort.

Theory of operation
-------------------
``WebSocketProtocol`` (``tidings.server._websocket``) keeps the per-message work: frames
in, ``receive``, ``send`` and direct delivery. Each way a connection ends runs at most a
few times in its life and lives here, as a function that takes the protocol as its
first argument and touches its state directly, like a method; the class binds them
under its own names (``__call__``, ``_close``, ``_release_held``, ``_overflow``,
``shutdown``, ``abort``), so callers and the timeout sweep (``_ws_timeouts``) see
methods:

* ``app_done`` is the app task's done callback (the protocol itself is the callback):
  what the app's end means depends on the phase. Before accept, returning is a refusal
  (a 403 from ``_ws_handshake.deny``) and raising a 500; once open, returning closes
  with 1000, raising with 1011; after the client left, nothing is answered.
* ``close`` starts the closing handshake with a code we chose (RFC 6455 §7.1.2), and
  ``on_close`` with the app's ``websocket.close``; both arm the close deadline that the
  sweep enforces (``CLOSE_TIMEOUT``).
* ``release_held`` fails a protocol error that was held until the app had read the
  messages that came before it (RFC 6455 §7.1.7).
* ``overflow``: the client stopped reading and more than ``--ws-max-send-buffer`` is
  queued: close with 1008 and abort.
* ``shutdown`` and ``abort``: graceful shutdown (1001, or 503 before accept) and the
  end of its grace period.

What must not go here: anything that runs per message (frames in, ``receive``,
``send``, ``send_nowait``), handshake rules (``_ws_handshake``), timers
(``_ws_timeouts``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tidings import _metrics
from tidings._asgi import DENYING, Close
from tidings._types import Message
from tidings.server._http11 import ClientDisconnected
from tidings.server._state import error_log, fmt_client
from tidings.server._ws_handshake import HANDSHAKE, OPEN, deny, disconnect, respond
from tidings.wire.http11 import simple_response

if TYPE_CHECKING:
    from tidings.server._websocket import WebSocketProtocol

__all__ = ["abort", "app_done", "close", "on_close", "overflow", "release_held", "shutdown"]


def app_done(ws: WebSocketProtocol, task: asyncio.Task[None]) -> None:
    """The app's task ended (this is its done callback): answer or close as it requires."""
    ws.state.forget_task(task)
    phase = ws._phase
    if task.cancelled():
        # Cancelled from outside (shutdown past its grace period): don't leave the
        # client attached to nothing.
        if phase == HANDSHAKE:
            respond(ws, simple_response(503, "Server shutting down"), 503)
        elif phase == OPEN:
            close(ws, 1001, "")
        return
    exc = task.exception()
    if exc is None:
        if phase == HANDSHAKE:
            if ws._asgi.phase is not DENYING:
                # Returning without an answer is a refusal, like websocket.close.
                deny(ws)
            else:
                error_log.error("ASGI application returned without completing the response")
                respond(ws, simple_response(500, "Internal Server Error"), 500)
        elif phase == OPEN:
            close(ws, 1000, "")
    elif not isinstance(exc, Exception):
        return  # KeyboardInterrupt, SystemExit: the loop stops; nothing to answer
    elif ws._disconnect is not None or isinstance(exc, ClientDisconnected):
        error_log.debug("ASGI application stopped after the client left: %r", exc)
        ws._close_transport()
    elif phase == HANDSHAKE:
        _metrics.app_raised("websocket")
        error_log.error("Exception in ASGI application before accept", exc_info=exc)
        respond(ws, simple_response(500, "Internal Server Error"), 500)
    else:
        _metrics.app_raised("websocket")
        error_log.error("Exception in ASGI application", exc_info=exc)
        close(ws, 1011, "internal error")


async def on_close(ws: WebSocketProtocol, action: Close) -> None:
    """Carry out the app's ``websocket.close`` (the ``Close`` action of ``tidings._asgi``)."""
    if ws._phase == HANDSHAKE:
        deny(ws)  # only after a failed websocket.accept
        return
    if ws._held is not None:
        release_held(ws)
        return
    conn = ws._conn
    assert conn is not None
    try:
        conn.close(action.code, action.reason)
    except ValueError as exc:
        raise RuntimeError(f"invalid websocket.close: {exc}") from None
    ws._flush()
    ws._set_deadline()


def close(ws: WebSocketProtocol, code: int, reason: str) -> None:
    """Start the closing handshake (RFC 6455 §7.1.2) with a code we chose."""
    if ws._held is not None:
        release_held(ws)
        return
    conn = ws._conn
    if conn is None or ws._lost:
        ws._close_transport()
        return
    conn.close(code, reason)
    ws._flush()
    ws._set_deadline()


def release_held(ws: WebSocketProtocol) -> Message:
    """Send the close frame of a held protocol error and end the connection."""
    held = ws._held
    assert held is not None
    ws._held = None
    if not ws._lost:
        ws.transport.write(held[0])
    ws._finish(held[1])
    ws._close_transport()
    return held[1]


def overflow(ws: WebSocketProtocol) -> None:
    """The client stopped reading and too much is queued: close with 1008, abort."""
    if ws._lost:
        return
    error_log.warning(
        "%s - WebSocket client not reading: %d bytes queued (--ws-max-send-buffer %d); "
        "closing with 1008",
        fmt_client(ws._client),
        ws.transport.get_write_buffer_size(),
        ws._max_send_buffer,
    )
    _metrics.hit("ws_max_send_buffer")
    conn = ws._conn
    if conn is not None:
        conn.close(1008, "send buffer full")
        conn.data_to_send()  # it could never reach the client
    ws._finish(disconnect(1008, "send buffer full"))
    ws._lost = True
    ws.transport.abort()


def shutdown(ws: WebSocketProtocol) -> None:
    """Graceful shutdown: close open connections with 1001, refuse pending handshakes."""
    if ws._phase == HANDSHAKE:
        if ws._denial is None:
            respond(ws, simple_response(503, "Server shutting down"), 503)
    elif ws._phase == OPEN:
        close(ws, 1001, "server shutting down")
    else:
        ws._close_transport()


def abort(ws: WebSocketProtocol) -> None:
    """Close the transport now (the graceful timeout is over)."""
    ws._finish(disconnect(1006))
    ws._lost = True
    ws.transport.abort()
