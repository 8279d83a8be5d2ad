"""A consumer whose client left while a handler was about to send still runs ``disconnect()``.

The server raises ``ClientDisconnected`` (an ``OSError``, as the ASGI spec asks) from a
``send`` after the client is gone. Daphne drops such a send and delivers the disconnect
message, so a Channels consumer runs its ``disconnect()`` clean-up; these tests hold
Tidings' consumers to the same. Real server, real sockets, real consumers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.server._helpers import Running, open_conn, serve, wait_for
from tidings.generic.http import AsyncHttpConsumer, AsyncHttpStreamConsumer
from tidings.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer

GUARD = 5.0


class Log:
    """What the consumers did, and a gate their handlers wait on."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.gate = threading.Event()

    async def wait_gate(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, GUARD)


LOG = Log()


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    global LOG
    LOG = Log()


class LateAsync(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        if self.scope["path"] == "/late-accept":
            await LOG.wait_gate()
        await self.accept()
        LOG.events.append("accepted")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "oserror":
            raise FileNotFoundError("not the client's doing")
        await LOG.wait_gate()
        await self.send(text_data="late")
        LOG.events.append("sent")  # never: the send raised

    async def disconnect(self, code: int) -> None:
        LOG.events.append(f"disconnect {code}")


class LateSync(WebsocketConsumer):
    def connect(self) -> None:
        self.accept()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        LOG.gate.wait(GUARD)
        self.send(text_data="late")
        LOG.events.append("sent")

    def disconnect(self, code: int) -> None:
        LOG.events.append(f"disconnect {code}")


class LateHttp(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await LOG.wait_gate()
        await self.send_response(200, b"late")
        LOG.events.append("sent")

    async def disconnect(self) -> None:
        LOG.events.append("disconnect")


async def gone(srv: Running) -> None:
    """Wait until the server has seen the client go, then let the handlers on."""
    await wait_for(lambda: srv.connections == 0, GUARD)
    LOG.gate.set()


def app_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("consumer", [LateAsync, LateSync], ids=["async", "sync"])
async def test_a_send_after_the_client_left_still_runs_disconnect(
    consumer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tidings.error")
    async with serve(consumer.as_asgi()) as srv:
        client = await connect(f"ws://127.0.0.1:{srv.port}/")
        await client.send("hello")
        await client.close()
        await gone(srv)
        await wait_for(lambda: any(e.startswith("disconnect") for e in LOG.events), GUARD)
    assert "sent" not in LOG.events
    assert [e for e in LOG.events if e.startswith("disconnect")] == ["disconnect 1000"]
    assert app_errors(caplog) == []


async def test_an_accept_after_the_client_left_still_runs_disconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tidings.error")
    async with serve(LateAsync.as_asgi()) as srv:
        _reader, writer = await open_conn(srv.port)
        writer.write(
            b"GET /late-accept HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.05)  # connect() is waiting on the gate
        writer.close()
        await gone(srv)
        await wait_for(lambda: any(e.startswith("disconnect") for e in LOG.events), GUARD)
    assert "accepted" not in LOG.events
    assert len([e for e in LOG.events if e.startswith("disconnect")]) == 1
    assert app_errors(caplog) == []


@pytest.mark.parametrize("consumer", ["LateHttp", "LateStream"])
async def test_an_http_response_after_the_client_left_still_runs_disconnect(
    consumer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tidings.error")
    async with serve(globals()[consumer].as_asgi()) as srv:
        _reader, writer = await open_conn(srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # handle() is waiting on the gate
        writer.close()
        await gone(srv)
        await wait_for(lambda: "disconnect" in LOG.events, GUARD)
    assert LOG.events == ["disconnect"]
    assert app_errors(caplog) == []


async def test_an_oserror_of_the_handler_itself_still_fails_the_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tidings.error")
    async with serve(LateAsync.as_asgi()) as srv:
        client = await connect(f"ws://127.0.0.1:{srv.port}/")
        await client.send("oserror")
        await asyncio.wait_for(client.wait_closed(), GUARD)
        assert client.close_code == 1011
    assert any("not the client's doing" in r.getMessage() or r.exc_info for r in caplog.records)
    assert not any(e.startswith("disconnect") for e in LOG.events)


class LateStream(AsyncHttpStreamConsumer):
    async def handle(self, body: bytes) -> None:
        await LOG.wait_gate()
        await self.send_headers(headers=[(b"content-type", b"text/plain")])
        await self.send_body(b"first", more_body=True)
        LOG.events.append("sent")

    async def disconnect(self) -> None:
        LOG.events.append("disconnect")
