"""The ASGI apps every server in the HTTP benchmarks runs (identical for all of them)."""

from __future__ import annotations

from typing import Any

HELLO = b"Hello, world!"
BIG = b"x" * (64 * 1024)
CHUNK = b"y" * (64 * 1024)
STREAM_CHUNKS = 16  # 16 x 64 KiB = 1 MiB


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": HELLO})


async def big(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(BIG)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BIG})


async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    for _ in range(STREAM_CHUNKS):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
