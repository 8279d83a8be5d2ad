"""The echo app every server in ``ws_echo.py`` runs (plain ASGI, imports nothing)."""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept every WebSocket and send each message back as it came."""
    if scope["type"] != "websocket":
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return
    await receive()
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
