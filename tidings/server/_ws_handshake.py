"""The opening handshake of a server WebSocket: every way out of the HANDSHAKE phase.

Theory of operation
-------------------
``WebSocketProtocol`` (``tidings.server._websocket``) starts every connection in
HANDSHAKE. ``check_request`` checks the upgrade request with ``wire.parse_request``: a
bad one gets 400, 405 or 426 and never reaches the app, and a server that is shutting
down answers 503. Then the app's first ``receive()`` is ``websocket.connect``, and
``tidings._asgi`` turns its answer into an action that ``send()`` hands to a function
here:

* ``websocket.accept`` (``accept``): the 101 (RFC 6455 §4.2.2), permessage-deflate
  negotiated when enabled; the phase becomes OPEN, and frames that arrived early (held
  by ``data_received``, reading paused past 64 KiB) are fed to the core.
* ``websocket.close`` (``refuse`` with no body, ``deny``): 403 with an empty body
  (ASGI spec).
* the ``websocket.http.response`` denial extension (``refuse``, once per body
  message): the app's own HTTP response, its head checked by
  ``tidings.wire.headers`` and written with the first body message, the body streamed
  as it comes (chunked unless the app declared a length). Framing is ours: the app's
  ``Connection`` and ``Transfer-Encoding`` fields are dropped, and the connection
  closes after the response.

The server's own answers (the app returned without one: 403; it raised: 500; it did
not answer within ``--ws-handshake-timeout`` or the server is shutting down: 503) go
through ``respond``, which ends the connection (DONE) and writes the access-log line.

The functions take the protocol as their first argument, like its methods, and touch
its state directly: they are its handshake half, kept apart because nothing here runs
once the connection is open. What must not go here: the handshake's rules
(``tidings.wire.handshake``), which message the app may send when (``tidings._asgi``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from tidings import _metrics
from tidings._asgi import Accept, Refusal
from tidings._types import WEBSOCKET_DIRECT, Message, WebSocketExtensions
from tidings.server._cycle import ClientDisconnected
from tidings.server._state import access_log, error_log, fmt_client, loggable, loggable_query
from tidings.wire import (
    HandshakeError,
    HandshakeRequest,
    WebSocketConnection,
    build_accept_response,
    build_error_response,
    negotiate_deflate,
    parse_request,
)
from tidings.wire.headers import InvalidField, check_fields
from tidings.wire.http11 import LAST_CHUNK, encode_chunk, simple_response, status_line

if TYPE_CHECKING:
    from tidings.server._websocket import WebSocketProtocol

__all__ = [
    "DONE",
    "HANDSHAKE",
    "OPEN",
    "accept",
    "check_request",
    "deny",
    "disconnect",
    "refuse",
    "respond",
    "shared_fields",
    "websocket_extensions",
    "websocket_scope",
]

#: The phases of ``WebSocketProtocol._phase`` (drawn in ``tidings.server._websocket``).
HANDSHAKE: Final = 0
OPEN: Final = 1
DONE: Final = 2


#: Request header fields whose values repeat from one connection to the next (one
#: site, the same browsers and proxies). A WebSocket keeps its request's headers in its
#: scope for as long as it is open, so equal fields are held once per process and
#: shared, not once per connection. Bounded: past ``_SHARED_MAX`` distinct fields, or
#: for a value longer than ``_SHARED_VALUE_MAX``, a field stays the connection's own,
#: so a client sending endless distinct values costs the table nothing more.
_SHARED_NAMES: Final = frozenset(
    (b"host", b"upgrade", b"connection", b"origin", b"user-agent", b"accept",
     b"accept-encoding", b"accept-language", b"cache-control", b"pragma",
     b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
     b"sec-fetch-dest", b"sec-fetch-mode", b"sec-fetch-site", b"sec-fetch-storage-access",
     b"sec-ch-ua", b"sec-ch-ua-mobile", b"sec-ch-ua-platform", b"x-forwarded-proto",
     b"x-forwarded-host", b"dnt", b"priority", b"via"),
)  # fmt: skip
#: Names of fields whose values differ per connection: only the name is shared.
_NAMES: Final = {name: name for name in (
    *_SHARED_NAMES, b"sec-websocket-key", b"cookie", b"authorization", b"referer",
    b"x-forwarded-for", b"x-real-ip", b"forwarded",
)}  # fmt: skip
_SHARED_MAX: Final = 4096
_SHARED_VALUE_MAX: Final = 256
_shared: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}


def shared_fields(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's header fields for a long-lived scope: equal, with what repeats shared.

    Args:
        headers: the (lower-case name, value) pairs ``HttpProtocol`` parsed.
    """
    shared = _shared
    out = []
    for field in headers:
        same = shared.get(field)
        if same is None:
            name, value = field
            if (
                name in _SHARED_NAMES
                and len(value) <= _SHARED_VALUE_MAX
                and len(shared) < _SHARED_MAX
            ):
                shared[field] = same = field
            else:
                common = _NAMES.get(name)
                same = field if common is None else (common, value)
        out.append(same)
    return out


