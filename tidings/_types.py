"""ASGI scope and message types, shared by the server and the application layer.

These follow the ASGI specification (HTTP and WebSocket spec version 2.4,
lifespan 2.0). Scopes are ``TypedDict``s so that the server builds exactly the
keys the spec names; applications receive them as plain dicts.

One Tidings extension crosses packages here: ``tidings.websocket.direct``
(:data:`WEBSOCKET_DIRECT`), offered by the server in a WebSocket scope's
``extensions`` and read by the consumer, which hands it to the channel layer
(``BaseChannelLayer.set_direct``). See *Broadcasting to a group without a
handler* in ``docs/websocket.md``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, Literal, NotRequired, TypedDict

__all__ = [
    "WEBSOCKET_DIRECT",
    "ASGIApp",
    "ASGIReceive",
    "ASGISend",
    "ASGIVersions",
    "HTTPScope",
    "Headers",
    "LifespanScope",
    "Message",
    "Scope",
    "WebSocketDirect",
    "WebSocketExtensions",
    "WebSocketScope",
]

Headers = Iterable[tuple[bytes, bytes]]
Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[Message]]
ASGISend = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]]


class ASGIVersions(TypedDict):
    version: Literal["3.0"]
    spec_version: str


class HTTPScope(TypedDict):
    type: Literal["http"]
    asgi: ASGIVersions
    http_version: str
    method: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    root_path: str
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    state: NotRequired[dict[str, Any]]
    extensions: NotRequired[dict[str, dict[object, object]]]


#: The key of the direct-send extension in a WebSocket scope's ``extensions``.
WEBSOCKET_DIRECT: Final = "tidings.websocket.direct"


class WebSocketDirect(TypedDict):
    """The ``tidings.websocket.direct`` extension: write a message to the socket now.

    ``send_nowait(message)`` takes a ``websocket.send`` message and either writes
    it to the client at once (True) or writes nothing (False: only the ASGI
    ``send`` may handle it, because the connection is not open, the client is
    slow or the message is not valid). It never waits. The server offers it only
    for its own connections; a scope built by anything else (a transport
    session, a test communicator) does not carry it.
    """

    send_nowait: Callable[[Message], bool]


#: The ``extensions`` of a WebSocket scope served by Tidings (ASGI's
#: ``websocket.http.response`` denial responses, and direct delivery).
WebSocketExtensions = TypedDict(
    "WebSocketExtensions",
    {"websocket.http.response": dict[object, object], "tidings.websocket.direct": WebSocketDirect},
    total=False,
)


class WebSocketScope(TypedDict):
    type: Literal["websocket"]
    asgi: ASGIVersions
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
    state: NotRequired[dict[str, Any]]
    extensions: NotRequired[WebSocketExtensions]


class LifespanScope(TypedDict):
    type: Literal["lifespan"]
    asgi: ASGIVersions
    state: NotRequired[dict[str, Any]]
