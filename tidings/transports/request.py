"""Reading a session request: the ``tidings`` parameters, the scope for the stack, the user.

A request is a *session request* when its query has the ``tidings``
parameter (wire protocol v1, ``docs/transports.md``). :func:`parse_request`
checks it completely before anything runs (unknown action 400, wrong method
405, malformed ``last`` 400, repeated parameters 400) and keeps the other
query parameters byte for byte, in order, for the consumer's scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

from tidings._types import Scope
from tidings.transports.protocol import TRANSPORT_NAMES

__all__ = [
    "BadRequest",
    "SessionRequest",
    "cross_site_without_origin",
    "parse_request",
    "session_scope",
    "user_key",
]

_PARAMS: Final = ("tidings", "sid", "last")
_METHODS: Final = {"sse": "GET", "poll": "GET", "send": "POST", "close": "POST"}


class BadRequest(Exception):
    """A session request that is malformed; carries the status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """The parsed ``tidings`` parameters of one request."""

    action: str
    sid: str | None
    last: int
    query_string: bytes


def user_key(scope: Scope) -> str | None:
    """The session owner key of a scope: ``str(scope["user"].pk)``, ``None`` if anonymous."""
    pk = getattr(scope.get("user"), "pk", None)
    return None if pk is None else str(pk)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return None


def parse_request(scope: Scope) -> SessionRequest | None:
    """The session request in ``scope``'s query, ``None`` if it has no ``tidings`` parameter.

    Raises:
        BadRequest: a ``tidings`` parameter is there, but the request is malformed.
    """
    query: bytes = scope.get("query_string") or b""
    if b"tidings" not in query:
        return None
    found: dict[str, str] = {}
    kept: list[bytes] = []
    for part in query.split(b"&"):
        name = unquote_plus(part.partition(b"=")[0].decode("latin-1"))
        if name in _PARAMS:
            if name in found:
                raise BadRequest(400, f"repeated query parameter {name!r}")
            found[name] = unquote_plus(part.partition(b"=")[2].decode("latin-1"))
        elif part:
            kept.append(part)
    action = found.get("tidings")
    if action is None:
        return None
    if scope["type"] == "websocket":
        if action != "ws":
            raise BadRequest(403, "only tidings=ws is a WebSocket request")
    elif action not in _METHODS:
        raise BadRequest(400, "unknown tidings action")
    elif scope.get("method") != _METHODS[action]:
        raise BadRequest(405, f"tidings={action} needs {_METHODS[action]}")
    last_text = found.get("last") or "0"
    if not (last_text.isascii() and last_text.isdigit() and len(last_text) < 17):
        raise BadRequest(400, "'last' must be a sequence number")
    last = int(last_text)
    if action == "sse":
        event_id = _header(scope, b"last-event-id")
        if event_id is not None and event_id.isdigit() and len(event_id) < 17:
            last = max(last, int(event_id))
    sid = found.get("sid") or None
    if sid is None and action in ("send", "close"):
        raise BadRequest(400, f"tidings={action} needs a 'sid'")
    return SessionRequest(action, sid, last, b"&".join(kept))


def session_scope(scope: Scope, request: SessionRequest, handle: object, key: str) -> Scope:
    """The WebSocket scope a session request runs through the ``"websocket"`` stack with.

    ``handle`` goes under ``key``; the server's direct-send shortcut is left
    out (the consumer of a session never writes to this connection itself).
    """
    inner = dict(scope)
    inner["query_string"] = request.query_string
    inner["subprotocols"] = []
    inner[key] = handle
    inner.pop("tidings.send_nowait", None)
    if request.action in TRANSPORT_NAMES:
        inner["transport"] = TRANSPORT_NAMES[request.action]
    if scope["type"] == "http":
        inner["type"] = "websocket"
        inner["scheme"] = "wss" if scope.get("scheme") == "https" else "ws"
        inner["extensions"] = {"websocket.http.response": {}}
        inner.pop("method", None)
        headers = list(scope.get("headers") or ())
        if _header(scope, b"origin") is None and scope.get("method") == "GET":
            host = _header(scope, b"host")
            if host is not None:
                http = b"https" if scope.get("scheme") == "https" else b"http"
                headers.append((b"origin", http + b"://" + host))
        inner["headers"] = headers
    return inner


def cross_site_without_origin(scope: Scope) -> bool:
    """An HTTP request without ``Origin`` that fetch metadata says is not same-origin."""
    if scope["type"] != "http" or _header(scope, b"origin") is not None:
        return False
    site = _header(scope, b"sec-fetch-site")
    return site is not None and site.lower() != b"same-origin"
