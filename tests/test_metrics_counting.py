"""Messages, bytes and request durations, counted in this process over real sockets.

The server runs in the test's loop with metrics on (as in a worker). WebSocket frames
are written by hand, so every byte is known, and grouped on purpose: one message per
write (the read the server counts by its size), several per write, a ping among them,
a message cut in two; every figure must be exact whichever way the reads fall. The
per-message sizes wait in lists until a snapshot or the once-a-second sweep adds them
up: a flood shows the sweep empties them with nobody reading the figures. HTTP/2
requests (``h2`` as the client) count in the request-duration histogram as HTTP/1.1
ones do.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.server._helpers import serve, wait_for
from tests.server.test_http2 import App, h2_client
from tests.server.test_websocket import echo
from tidings import _metrics
from tidings.server.config import WebSocketSettings


@pytest.fixture
def metrics() -> Iterator[_metrics.Metrics]:
    assert _metrics.ACTIVE is None
    try:
        yield _metrics.enable()
    finally:
        _metrics.disable()


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 section 5.2), payloads under 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


class Client:
    """A WebSocket client on asyncio streams that counts the bytes it writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = 0

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n" % key
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        self.sent += len(data)
        await self.writer.drain()

    async def recv(self) -> tuple[int, bytes]:
        first, size = await self.reader.readexactly(2)
        assert size < 126
        return first & 0x0F, await self.reader.readexactly(size)

    async def aclose(self) -> None:
        await self.write(frame(8, struct.pack(">H", 1000)))
        assert (await self.recv())[0] == 8
        assert await self.reader.read() == b""


@pytest.fixture
async def client(metrics: _metrics.Metrics) -> AsyncIterator[Client]:
    settings = WebSocketSettings(per_message_deflate=False)
    async with serve(echo, websocket=settings, sweep_interval=0.01) as server:
        ws = await Client.open(server.port)
        try:
            yield ws
        finally:
            ws.writer.close()


async def test_every_grouping_of_frames_is_counted_exactly(
    metrics: _metrics.Metrics, client: Client
) -> None:
    ws = client
    echoed = []  # what the server sent back, in messages
    # One message per write.
    for text in (b"one", b"two" * 20):
        await ws.write(frame(1, text))
        assert await ws.recv() == (1, text)
        echoed.append(text)
    await ws.write(frame(2, b"\x00\x01"))
    assert await ws.recv() == (2, b"\x00\x01")
    echoed.append(b"\x00\x01")
    # Three messages and a ping in one write: three echoes and a pong.
    burst = [b"a", b"bb", b"ccc"]
    await ws.write(frame(1, burst[0]) + frame(9, b"ping") + frame(1, burst[1]) + frame(1, burst[2]))
    got = [await ws.recv() for _ in range(4)]
    assert (10, b"ping") in got and [p for op, p in got if op == 1] == burst
    echoed += burst
    # A message cut in two: its first half is a read that holds no message.
    whole = frame(1, b"split across two reads")
    before = metrics.snapshot()["ws_bytes_in"]
    await ws.write(whole[:5])
    await wait_for(lambda: metrics.snapshot()["ws_bytes_in"] == before + 5)
    await ws.write(whole[5:])
    assert await ws.recv() == (1, b"split across two reads")
    echoed.append(b"split across two reads")

    figures = metrics.snapshot()
    assert figures["ws_messages_in"] == figures["ws_messages_out"] == len(echoed) == 7
    assert figures["ws_bytes_in"] == ws.sent
    assert figures["ws_bytes_out"] == sum(2 + len(text) for text in echoed)  # pongs aside
    assert "ws_in_sizes" not in figures and "ws_out_sizes" not in figures
    assert metrics.ws_in_sizes == [] and metrics.ws_out_sizes == []  # folded
    await ws.aclose()
    await wait_for(lambda: metrics.closes.get(1000) == 1)
    assert metrics.snapshot()["ws_bytes_in"] == ws.sent  # the close frame too


async def test_a_flood_of_messages_is_folded_by_the_sweep(
    metrics: _metrics.Metrics, client: Client
) -> None:
    """An attacker's stream of tiny messages: the per-message sizes never pile up.

    Nobody takes a snapshot here: only the server's sweep (every 10 ms in this test,
    every second by default) empties the lists. The flood goes on until it has seen
    the sweep empty them three times (at most 20,000 messages), then the lists empty
    once more, and the totals are exact.
    """
    ws = client
    folds = sent = 0
    pending = 0
    while folds < 3:
        assert sent < 20_000, "the sweep never folded the sizes"
        await ws.write(frame(1, b"x"))
        assert await ws.recv() == (1, b"x")
        sent += 1
        if len(metrics.ws_in_sizes) < pending:
            folds += 1
        pending = len(metrics.ws_in_sizes)
    await wait_for(lambda: not metrics.ws_in_sizes and not metrics.ws_out_sizes)
    # The attributes themselves, as the sweep left them.
    assert (metrics.ws_messages_in, metrics.ws_messages_out) == (sent, sent)
    assert metrics.ws_bytes_in == ws.sent == sent * 7
    assert metrics.ws_bytes_out == sent * 3
    await ws.aclose()


async def test_http2_requests_count_in_the_duration_histogram(metrics: _metrics.Metrics) -> None:
    def counted(status_class: int) -> int:
        return sum(metrics.http_duration[status_class].counts)

    async with serve(App()) as server, h2_client(server.port) as h2:
        assert (await h2.get("/")).status == 200
        assert (await h2.get("/head", method="HEAD")).status == 200
        assert (await h2.get("/fail")).status == 500  # the app raised before answering
        late = await h2.get("/fail?late")  # ... and after its 200 went out: a reset
        assert late.status == 200 and late.reset is not None
        # The client resets a stream before any answer: no response (class 0).
        sid = h2.start("/wait", end=False)
        h2.conn.reset_stream(sid)
        h2.flush()
        await wait_for(lambda: counted(0) == 1)
    assert [counted(n) for n in range(6)] == [1, 0, 3, 0, 0, 1]
    assert 0 < metrics.http_duration[2].total < 60
    assert metrics.app_exceptions["http"] == 2
