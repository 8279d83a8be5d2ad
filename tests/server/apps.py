"""Small ASGI apps the server tests run."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from tidings._types import ASGIReceive, ASGISend, Scope


async def hello(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def read_body(receive: ASGIReceive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += message["body"]
        if not message.get("more_body"):
            return body


async def echo(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Answers with the request body and a JSON summary of the scope in a header."""
    body = await read_body(receive)
    summary: dict[str, Any] = {
        k: (v.decode("latin-1") if isinstance(v, bytes) else v)
        for k, v in scope.items()
        if k
        in ("http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path")
    }
    summary["client"] = list(scope["client"]) if scope["client"] else None
    summary["server"] = list(scope["server"]) if scope["server"] else None
    summary["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    summary["asgi"] = scope["asgi"]
    summary["extensions"] = sorted(scope.get("extensions", {}))
    summary["state"] = scope.get("state")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-scope", json.dumps(summary).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Streams ``?n`` chunks of 10 bytes without a Content-Length."""
    n = int(scope["query_string"] or b"3")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(n):
        await send({"type": "http.response.body", "body": b"%09d\n" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def slow_first(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Sleeps for the delay in the path (e.g. /0.2) before answering with the path."""
    delay = float(scope["path"].strip("/") or 0)
    await asyncio.sleep(delay)
    body = scope["path"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def whoami(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Answers with this process's pid and the client as the scope has it (``pid host``)."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(float(scope["query_string"] or b"0"))
    client = scope.get("client")
    body = f"{os.getpid()} {client[0] if client else None}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
