"""The server's limits, each counted once by its name when a client hits it.

The server runs in the test's loop with metrics on in this process (as in a worker);
each attack is the one of ``tests/security`` in miniature, over real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from tests.server._helpers import exchange, open_conn, serve, wait_for
from tests.server.apps import hello
from tests.server.test_websocket import echo as echo_ws
from tidings import _metrics
from tidings.server.config import Limits, Timeouts, WebSocketSettings


@pytest.fixture
def metrics() -> Iterator[_metrics.Metrics]:
    assert _metrics.ACTIVE is None
    try:
        yield _metrics.enable()
    finally:
        _metrics.disable()


def hits(metrics: _metrics.Metrics) -> dict[str, int]:
    return {name: count for name, count in metrics.limits.items() if count}


async def test_http_limits(metrics: _metrics.Metrics) -> None:
    limits = Limits(max_header_count=5, max_body_size=100, max_connections=2)
    async with serve(hello, limits=limits, timeouts=Timeouts(header=0.2), sweep_interval=0.05) as s:
        fields = b"".join(b"x-%d: 1\r\n" % n for n in range(6))
        assert (
            await exchange(s.port, b"GET / HTTP/1.1\r\nhost: x\r\n" + fields + b"\r\n")
        ).startswith(b"HTTP/1.1 431")
        big = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 101\r\n\r\n"
        assert (await exchange(s.port, big)).startswith(b"HTTP/1.1 413")
        assert hits(metrics) == {"max_header_count": 1, "max_body_size": 1}
        # Two idle connections fill --max-connections; a third gets 503.
        idle = [await open_conn(s.port) for _ in range(2)]
        assert (await exchange(s.port, b"")).startswith(b"HTTP/1.1 503")
        assert metrics.limits["max_connections"] == 1
        # The idle ones never send a head: --header-timeout closes them.
        for reader, _ in idle:
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 408")
        assert metrics.limits["header_timeout"] == 2
        for _, writer in idle:
            writer.close()


async def test_a_message_over_the_size_limit(metrics: _metrics.Metrics) -> None:
    settings = WebSocketSettings(max_message_size=1000, per_message_deflate=False)
    async with serve(echo_ws, websocket=settings) as s:
        async with connect(f"ws://127.0.0.1:{s.port}/", compression=None) as ws:
            await ws.send("x" * 10)
            assert await ws.recv() == "x" * 10
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await wait_for(lambda: metrics.closes.get(1009) == 1)
        assert hits(metrics) == {"ws_max_message_size": 1}
        figures = metrics.snapshot()  # adds the messages counted by size (Metrics.fold)
        assert (figures["ws_messages_in"], figures["ws_messages_out"]) == (1, 1)
        assert figures["ws_bytes_out"] == 2 + 10
        assert metrics.ws_accepted == 1
