"""Reading a session request: the ``tidings`` parameters, the scope for the stack, the user.

A request is a *session request* when its query has the ``tidings``
parameter (wire protocol v1, ``docs/transports.md``). :func:`parse_request`
checks it completely before anything runs (unknown action 400, wrong method
405, malformed ``last`` 400, repeated parameters 400) and keeps the other
query parameters byte for byte, in order, for the consumer's scope.

**Who owns a session.** An authenticated session belongs to its user
(``str(user.pk)``). An anonymous one belongs to a *browser key*: a random
secret in the ``BROWSER_COOKIE`` cookie (``HttpOnly``, ``SameSite=Lax``,
``Secure`` over https, ``Path`` the consumer's path), set on the response
that opens a session when the request did not carry one. Sessions keep only
a digest of it (:func:`owner_key`), so neither the layer messages nor the
process's memory hold the key itself. Without the cookie a request owns no
anonymous session: knowing a session id alone is not enough.

**Requests without ``Origin``.** A GET carrying cookies but neither
``Origin`` nor ``Sec-Fetch-Site`` (browsers older than fetch metadata) must
carry ``CLIENT_HEADER``, which ``tidings.js`` sends and a cross-site page
cannot send without a CORS preflight (:func:`cross_site_without_origin`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote_plus

from django.http.cookie import parse_cookie

from tidings._types import Scope
from tidings.transports._protocol import TRANSPORT_NAMES
from tidings.transports.errors import TransportError

__all__ = [
    "BROWSER_COOKIE",
    "CLIENT_HEADER",
    "BadRequest",
    "SessionRequest",
    "browser_cookie",
    "browser_key",
    "cross_site_without_origin",
    "is_anonymous",
    "new_browser_key",
    "owner_key",
    "parse_request",
    "session_scope",
    "user_key",
]

#: The cookie holding the browser key that anonymous sessions are bound to.
BROWSER_COOKIE: Final = "tidings_bk"
#: The header ``tidings.js`` puts on its HTTP requests (value ``1``).
CLIENT_HEADER: Final = b"x-tidings"

_KEY_BYTES: Final = 24  # 192 bits, as session tokens
_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{32}")
_ANONYMOUS: Final = "~"  # owner keys of anonymous sessions start with it; a pk never does
_PATH_SAFE: Final = "/:@!$&'()*+,=-._~"  # no ';' (it would end the attribute)

_PARAMS: Final = ("tidings", "sid", "last")
_METHODS: Final = {"sse": "GET", "poll": "GET", "send": "POST", "close": "POST"}


class BadRequest(TransportError):
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


def browser_key(scope: Scope) -> str | None:
    """The browser key the request's ``BROWSER_COOKIE`` carries; ``None`` if none or malformed."""
    raw = _header(scope, b"cookie")
    if raw is None:
        return None
    key = parse_cookie(raw.decode("latin-1")).get(BROWSER_COOKIE)
    return key if key is not None and _KEY_RE.fullmatch(key) else None


def new_browser_key() -> str:
    """A fresh browser key."""
    return secrets.token_urlsafe(_KEY_BYTES)


def owner_key(user: str | None, key: str | None) -> str | None:
    """Who owns the sessions of this request: the user, else a digest of the browser key.

    ``None`` (anonymous without a browser key) owns no session.
    """
    if user is not None:
        return user
    if key is None:
        return None
    return _ANONYMOUS + hashlib.sha256(key.encode("ascii")).hexdigest()[:32]


def is_anonymous(owner: str) -> bool:
    """Whether an owner key is a browser's rather than a user's."""
    return owner.startswith(_ANONYMOUS)


def browser_cookie(scope: Scope, key: str) -> tuple[bytes, bytes]:
    """The ``set-cookie`` header that gives the browser ``key``, scoped to the request path."""
    path = quote(str(scope.get("path") or "/"), safe=_PATH_SAFE)
    secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
    value = f"{BROWSER_COOKIE}={key}; Path={path}; HttpOnly; SameSite=Lax{secure}"
    return (b"set-cookie", value.encode("latin-1"))


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
    found, kept = _split_query(query)
    action = found.get("tidings")
    if action is None:
        return None
    _check_action(scope, action)
    sid = found.get("sid") or None
    if sid is None and action in ("send", "close"):
        raise BadRequest(400, f"tidings={action} needs a 'sid'")
    return SessionRequest(action, sid, _last_seen(scope, action, found), b"&".join(kept))


def _split_query(query: bytes) -> tuple[dict[str, str], list[bytes]]:
    """The session parameters (each at most once) and the application's own, as they are."""
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
    return found, kept


def _check_action(scope: Scope, action: str) -> None:
    """Refuse an action that this kind of request (WebSocket, or HTTP method) can't carry."""
    if scope["type"] == "websocket":
        if action != "ws":
            raise BadRequest(403, "only tidings=ws is a WebSocket request")
    elif action not in _METHODS:
        raise BadRequest(400, "unknown tidings action")
    elif scope.get("method") != _METHODS[action]:
        raise BadRequest(405, f"tidings={action} needs {_METHODS[action]}")


def _last_seen(scope: Scope, action: str, found: dict[str, str]) -> int:
    """The client's last sequence number: ``last``, or SSE's ``Last-Event-ID`` if later."""
    last_text = found.get("last") or "0"
    if not (last_text.isascii() and last_text.isdigit() and len(last_text) < 17):
        raise BadRequest(400, "'last' must be a sequence number")
    last = int(last_text)
    if action == "sse":
        event_id = _header(scope, b"last-event-id")
        if event_id is not None and event_id.isdigit() and len(event_id) < 17:
            last = max(last, int(event_id))
    return last


def session_scope(scope: Scope, request: SessionRequest, handle: object, key: str) -> Scope:
    """The WebSocket scope a session request runs through the ``"websocket"`` stack with.

    ``handle`` goes under ``key``. The extensions are the session's own, never
    the server's: the session answers ``websocket.http.response`` refusals
    itself, and the consumer of a session never writes to the request's
    connection (so no ``tidings.websocket.direct``).
    """
    inner = dict(scope)
    inner["query_string"] = request.query_string
    inner["subprotocols"] = []
    inner[key] = handle
    inner["extensions"] = {"websocket.http.response": {}}
    if request.action in TRANSPORT_NAMES:
        inner["transport"] = TRANSPORT_NAMES[request.action]
    if scope["type"] == "http":
        inner["type"] = "websocket"
        inner["scheme"] = "wss" if scope.get("scheme") == "https" else "ws"
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
    """An HTTP request without ``Origin`` that may come from another site.

    Either fetch metadata says it is not same-origin, or there is no fetch
    metadata (an older browser) and the request carries cookies without
    ``CLIENT_HEADER``: a cross-site page can make the browser send such a
    request with the victim's cookies, but not with that header (it needs a
    CORS preflight, which is not answered).
    """
    if scope["type"] != "http" or _header(scope, b"origin") is not None:
        return False
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        return site.lower() != b"same-origin"
    return _header(scope, b"cookie") is not None and _header(scope, CLIENT_HEADER) != b"1"