_ASGI: Final = {"version": "3.0", "spec_version": "2.4"}

# A WebSocket's scope and its extension dicts live as long as the connection, so they
# are built as key-sharing dicts (PEP 412): the ``__dict__`` of an instance of a class
# without ``__slots__`` keeps its values only, the table of keys being the class's, one
# for all. That is under half the memory of a dict built as a literal (a 14-key scope:
# about 210 bytes instead of 460; a one-key dict: 90 instead of 185). The result is a
# plain ``dict`` in every other way; a key the app adds makes it an ordinary one. Each
# class below is used for nothing else, and its attributes are always set in the same
# order: that order is the dict's key order.


class _Scope:
    type: str
    asgi: dict[str, str]
    http_version: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    root_path: str
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    subprotocols: list[str]
    state: dict[str, Any]
    extensions: WebSocketExtensions


class _Extensions:
    pass


class _Direct:
    send_nowait: Callable[[Message], bool]


def websocket_extensions(send_nowait: Callable[[Message], bool]) -> WebSocketExtensions:
    """The scope's ``extensions``: denial responses, and direct delivery to this socket."""
    direct = _Direct()
    direct.send_nowait = send_nowait
    extensions = _Extensions()
    setattr(extensions, "websocket.http.response", _NO_OPTIONS)
    setattr(extensions, WEBSOCKET_DIRECT, direct.__dict__)
    return cast(WebSocketExtensions, extensions.__dict__)


#: The options of the ``websocket.http.response`` extension: none, one dict for all.
_NO_OPTIONS: Final[dict[object, object]] = {}


def websocket_scope(http: dict[str, Any], extensions: WebSocketExtensions) -> dict[str, Any]:
    """The ASGI WebSocket scope of the upgrade request whose HTTP scope is ``http``."""
    scope = _Scope()
    scope.type = "websocket"
    scope.asgi = _ASGI
    scope.http_version = http["http_version"]
    scope.scheme = "wss" if http["scheme"] == "https" else "ws"
    scope.path = http["path"]
    scope.raw_path = http["raw_path"]
    scope.query_string = http["query_string"]
    scope.root_path = http["root_path"]
    scope.headers = shared_fields(http["headers"])
    scope.client = http["client"]
    scope.server = http["server"]
    scope.subprotocols = []
    scope.state = http["state"]
    scope.extensions = extensions
    return scope.__dict__


def disconnect(code: int, reason: str = "") -> Message:
    """The ``websocket.disconnect`` message ``receive()`` returns once the connection is over."""
    return {"type": "websocket.disconnect", "code": code, "reason": reason}


def check_request(ws: WebSocketProtocol, method: str) -> HandshakeRequest | None:
    """Check the upgrade request (RFC 6455 §4.2.1); None when it was answered instead."""
    try:
        request = parse_request(
            method=method, http_version=ws.scope["http_version"], headers=ws.scope["headers"]
        )
    except HandshakeError as exc:
        # The client's mistake: one line, no traceback, and the app never runs.
        error_log.info(
            "%s - WebSocket handshake refused: %d %s",
            fmt_client(ws._client),
            exc.status,
            exc.reason,
        )
        respond(ws, build_error_response(exc), exc.status)
        return None
    if ws.state.closing:
        respond(ws, simple_response(503, "Server shutting down"), 503)
        return None
    return request


