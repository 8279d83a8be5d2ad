"""Property tests of the HTTP/1.1 protocol object: chunked bodies and header fields.

These drive ``HttpProtocol`` directly with an in-memory transport (bytes in,
bytes out), so hypothesis can try thousands of shapes quickly; the socket-level
behaviour is covered in test_http11.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.server._http11 import HttpProtocol
from tidings.server._state import ServerState
from tidings.server.config import Config


class MemoryTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, items: Any) -> None:
        for item in items:
            self.out += item

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run_requests(
    loop: asyncio.AbstractEventLoop, chunks: list[bytes]
) -> tuple[list[dict[str, Any]], list[bytes], bytes]:
    scopes: list[dict[str, Any]] = []
    bodies: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    state = ServerState(Config(app=app, access_log=False), app, loop)
    protocol = HttpProtocol(state)
    transport = MemoryTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        protocol.data_received(chunk)
        loop.run_until_complete(asyncio.sleep(0))
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))
    protocol.connection_lost(None)
    return scopes, bodies, bytes(transport.out)


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return [p for p in pieces if p]


chunk_sizes = st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    parts=chunk_sizes,
    upper=st.booleans(),
    extension=st.sampled_from([b"", b";a=b", b';name="quoted value"', b";x"]),
    trailer=st.sampled_from([b"", b"X-Sum: 1\r\n", b"A: b\r\nC: d\r\n"]),
    splits=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_chunked_bodies_arrive_intact_however_split(
    loop: asyncio.AbstractEventLoop,
    parts: list[bytes],
    upper: bool,
    extension: bytes,
    trailer: bytes,
    splits: list[int],
) -> None:
    encoded = b""
    for part in parts:
        size = b"%x" % len(part)
        encoded += (size.upper() if upper else size) + extension + b"\r\n" + part + b"\r\n"
    encoded += b"0" + extension + b"\r\n" + trailer + b"\r\n"
    request = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded
    request += b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n"
    scopes, bodies, out = run_requests(loop, split_at(request, splits))
    assert bodies == [b"".join(parts), b""]
    assert [s["path"] for s in scopes] == ["/", "/next"]
    assert out.count(b"HTTP/1.1 200 OK") == 2


token = st.text(
    alphabet=st.sampled_from("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFXYZ"),
    min_size=1,
    max_size=20,
)
field_value = st.binary(max_size=60).map(
    # VCHAR and obs-text, with spaces and tabs only inside (RFC 9110 section 5.5).
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80)
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(
        st.tuples(token, field_value, st.sampled_from([b"", b" ", b"\t", b"  "])), max_size=10
    ),
    splits=st.lists(st.integers(min_value=0, max_value=2_000), max_size=4),
)
def test_header_fields_reach_the_scope_lowercased_and_trimmed(
    loop: asyncio.AbstractEventLoop,
    fields: list[tuple[str, bytes, bytes]],
    splits: list[int],
) -> None:
    fields = [(n, v, ws) for n, v, ws in fields if n.lower() not in _FRAMING]
    lines = b"".join(n.encode() + b":" + ws + v + ws + b"\r\n" for n, v, ws in fields)
    request = b"GET / HTTP/1.1\r\nHost: t\r\n" + lines + b"\r\n"
    scopes, _, out = run_requests(loop, split_at(request, splits))
    assert out.startswith(b"HTTP/1.1 200 OK"), out[:80]
    (scope,) = scopes
    assert scope["headers"][1:] == [(n.lower().encode(), v) for n, v, _ in fields]


_FRAMING = {"host", "content-length", "transfer-encoding", "expect", "upgrade", "connection"}


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_arbitrary_bytes_get_a_status_line_or_nothing(
    loop: asyncio.AbstractEventLoop, garbage: bytes
) -> None:
    _, _, out = run_requests(loop, [garbage])
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    assert b"Traceback" not in out
