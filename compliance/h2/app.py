"""The ASGI app the HTTP/2 probe talks to (and the HTTP/2 benchmark's WebSocket echo).

HTTP: reads the whole request body, then answers 200 ``Hello, world!`` (13 octets, so
the flow-control cases have a body to hold back). WebSocket: accepts and echoes every
message, text as text and binary as binary. Any server that speaks ASGI runs it:

    tidings serve app:app --app-dir compliance/h2
    hypercorn --bind 127.0.0.1:8000 app:app        (from this directory)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["app"]

Message = dict[str, Any]
HELLO = b"Hello, world!"


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answer HTTP with a fixed body after reading the request; echo WebSocket messages."""
    if scope["type"] == "http":
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = bool(message.get("more_body"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
            }
        )
        await send({"type": "http.response.body", "body": HELLO})
    elif scope["type"] == "websocket":
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
