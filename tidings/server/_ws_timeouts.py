"""The timeouts of a server WebSocket, checked by the server's once-a-second sweep.

Theory of operation
-------------------
A connection owns no timer. ``ServerState.sweep`` calls ``check_timeouts`` (which is
``WebSocketProtocol.check_timeouts``) once a second, and it:

* aborts a connection whose closing handshake or final flush has taken longer than
  ``CLOSE_TIMEOUT`` (the deadline ``WebSocketProtocol`` sets when it starts closing);
* answers 503 when the app did not accept or deny within ``--ws-handshake-timeout``
  (the server gives up on a slow app: "try again later");
* fails a held protocol error whose earlier messages the app has not answered
  within a second;
* sends a keepalive ping after ``--ws-ping-interval`` without traffic, and closes with
  1011 when nothing (a pong or any data) arrived within ``--ws-ping-timeout`` of it.

Activity is a flag that ``data_received`` sets, and this sweep clears, so the hot path
never reads the clock. The function takes the protocol as its first argument and
touches its state directly, like a method. What must not go here: anything that runs
per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tidings import _metrics
from tidings.server._state import error_log, fmt_client
from tidings.server._ws_handshake import HANDSHAKE, OPEN, disconnect, respond
from tidings.wire import ConnectionState
from tidings.wire.http11 import simple_response

if TYPE_CHECKING:
    from tidings.server._websocket import WebSocketProtocol

__all__ = ["check_timeouts"]

_PING_PAYLOAD: Final = b"tidings"
_CONN_OPEN: Final = ConnectionState.OPEN


def check_timeouts(ws: WebSocketProtocol, now: float) -> None:
    """Called once a second: handshake timeout, keepalive pings, close timeout."""
    if ws._deadline:
        if now > ws._deadline and not ws._lost:
            ws._lost = True
            ws.transport.abort()
        return
    phase = ws._phase
    settings = ws._settings
    if phase == HANDSHAKE:
        if now - ws._since > settings.handshake_timeout:
            error_log.warning(
                "%s - WebSocket app did not accept or deny within %.0f s "
                "(--ws-handshake-timeout): 503",
                fmt_client(ws._client),
                settings.handshake_timeout,
            )
            _metrics.hit("ws_handshake_timeout")
            respond(ws, simple_response(503, "WebSocket handshake timed out"), 503)
        return
    conn = ws._conn
    if phase != OPEN or conn is None:
        return
    if ws._held is not None:
        if now - ws._held_since > 1.0:
            ws._release_held()  # the app is slow to answer: fail anyway
        return
    if ws._seen:
        # Anything from the client proves it is alive: no ping needed yet.
        ws._seen = False
        ws._since = now
        ws._ping_sent = 0.0
        return
    if ws._ping_sent:
        timeout = settings.ping_timeout
        if ws._read_paused:
            ws._ping_sent = now  # we are not reading: the pong may be waiting
        elif timeout is not None and now - ws._ping_sent > timeout:
            error_log.info(
                "%s - WebSocket keepalive ping not answered within %.0f s; closing with 1011",
                fmt_client(ws._client),
                timeout,
            )
            # The peer looks dead: send the close frame and close TCP without
            # waiting for an answer.
            _metrics.hit("ws_ping_timeout")
            ws._close(1011, "keepalive ping timeout")
            ws._finish(disconnect(1011, "keepalive ping timeout"))
            ws._close_transport()
        return
    interval = settings.ping_interval
    if interval is not None and now - ws._since >= interval and conn.state is _CONN_OPEN:
        conn.send_ping(_PING_PAYLOAD)
        ws._ping_sent = now
        ws._flush()
