"""tidings.server._ws_handshake: the request's header fields an open WebSocket keeps.

An upgraded connection holds its scope's headers for its whole life, so equal fields
of different connections are shared (one object per process), within a bounded table.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from websockets.asyncio.client import connect

from tidings._types import ASGIReceive, ASGISend, Message, Scope
from tidings.server import _ws_handshake
from tidings.server._ws_handshake import shared_fields

from ._helpers import serve


async def test_equal_fields_of_two_connections_are_one_object() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        scopes.append(scope)
        await send({"type": "websocket.accept"})
        await receive()

    async with serve(app) as srv:
        url = f"ws://127.0.0.1:{srv.port}/"
        extra = [("Cache-Control", "no-cache")]
        async with (
            connect(url, user_agent_header="scale-test/1", additional_headers=extra),
            connect(url, user_agent_header="scale-test/1", additional_headers=extra),
        ):
            pass
    first, second = ({field[0]: field for field in s["headers"]} for s in scopes)
    assert first[b"user-agent"] == (b"user-agent", b"scale-test/1")
    assert first[b"cache-control"] == (b"cache-control", b"no-cache")
    # The same field sent twice is held once...
    assert first[b"user-agent"] is second[b"user-agent"]
    assert first[b"cache-control"] is second[b"cache-control"]
    # ...and a field with a value per connection shares its name only.
    assert first[b"sec-websocket-key"] != second[b"sec-websocket-key"]
    assert first[b"sec-websocket-key"][0] is second[b"sec-websocket-key"][0]


def _field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    # Fresh objects, as the HTTP parser makes them for every request.
    return (bytes(bytearray(name)), bytes(bytearray(value)))


def test_fields_are_returned_unchanged_in_order() -> None:
    headers = [
        _field(b"host", b"example.com"),
        _field(b"x-custom", b"1"),
        _field(b"cookie", b"a=b"),
        _field(b"host", b"example.com"),
    ]
    assert shared_fields(headers) == headers
    assert shared_fields([]) == []


@pytest.fixture
def table() -> Iterator[dict[tuple[bytes, bytes], tuple[bytes, bytes]]]:
    """The process's table, empty for the test and as it was afterwards."""
    shared = _ws_handshake._shared
    saved = dict(shared)
    shared.clear()
    yield shared
    shared.clear()
    shared.update(saved)


def test_distinct_values_do_not_grow_the_table_past_its_bound(
    table: dict[tuple[bytes, bytes], tuple[bytes, bytes]],
) -> None:
    """An attacker sending endless distinct values of a shared field fills the table
    once, to its bound; later fields stay the connection's own and are still right."""
    limit = _ws_handshake._SHARED_MAX
    sent = [_field(b"user-agent", b"bot/%d" % i) for i in range(limit + 500)]
    got = []
    for field in sent:
        got += shared_fields([field])
    assert got == sent
    assert len(table) == limit
    assert sent[-1] not in table


def test_long_values_are_not_shared(table: dict[tuple[bytes, bytes], tuple[bytes, bytes]]) -> None:
    field = _field(b"user-agent", b"y" * (_ws_handshake._SHARED_VALUE_MAX + 1))
    assert shared_fields([field]) == [field]
    assert not table
    [first] = shared_fields([_field(b"user-agent", b"y")])
    [second] = shared_fields([_field(b"user-agent", b"y")])
    assert first is second


def _traced(make: Callable[[], object]) -> float:
    """Bytes one object made by ``make`` holds, by tracemalloc, over 500 of them."""
    made: list[object] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(500):
            made.append(make())
        return (tracemalloc.get_traced_memory()[0] - before - sys.getsizeof(made)) / 500
    finally:
        tracemalloc.stop()


def test_scope_and_extensions_take_under_half_the_memory_of_literal_dicts() -> None:
    """Key-sharing dicts: equal to dicts built the usual way, a fraction of their size."""

    def send_nowait(message: Message) -> bool:
        return False

    http = {"http_version": "1.1", "scheme": "http", "path": "/", "raw_path": b"/",
            "query_string": b"", "root_path": "", "headers": [], "client": ("1.2.3.4", 5),
            "server": ("6.7.8.9", 80), "state": {}}  # fmt: skip
    extensions = _ws_handshake.websocket_extensions(send_nowait)
    scope = _ws_handshake.websocket_scope(http, extensions)
    assert type(scope) is dict and type(extensions) is dict
    assert extensions == {
        "websocket.http.response": {},
        "tidings.websocket.direct": {"send_nowait": send_nowait},
    }
    assert scope == {
        "type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.4"}, **http,
        "scheme": "ws", "subprotocols": [], "extensions": extensions,
    }  # fmt: skip
    # Per object, the dicts alone (the lists in the scope counted on both sides).
    ours = _traced(lambda: _ws_handshake.websocket_extensions(send_nowait))
    usual = _traced(lambda: {"websocket.http.response": {}, "d": {"send_nowait": send_nowait}})
    assert ours < usual / 2, (ours, usual)
    ours = _traced(lambda: _ws_handshake.websocket_scope(http, extensions))
    usual = _traced(lambda: {**scope, "headers": [], "subprotocols": []})
    assert ours < 0.75 * usual, (ours, usual)
