"""HTTP/1.1 behaviour of the server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest

from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.server import _addresses
from tidings.server.config import Limits, Timeouts

from . import apps
from ._helpers import FAST_SWEEP, exchange, open_conn, read_response, serve, wait_for

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_hello_world() -> None:
    async with serve(apps.hello) as srv, httpx.AsyncClient() as client:
        r = await client.get(srv.url + "/")
    assert r.status_code == 200
    assert r.text == "Hello, world!"
    assert r.headers["content-length"] == "13"
    assert r.headers["date"].endswith("GMT")


async def test_scope_follows_the_asgi_spec() -> None:
    async with serve(apps.echo, root_path="/api") as srv:
        raw = await exchange(
            srv.port,
            b"GET /a%20b/caf%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Mixed-Case: V\r\n"
            b"Connection: close\r\n\r\n",
        )
    head = raw.split(b"\r\n\r\n")[0].decode("latin-1")
    scope = json.loads(head.split("x-scope: ", 1)[1].split("\r\n")[0])
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/api/a b/café"
    assert scope["raw_path"] == "/api/a%20b/caf%C3%A9"
    assert scope["query_string"] == "x=1&y=%20"
    assert scope["root_path"] == "/api"
    assert ["x-mixed-case", "V"] in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", srv.port]
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert "http.response.trailers" in scope["extensions"]
    assert scope["state"] == {}


async def test_absolute_form_target() -> None:
    async with serve(apps.echo) as srv:
        raw = await exchange(
            srv.port, b"GET http://t/p%2Fq?z HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
    scope = json.loads(raw.split(b"x-scope: ", 1)[1].split(b"\r\n")[0])
    assert scope["path"] == "/p/q"
    assert scope["raw_path"] == "/p%2Fq"
    assert scope["query_string"] == "z"


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serve(apps.hello) as srv:
        reader, writer = await open_conn(srv.port)
        for _ in range(3):
            writer.write(GET)
            r = await read_response(reader)
            assert r.status == 200 and r.body == b"Hello, world!"
            assert r.header("connection") is None
        writer.close()


async def test_pipelined_responses_come_in_request_order() -> None:
    async with serve(apps.slow_first) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(
            b"GET /0.2 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /0 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /0.05 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        bodies = [(await read_response(reader)).body for _ in range(3)]
        writer.close()
    assert bodies == [b"/0.2", b"/0", b"/0.05"]


async def test_content_length_and_chunked_request_bodies() -> None:
    async with serve(apps.echo) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        assert (await read_response(reader)).body == b"hello"
        writer.write(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        assert (await read_response(reader)).body == b"abcdefg"
        writer.close()


async def test_large_body_arrives_in_several_messages() -> None:
    chunks: list[int] = []

    async def counting(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        while True:
            msg = await receive()
            chunks.append(len(msg["body"]))
            if not msg["more_body"]:
                break
        await apps.hello(scope, receive, send)

    payload = b"x" * (3 * 1024 * 1024)
    async with serve(counting) as srv, httpx.AsyncClient() as client:
        r = await client.post(srv.url, content=payload)
    assert r.status_code == 200
    assert sum(chunks) == len(payload)
    assert len(chunks) > 1


async def test_streamed_response_is_chunked() -> None:
    async with serve(apps.stream) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET /?5 HTTP/1.1\r\nHost: t\r\n\r\n")
        r = await read_response(reader)
        writer.close()
    assert r.header("transfer-encoding") == "chunked"
    assert r.body == b"".join(b"%09d\n" % i for i in range(5))


async def test_http10_streamed_response_ends_with_close() -> None:
    async with serve(apps.stream) as srv:
        raw = await exchange(srv.port, b"GET /?2 HTTP/1.0\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head
    assert b"connection: close" in head
    assert body == b"000000000\n000000001\n"


async def test_http10_keep_alive_is_honoured() -> None:
    async with serve(apps.hello) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = await read_response(reader)
        assert r.header("connection") == "keep-alive"
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        r = await read_response(reader)
        assert r.header("connection") == "close"
        assert await reader.read() == b""
        writer.close()


async def test_connection_close_closes_after_response() -> None:
    async with serve(apps.hello) as srv:
        raw = await exchange(srv.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in raw
    assert raw.endswith(b"Hello, world!")


async def test_head_response_has_headers_and_no_body() -> None:
    async with serve(apps.hello) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        r = await read_response(reader, head=True)
        assert r.header("content-length") == "13"
        # The next response starts right away: no body bytes were sent.
        writer.write(GET)
        r2 = await read_response(reader)
        assert r2.body == b"Hello, world!"
        writer.close()


async def test_expect_100_continue() -> None:
    async with serve(apps.echo) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"data")
        r = await read_response(reader)
        assert r.status == 200 and r.body == b"data"
        writer.close()


async def test_no_100_continue_when_app_answers_without_reading() -> None:
    async with serve(apps.hello) as srv:
        raw = await exchange(
            srv.port,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"100 Continue" not in raw
    assert b"connection: close" in raw  # the body never came: no reuse


async def test_response_trailers() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"42")]})

    async with serve(app) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(GET)
        r = await read_response(reader)
        writer.write(GET)
        r2 = await read_response(reader)
        writer.close()
    assert r.body == b"abcdef"
    assert r.trailers == [("x-checksum", "42")]
    assert r2.body == b"abcdef"


@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_announced_trailers_that_never_come_still_end_the_response(
    ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The app announces trailers, sends its body, then returns (or fails) without them:
    # the chunked message must still end, and the connection must not be reused.
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"abc"})
        if ending == "raises":
            raise ValueError("no trailers after all")

    caplog.set_level(logging.ERROR, logger="tidings.error")
    async with serve(app) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(GET + GET)
        r = await asyncio.wait_for(read_response(reader), 5)
        assert r.body == b"abc" and r.trailers == []
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, second not served
        writer.close()
    expected = "without the trailers" if ending == "returns" else "Exception in ASGI"
    assert any(expected in record.getMessage() for record in caplog.records)


async def test_pathsend(tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 4096
    path.write_bytes(data)

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    async with serve(app) as srv, httpx.AsyncClient() as client:
        r = await client.get(srv.url)
    assert r.content == data
    assert r.headers["content-length"] == str(len(data))


async def test_no_body_statuses() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve(app) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(GET)
        r = await read_response(reader)
        writer.write(GET)
        r2 = await read_response(reader)
        writer.close()
    assert r.status == 204 and r2.status == 204
    assert r.header("content-length") is None and r.header("transfer-encoding") is None


# -- malformed input: the RFC's answer, then close --------------------------------------

BAD_REQUESTS = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),  # whitespace before colon
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\nHost: t\rX: b\r\n\r\n", 400),  # bare CR
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # missing Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # repeated Host
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: \x01\r\n\r\n", 400),  # control character
    (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"GET /\x7f HTTP/1.1\r\nHost: t\r\n\r\n", 400),
]


@pytest.mark.parametrize(("request_bytes", "status"), BAD_REQUESTS)
async def test_malformed_requests_get_the_rfc_status_and_a_close(
    request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    called = False

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        nonlocal called
        if scope["type"] == "http":
            called = True
        await apps.hello(scope, receive, send)

    caplog.set_level(logging.INFO, "tidings.error")
    async with serve(app) as srv:
        raw = await exchange(srv.port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw
    assert b"connection: close" in raw
    assert b"Traceback" not in raw
    if b"zz" not in request_bytes:  # a bad body is found after the app has started
        assert not called
    records = [r for r in caplog.records if "bad request" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is None


async def test_bad_request_after_good_pipelined_one_is_answered_in_order() -> None:
    async with serve(apps.slow_first) as srv:
        raw = await exchange(srv.port, b"GET /0.1 HTTP/1.1\r\nHost: t\r\n\r\nBROKEN\r\n\r\n")
    first, _, rest = raw.partition(b"/0.1")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest.startswith(b"HTTP/1.1 400 Bad Request")


# -- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 30 + b"\r\n", 431),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n", 413),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"200\r\n"
            + b"a" * 512
            + b"\r\n"
            + b"200\r\n"
            + b"a" * 512
            + b"\r\n1\r\na\r\n0\r\n\r\n",
            413,
        ),
    ],
)
async def test_size_limits(request_bytes: bytes, status: int) -> None:
    limits = Limits(max_header_size=4096, max_header_count=20, max_body_size=1024)
    async with serve(apps.echo, limits=limits) as srv:
        raw = await exchange(srv.port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:60]


async def test_header_block_trickled_without_end_is_cut_at_the_size_limit() -> None:
    limits = Limits(max_header_size=2048)
    async with serve(apps.hello, limits=limits) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ")
        for _ in range(10):
            writer.write(b"a" * 512)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert raw.startswith(b"HTTP/1.1 431 ")


async def test_slow_header_block_gets_408_after_header_timeout() -> None:
    async with serve(apps.hello, timeouts=Timeouts(header=0.2), sweep_interval=FAST_SWEEP) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert raw.startswith(b"HTTP/1.1 408 ")


async def test_silent_connection_is_closed_after_header_timeout() -> None:
    async with serve(apps.hello, timeouts=Timeouts(header=0.2), sweep_interval=FAST_SWEEP) as srv:
        reader, writer = await open_conn(srv.port)
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert raw.startswith(b"HTTP/1.1 408 ")


async def test_idle_keep_alive_connection_is_closed() -> None:
    timeouts = Timeouts(keepalive=0.2)
    async with serve(apps.hello, timeouts=timeouts, sweep_interval=FAST_SWEEP) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(GET)
        await read_response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_stalled_body_is_cut_by_body_timeout() -> None:
    disconnected = asyncio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                disconnected.set()
                return

    async with serve(app, timeouts=Timeouts(body=0.2), sweep_interval=FAST_SWEEP) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.wait_for(disconnected.wait(), 5)
    assert raw.startswith(b"HTTP/1.1 408 ")


async def test_trickled_body_is_cut_by_the_minimum_rate() -> None:
    timeouts = Timeouts(body=0.5)
    async with serve(apps.echo, timeouts=timeouts, sweep_interval=FAST_SWEEP) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        raw = b""
        for _ in range(100):  # one byte every 50 ms: never idle for 0.5 s
            writer.write(b"a")
            await writer.drain()
            try:
                raw = await asyncio.wait_for(reader.read(), 0.05)
            except TimeoutError:
                continue
            break
        writer.close()
    assert raw.startswith(b"HTTP/1.1 408 ")


async def test_connections_over_the_limit_get_503() -> None:
    async with serve(apps.hello, limits=Limits(max_connections=2)) as srv:
        held = [await open_conn(srv.port) for _ in range(2)]
        for _, w in held:
            w.write(GET)
        for r, _ in held:
            assert (await read_response(r)).status == 200
        raw = await exchange(srv.port, GET)
        assert raw.startswith(b"HTTP/1.1 503 ")
        for _, w in held:
            w.close()


# -- application errors -----------------------------------------------------------------


async def _boom_before(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    raise ValueError("boom")


async def _no_response(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    return None


async def _wrong_first_message(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await send({"type": "http.response.body", "body": b"x"})


@pytest.mark.parametrize(
    ("app", "log_text"),
    [
        (_boom_before, "Exception in ASGI application"),
        (_no_response, "returned without starting a response"),
        (_wrong_first_message, "Exception in ASGI application"),
    ],
)
async def test_app_failures_before_response_give_500(
    app: Any, log_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")
    async with serve(app) as srv:
        raw = await exchange(srv.port, GET)
        # The server is still serving.
        assert (await exchange(srv.port, GET)).startswith(b"HTTP/1.1 500 ")
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"boom" not in raw and b"Traceback" not in raw
    assert any(log_text in r.getMessage() for r in caplog.records)


async def test_app_failure_mid_response_closes_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("mid-stream")

    caplog.set_level(logging.ERROR, "tidings.error")
    async with serve(app) as srv:
        raw = await exchange(srv.port, GET)
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # the client can tell it was cut short
    assert any("Exception in ASGI application" in r.getMessage() for r in caplog.records)


async def test_header_injection_is_refused() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-evil", b"a\r\nSet-Cookie: pwned=1")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async with serve(app) as srv:
        raw = await exchange(srv.port, GET)
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"pwned" not in raw


async def test_body_longer_than_content_length_is_an_error() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"abc"})

    async with serve(app) as srv:
        raw = await exchange(srv.port, GET)
    assert raw.startswith(b"HTTP/1.1 500 ")


async def test_disconnect_is_delivered_when_client_leaves_mid_request() -> None:
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        first = await receive()
        assert first["more_body"] is True
        got.set_result(dict(await receive()))

    async with serve(app) as srv:
        _reader, writer = await open_conn(srv.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        message = await asyncio.wait_for(got, 5)
    assert message == {"type": "http.disconnect"}


async def test_receive_after_response_returns_disconnect() -> None:
    got: list[str] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await apps.hello(scope, receive, send)
        got.append((await receive())["type"])

    async with serve(app) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(GET)
        await read_response(reader)
        writer.close()
    assert got == ["http.disconnect"]


# -- flow control -----------------------------------------------------------------------


async def test_send_waits_when_the_client_does_not_read() -> None:
    sent = 0
    blocked = asyncio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        nonlocal sent
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        for _ in range(2000):  # 128 MiB if nothing pushed back
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        await send({"type": "http.response.body", "body": b""})

    async with serve(app) as srv:
        _reader, writer = await open_conn(srv.port)
        writer.write(GET)
        await writer.drain()
        # Let the app run until it is held up by the full socket buffers.
        for _ in range(100):
            before = sent
            await asyncio.sleep(0.02)
            if sent == before and sent > 0:
                blocked.set()
                break
        assert blocked.is_set()
        # Kernel socket buffers + our high-water mark: a few MiB at most, not 128.
        assert sent < 16 * 1024 * 1024
        writer.close()


async def test_reading_pauses_while_the_app_does_not_consume_the_body() -> None:
    release = asyncio.Event()
    seen = 0

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        nonlocal seen
        await release.wait()
        more_body = True
        while more_body:  # counted, not joined: joining 64 MiB chunk by chunk takes seconds
            message = await receive()
            assert message["type"] == "http.request", message
            seen += len(message["body"])
            more_body = message.get("more_body", False)
        await apps.hello(scope, receive, send)

    async with serve(app) as srv:
        reader, writer = await open_conn(srv.port)
        size = 64 * 1024 * 1024
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"y" * (1 << 20)
        written = 0
        try:
            for _ in range(64):
                writer.write(chunk)
                written += len(chunk)
                await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            pass
        # The server stopped reading long before taking the whole body.
        assert written < size
        assert srv.server.state is not None
        (conn,) = list(srv.server.state.connections)
        assert conn._active is not None  # type: ignore[attr-defined]
        assert conn._active.buffered <= 2 * 1024 * 1024  # type: ignore[attr-defined]
        release.set()
        while written < size:
            writer.write(chunk)
            written += len(chunk)
            await writer.drain()
        r = await read_response(reader, timeout=20)
        writer.close()
    assert r.status == 200
    assert seen == size


# -- lifespan -----------------------------------------------------------------------------


async def test_lifespan_state_reaches_requests() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                events.append(msg["type"])
                if msg["type"] == "lifespan.startup":
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await apps.echo(scope, receive, send)

    async with serve(app, lifespan="auto") as srv, httpx.AsyncClient() as client:
        r = await client.get(srv.url)
    assert json.loads(r.headers["x-scope"])["state"] == {"db": "connected"}
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_lifespan_startup_failure_stops_the_server(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    from tidings.server._main import EXIT_STARTUP_FAILED, Server, bind_sockets
    from tidings.server.config import Config

    config = Config(app=app, port=0)
    sockets = bind_sockets(config)
    try:
        status = await Server(config, app).serve(sockets)
    finally:
        sockets[0].close()
    assert status == EXIT_STARTUP_FAILED
    assert any("database unreachable" in r.getMessage() for r in caplog.records)


async def test_lifespan_on_requires_support() -> None:
    from tidings.server._main import EXIT_STARTUP_FAILED, Server, bind_sockets
    from tidings.server.config import Config

    config = Config(app=_boom_before, port=0, lifespan="on")
    sockets = bind_sockets(config)
    try:
        status = await Server(config, _boom_before).serve(sockets)
    finally:
        sockets[0].close()
    assert status == EXIT_STARTUP_FAILED


# -- proxy headers ----------------------------------------------------------------------


async def test_proxy_headers_from_trusted_peer() -> None:
    async with serve(apps.echo, proxy_headers=True, forwarded_allow_ips=("127.0.0.1",)) as srv:
        raw = await exchange(
            srv.port,
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4, 127.0.0.1\r\n"
            b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        )
    scope = json.loads(raw.split(b"x-scope: ", 1)[1].split(b"\r\n")[0])
    assert scope["client"] == ["1.2.3.4", 0]
    assert scope["scheme"] == "https"


async def test_proxy_headers_from_untrusted_peer_are_ignored() -> None:
    async with serve(apps.echo, proxy_headers=True, forwarded_allow_ips=("10.0.0.1",)) as srv:
        raw = await exchange(
            srv.port,
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\n"
            b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        )
    scope = json.loads(raw.split(b"x-scope: ", 1)[1].split(b"\r\n")[0])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


async def test_streaming_app_learns_at_once_that_the_client_left() -> None:
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event\n", "more_body": True})
        got.set_result((await receive())["type"])  # waits; no further writes

    async with serve(app) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(GET)
        await reader.readuntil(b"event\n")
        writer.close()
        assert await asyncio.wait_for(got, 5) == "http.disconnect"


# -- --application-close-timeout ----------------------------------------------------------


def _close_timeout_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if "after its connection closed" in r.getMessage()
    ]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_app_ignoring_the_disconnect_is_cancelled_after_application_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request's app still running ``application_close`` s after the client left is
    cancelled, with one warning naming the request and no error or traceback."""
    caplog.set_level(logging.WARNING, "tidings.error")
    loop = asyncio.get_running_loop()
    request_read = asyncio.Event()
    cancelled_at: list[float] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        request_read.set()
        assert (await receive())["type"] == "http.disconnect"
        try:
            await asyncio.sleep(3600)  # ignores the disconnect: a leak without the timeout
        except asyncio.CancelledError:
            cancelled_at.append(loop.time())
            raise

    timeouts = Timeouts(application_close=0.3)
    async with serve(app, timeouts=timeouts, sweep_interval=FAST_SWEEP) as srv:
        _reader, writer = await open_conn(srv.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(request_read.wait(), 5)
        closed_at = loop.time()
        writer.close()
        await wait_for(lambda: bool(cancelled_at), 5)
    # Not before the timeout; at most one sweep interval (1 s) after it, plus slack.
    assert 0.3 <= cancelled_at[0] - closed_at < 2.5
    assert _close_timeout_warnings(caplog) == [
        "application for GET /slow still running 0.3 s after its connection closed; "
        "cancelled (--application-close-timeout)"
    ]
    assert not _errors(caplog)


async def test_app_still_running_after_its_response_is_cancelled_once_the_connection_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app that completed its response and goes on running is cancelled once its
    keep-alive connection is closed and the timeout has passed."""
    caplog.set_level(logging.WARNING, "tidings.error")
    cancelled = asyncio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await apps.hello(scope, receive, send)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timeouts = Timeouts(application_close=0.3)
    async with serve(app, timeouts=timeouts, sweep_interval=FAST_SWEEP) as srv:
        reader, writer = await open_conn(srv.port)
        writer.write(b"GET /after?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader)).status == 200
        writer.close()
        await asyncio.wait_for(cancelled.wait(), 5)
    assert _close_timeout_warnings(caplog) == [
        "application for GET /after still running 0.3 s after its connection closed; "
        "cancelled (--application-close-timeout)"
    ]
    assert not _errors(caplog)


async def test_app_finishing_its_clean_up_in_time_is_not_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app that returns 0.1 s after ``http.disconnect`` (within the 0.3 s timeout)
    runs to its end: no cancellation, nothing logged, nothing left watched."""
    caplog.set_level(logging.WARNING, "tidings.error")
    request_read = asyncio.Event()
    finished = asyncio.Event()
    watched: list[bool] = []
    cancelled: list[bool] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        request_read.set()
        assert (await receive())["type"] == "http.disconnect"
        assert srv.server.state is not None
        watched.append(asyncio.current_task() in srv.server.state.orphans)
        try:
            await asyncio.sleep(0.1)  # clean-up after the disconnect
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        finished.set()

    timeouts = Timeouts(application_close=0.3)
    async with serve(app, timeouts=timeouts, sweep_interval=FAST_SWEEP) as srv:
        _reader, writer = await open_conn(srv.port)
        writer.write(GET)
        await asyncio.wait_for(request_read.wait(), 5)
        writer.close()
        await asyncio.wait_for(finished.wait(), 5)
        # The sweep forgets the finished task; from then on nothing can cancel it.
        await wait_for(lambda: srv.server.state is not None and not srv.server.state.orphans, 5)
    assert watched == [True]  # the timeout was running: this test exercises it
    assert not cancelled
    assert not _close_timeout_warnings(caplog)
    assert not _errors(caplog)


async def test_connections_share_their_server_address_and_client_host() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        seen.append(dict(scope))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve(app) as srv:
        for _ in range(2):
            async with httpx.AsyncClient() as client:  # a connection each
                assert (await client.get(srv.url)).status_code == 204
    first, second = seen
    assert first["client"][1] != second["client"][1]  # two connections
    assert first["server"] is second["server"]
    assert first["client"][0] is second["client"][0]


def test_the_shared_address_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client spread over endless addresses costs the table nothing past its bound."""
    monkeypatch.setattr(_addresses, "_addresses", {})
    limit = _addresses._ADDRESSES_MAX
    hosts = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(limit + 500)]
    shared = [_addresses._shared_address(host) for host in hosts]
    assert shared == hosts
    assert len(_addresses._addresses) == limit
    again = "".join(["10.0.0.", "1"])  # equal, not the same object
    assert again is not hosts[1] and _addresses._shared_address(again) is shared[1]
