"""The app every server in ``http2.py`` runs: the bare apps of ``apps.py`` behind a path.

``/`` is ``apps.hello`` (13 octets), ``/64k`` is ``apps.big`` (64 KiB), and a WebSocket
on any path echoes each message (``ws_echo_app.app``). One app for all loads, so each
server starts once per round and transport; the request handling is the same code the
HTTP/1.1 benchmarks run.
"""

from __future__ import annotations

from typing import Any

import apps
import ws_echo_app

__all__ = ["app"]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Route by path to the shared benchmark apps."""
    if scope["type"] == "websocket":
        await ws_echo_app.app(scope, receive, send)
    elif scope["type"] == "http":
        if scope["path"] == "/64k":
            await apps.big(scope, receive, send)
        else:
            await apps.hello(scope, receive, send)