async def accept(ws: WebSocketProtocol, action: Accept) -> None:
    """websocket.accept: write the 101 (RFC 6455 §4.2.2) and go OPEN."""
    request = ws._request
    assert request is not None
    headers = list(action.headers)
    negotiated = negotiate_deflate(request.extensions, ws._deflate)
    try:
        check_fields(headers)
        response = build_accept_response(
            request,
            subprotocol=action.subprotocol,
            extensions_header=None if negotiated is None else negotiated[0],
            extra_headers=headers,
        )
    except ValueError as exc:
        raise RuntimeError(f"invalid websocket.accept: {exc}") from None
    settings = ws._settings
    ws._conn = WebSocketConnection(
        max_message_size=settings.max_message_size,
        max_frame_size=settings.max_frame_size,
        max_fragments=settings.max_fragments,
        deflate=None if negotiated is None else negotiated[1],
    )
    ws._phase = OPEN
    ws._since = time.monotonic()
    _access(ws, 101)
    if (m := _metrics.ACTIVE) is not None:
        m.ws_accepted += 1
    ws.transport.write(response)
    ws._request = None  # the handshake's data is not needed any more
    early = ws._early
    if early:
        ws._early = None
        if ws._read_paused and len(ws._queue or ()) < ws._max_queue:
            ws._resume_reading()
        ws.data_received(bytes(early))


async def refuse(ws: WebSocketProtocol, action: Refusal) -> None:
    """websocket.close before accept, or one body message of a denial response."""
    if action.body is None:
        deny(ws)  # websocket.close before websocket.accept
        return
    _denial_body(ws, action)
    if ws._write_paused and not ws._lost:
        # Backpressure, as for send(); a client that stopped reading is cut off.
        if ws._over_limit():
            raise ClientDisconnected("client not reading: --ws-max-send-buffer exceeded")
        await ws._drain()


def deny(ws: WebSocketProtocol) -> None:
    """websocket.close before accept: 403 with an empty body (ASGI spec)."""
    head = status_line(403) + ws.state.date_header
    respond(ws, head + b"content-length: 0\r\nconnection: close\r\n\r\n", 403)


def _denial_body(ws: WebSocketProtocol, denial: Refusal) -> None:
    """One ``websocket.http.response.body`` of a denial response (streamed as it comes)."""
    body = denial.body or b""
    more = denial.more_body
    out: list[bytes] = []
    if ws._denial is None:
        headers = list(denial.headers)
        try:
            check_fields(headers)
        except InvalidField as exc:
            raise RuntimeError(f"websocket.http.response.start: {exc}") from None
        lines = [status_line(denial.status), ws.state.date_header]
        has_length = False
        for name, value in headers:
            lname = name.lower()
            if lname in (b"connection", b"transfer-encoding"):
                continue  # the framing is ours: one response, then close
            if lname == b"content-length":
                if has_length:
                    continue  # a repeated identical value (check_fields): send it once
                has_length = True
            lines.append(name + b": " + value + b"\r\n")
        if not has_length:
            if more:
                ws._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"connection: close\r\n\r\n")
        out.append(b"".join(lines))
        ws._denial = denial
    if ws._chunked:
        out += encode_chunk(body)
        if not more:
            out.append(LAST_CHUNK)
    else:
        out.append(body)
    if not more:
        respond(ws, b"".join(out), denial.status)
    else:
        ws.transport.write(b"".join(out))


def respond(ws: WebSocketProtocol, response: bytes, status: int) -> None:
    """End the handshake with a plain HTTP response and close the connection (DONE).

    A denial response whose head is already out is cut short instead: a second
    status line would corrupt it.
    """
    if ws._disconnect is None and (m := _metrics.ACTIVE) is not None:
        m.ws_denied[_denial_reason(ws, status)] += 1
    ws._finish(disconnect(1006))
    if ws._denial is not None and status != ws._denial.status:
        ws.transport.abort()
        return
    _access(ws, status)
    if not ws.transport.is_closing():
        ws.transport.write(response)
    ws._close_transport()


def _denial_reason(ws: WebSocketProtocol, status: int) -> str:
    """Why the handshake ends with ``status`` (one of ``tidings._metrics.DENIAL_REASONS``)."""
    if ws._denial is not None or status == 403:
        return "refused"
    if status == 500:
        return "app_error"
    return "unavailable" if status == 503 else "invalid"


def _access(ws: WebSocketProtocol, status: int) -> None:
    if ws.state.access_log:
        scope = ws.scope
        access_log.info(
            '%s - "WebSocket %s%s" %d',
            fmt_client(ws._client),
            loggable(scope["path"]),
            loggable_query(scope["query_string"]),
            status,
        )
