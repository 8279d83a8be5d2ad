"""Helpers for server tests: run a Server in the test's event loop, talk raw HTTP to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tidings._types import ASGIApp
from tidings.server._main import Server, bind_sockets
from tidings.server.config import Config

#: A sweep interval for timeout tests: the timeout fires when due, not up to 1 s later.
FAST_SWEEP = 0.01


@dataclass
class Running:
    server: Server
    port: int
    task: asyncio.Task[int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        assert self.server.state is not None
        return len(self.server.state.connections)

    def sweep(self, *, later: float) -> None:
        """Run the timeout sweep now, as it would run ``later`` seconds from now."""
        assert self.server.state is not None
        self.server.state.sweep(time.monotonic() + later)


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp, *, sweep_interval: float | None = None, **options: Any
) -> AsyncIterator[Running]:
    """Serve ``app`` on a free port of 127.0.0.1 in the current loop.

    ``sweep_interval`` shortens the once-a-second timeout sweep, so that a test of
    a timeout waits for the timeout and not for the next sweep.
    """
    options.setdefault("access_log", False)
    options.setdefault("lifespan", "off")  # tests of lifespan itself turn it on
    config = Config(app=app, host="127.0.0.1", port=0, **options)
    sockets = bind_sockets(config)
    server = Server(config, app)
    if sweep_interval is not None:
        server.sweep_interval = sweep_interval
    loop = asyncio.get_running_loop()
    task = loop.create_task(server.serve(sockets))
    deadline = loop.time() + 10
    while not server.started:
        if loop.time() > deadline:
            task.cancel()
            raise AssertionError("server did not start within 10 s (lifespan startup hung?)")
        if task.done():
            task.result()
            raise AssertionError("server stopped during start-up")
        await asyncio.sleep(0.005)
    port = sockets[0].getsockname()[1]
    try:
        yield Running(server, port, task)
    finally:
        server.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), 10)
        for sock in sockets:
            sock.close()


async def open_conn(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    reader, writer = await open_conn(port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def read_response(
    reader: asyncio.StreamReader, *, timeout: float = 5.0, head: bool = False
) -> Response:
    """Read one HTTP/1.1 response (Content-Length, chunked, or until close)."""
    return await asyncio.wait_for(_read_response(reader, head), timeout)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


async def _read_response(reader: asyncio.StreamReader, head_request: bool) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
    resp = Response(status, headers, b"", [])
    if status < 200 or status in (204, 304) or head_request:
        return resp
    te = resp.header("transfer-encoding")
    cl = resp.header("content-length")
    if te == "chunked":
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        while True:
            line = (await reader.readuntil(b"\r\n")).decode("latin-1").strip()
            if not line:
                break
            k, _, v = line.partition(":")
            resp.trailers.append((k.strip().lower(), v.strip()))
        resp.body = bytes(body)
    elif cl is not None:
        resp.body = await reader.readexactly(int(cl))
    else:
        resp.body = await reader.read()
    return resp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition the test cannot await directly (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
