"""Small ASGI helpers the session transports share: answers, bodies, refusals.

Every answer here is short plain text or JSON with ``cache-control: no-store``
(session responses are never cacheable). Error bodies say what was wrong in a
few words and never carry exception text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterable
from typing import Any, Final

from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.transports._session import Decision
from tidings.transports.errors import TransportError

__all__ = [
    "ClientGone",
    "deny",
    "race",
    "read_body",
    "refuse",
    "respond",
    "respond_json",
    "until_disconnect",
]

NO_STORE: Final = (b"cache-control", b"no-store")
_TEXT: Final = b"text/plain; charset=utf-8"
_JSON: Final = b"application/json"


class ClientGone(TransportError):
    """The client disconnected before the request was complete."""


async def respond(
    send: ASGISend,
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = _TEXT,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete HTTP response."""
    head = [NO_STORE, *headers]
    if status != 204:
        head += [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body if status != 204 else b""})


async def respond_json(send: ASGISend, status: int, value: Any) -> None:
    """Send a JSON response."""
    body = json.dumps(value, separators=(",", ":")).encode()
    await respond(send, status, body, content_type=_JSON)


async def deny(
    scope: Scope,
    send: ASGISend,
    status: int,
    reason: str = "",
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
) -> None:
    """Refuse a session request with ``status``, over HTTP or a WebSocket handshake.

    ``body`` and ``headers`` (an application's own refusal) are passed on as
    they are; without ``body`` the body is ``reason`` and ``headers`` are
    added to the plain-text ones. A WebSocket handshake gets the
    status through the ``websocket.http.response`` extension when the server
    has it; otherwise, and for a plain 403, ``websocket.close`` (servers answer
    that with 403).
    """
    websocket = scope.get("type") == "websocket"
    if websocket:
        extensions = scope.get("extensions") or {}
        if "websocket.http.response" not in extensions or (status == 403 and body is None):
            await send({"type": "websocket.close"})
            return
    if body is None:
        payload = (reason + "\n").encode()
        head = [NO_STORE, (b"content-type", _TEXT), *headers]
    else:
        payload = body
        head = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    head.append((b"content-length", b"%d" % len(payload)))
    prefix = "websocket.http.response" if websocket else "http.response"
    await send({"type": f"{prefix}.start", "status": status, "headers": head})
    await send({"type": f"{prefix}.body", "body": payload})


async def refuse(scope: Scope, send: ASGISend, decision: Decision) -> None:
    """Answer a new session's refusal by its consumer (403, 500, 503 or its own response)."""
    if decision.body or decision.headers:
        await deny(scope, send, decision.status, headers=decision.headers, body=decision.body)
        return
    reasons = {403: "refused", 500: "internal error", 503: "the consumer did not answer"}
    await deny(scope, send, decision.status, reasons.get(decision.status, "refused"))


async def read_body(receive: ASGIReceive, limit: int) -> bytes | None:
    """Read the request body; ``None`` as soon as it passes ``limit`` bytes (read no further).

    Raises:
        ClientGone: the client disconnected first.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def until_disconnect(receive: ASGIReceive) -> None:
    """Return when the client has gone (``http.disconnect``/``websocket.disconnect``)."""
    while (await receive())["type"] not in ("http.disconnect", "websocket.disconnect"):
        pass


async def race(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines until the first returns; cancel the others.

    A client that left (``OSError`` from ``send``, :class:`ClientGone`) ends
    the race quietly; any other exception propagates.
    """
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, OSError | ClientGone):
            raise error
