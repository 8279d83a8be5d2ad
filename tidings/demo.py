"""A tiny built-in ASGI demo served by ``./scripts/demo``: one page, one JSON
endpoint and a WebSocket echo. It needs no Django and no database.
"""

from __future__ import annotations

import json
import time

from tidings._types import ASGIReceive, ASGISend, Scope

__all__ = ["app"]

_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tidings demo</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}
#log{border:1px solid #ccc;padding:.5em;min-height:6em;white-space:pre-wrap}</style></head>
<body><h1>Tidings is running</h1>
<p>This page is served by the Tidings ASGI server. Type below: the text goes to the
server over a WebSocket and comes back.</p>
<form id="f"><input id="msg" autocomplete="off" placeholder="say something">
<button>Send</button></form><div id="log"></div>
<script>
const log = (t) => { document.getElementById("log").textContent += t + "\\n"; };
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/ws");
ws.onopen = () => log("connected");
ws.onmessage = (e) => log("echo: " + e.data);
ws.onclose = (e) => log("closed (" + e.code + ")");
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const m = document.getElementById("msg");
  if (m.value) { ws.send(m.value); m.value = ""; }
};
</script></body></html>
"""


async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """The demo application (ASGI 3)."""
    if scope["type"] == "http":
        if scope["path"] == "/":
            body, ctype, status = _PAGE, b"text/html; charset=utf-8", 200
        elif scope["path"] == "/api/time":
            body = json.dumps({"time": time.time()}).encode()
            ctype, status = b"application/json", 200
        else:
            body, ctype, status = b"Not Found\n", b"text/plain; charset=utf-8", 404
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        if scope["path"] != "/ws":
            await receive()
            await send({"type": "websocket.close"})
            return
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
            else:
                return
