"""The ASGI app Autobahn|Testsuite's fuzzing client talks to: echo every message back.

Run by ``run.py`` as ``tidings serve echo_app:app`` (with this directory as ``--app-dir``).
Text comes back as text and binary as binary; anything else is answered with a 404.
"""

from __future__ import annotations

from tidings._types import ASGIReceive, ASGISend, Scope

__all__ = ["app"]


async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Accept every WebSocket and echo its messages until the client leaves."""
    if scope["type"] == "lifespan":
        return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"WebSocket only\n"})
        return
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
