"""Server hardening: request data in logs, application headers, shutdown of streams.

Real servers throughout: ``tidings serve`` subprocesses where the log stream or a
signal is what is tested, the in-process server with ``caplog`` otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.security._serve import server_env, tidings_serve
from tests.server import apps
from tests.server._helpers import FAST_SWEEP, exchange, free_port, serve, wait_for
from tests.transports._client import Endpoint, poll, sse
from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope
from tidings.server._http11 import HttpProtocol
from tidings.server.config import Timeouts

ROOT = Path(__file__).resolve().parents[2]

# Characters that must never reach a log line raw: C0 but for the newline that ends
# a record, DEL, C1, and the Unicode line and paragraph separators.
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# Every line the server writes starts like this (tidings.server._logconfig).
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] [A-Z]+ tidings[.a-z]*: ")
# Percent-encoded in the path: LF (with a forged log line after it), CR, ESC and a
# terminal sequence, DEL, C1 NEL as UTF-8, U+2028, a quote and a backslash.
_EVIL_PATH = (
    b"/a%0a2026-01-01%2000:00:00,000%20[1]%20INFO%20tidings.access:%20forged"
    b"%0d%1b[2J%7f%c2%85%e2%80%a8%22%5cz"
)
_EVIL_QUERY = b"q=%0a%1b"


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


# -- L3: request data is escaped where it enters a log line ---------------------------------


def test_access_log_escapes_control_characters_from_the_request(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    args = ["tests.server.apps:hello", "--port", str(port), "--proxy-headers"]
    with tidings_serve(args, log) as popen:
        # HTTP, with a forwarded client address carrying C1 NEL, a quote and a backslash.
        forwarded = b'X-Forwarded-For: 10.0.0.1\x85"\\\r\n'
        response = _exchange(
            port,
            b"GET " + _EVIL_PATH + b"?" + _EVIL_QUERY + b" HTTP/1.1\r\nHost: t\r\n"
            b"Connection: close\r\n" + forwarded + b"\r\n",
        )
        assert response.startswith(b"HTTP/1.1 200")
        # A WebSocket handshake (the app refuses it: 403) is logged too.
        key = base64.b64encode(b"0123456789abcdef")
        response = _exchange(
            port,
            b"GET " + _EVIL_PATH + b"?" + _EVIL_QUERY + b" HTTP/1.1\r\nHost: t\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n",
        )
        assert response.startswith(b"HTTP/1.1 403")
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(15) == 0
    text = log.read_bytes().decode("utf-8")
    lines = text.split("\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert _LOG_LINE.match(line), f"a line the server did not write: {line!r}"
        assert _RAW_CONTROL.search(line) is None, line
    access = [line for line in lines if " tidings.access: " in line]
    assert len(access) == 2, text
    path = (
        r"/a\x0a2026-01-01 00:00:00,000 [1] INFO tidings.access: forged"
        r"\x0d\x1b[2J\x7f\x85\u2028\x22\x5cz?q=%0a%1b"
    )
    assert f'10.0.0.1\\x85\\x22\\x5c:0 - "GET {path} HTTP/1.1" 200 13' in access[0]
    assert f'"WebSocket {path}" 403' in access[1]


async def _ignores_disconnect(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    await asyncio.Event().wait()


async def test_application_close_warning_escapes_the_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "tidings.error")
    timeouts = Timeouts(application_close=0.2)
    async with serve(_ignores_disconnect, timeouts=timeouts, sweep_interval=FAST_SWEEP) as srv:
        _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /x%0aforged%1b[2J HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await wait_for(lambda: bool(srv.server.state and srv.server.state.tasks))
        writer.close()

        def warned() -> bool:
            return any("--application-close-timeout" in r.getMessage() for r in caplog.records)

        await wait_for(warned)
    (message,) = [r.getMessage() for r in caplog.records if "close-timeout" in r.getMessage()]
    assert "application for GET /x\\x0aforged\\x1b[2J still running" in message
    assert _RAW_CONTROL.search(message) is None


async def test_plain_paths_are_logged_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tidings.access")
    async with serve(apps.hello, access_log=True) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /caf%C3%A9/a-b_c.d~e?x=1&y=%20 HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"Hello, world!")
        writer.close()
    (message,) = [r.getMessage() for r in caplog.records if r.name == "tidings.access"]
    assert '"GET /café/a-b_c.d~e?x=1&y=%20 HTTP/1.1" 200 13' in message


async def test_session_ids_are_shortened_in_the_access_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transport session id never appears whole in a log line (HTTP and WebSocket)."""
    caplog.set_level(logging.INFO, "tidings.access")
    sid = "abcdef0123456789.0123456789abcdef.8000"

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close"})  # a denial: 403
            return
        await apps.hello(scope, receive, send)

    async with serve(app, access_log=True) as srv:
        for query in (f"tidings=send&sid={sid}", f"sid={sid}&x=1", "sid=short"):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(f"GET /t?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            await writer.drain()
            await reader.readuntil(b"Hello, world!")
            writer.close()
        response = await exchange(srv.port, _handshake(f"/ws?sid={sid}".encode()))
        status = int(response.split()[1])
    messages = [r.getMessage() for r in caplog.records if r.name == "tidings.access"]
    assert len(messages) == 4, messages
    assert not [m for m in messages if "0123456789" in m]
    assert '"GET /t?tidings=send&sid=abcdef... HTTP/1.1"' in messages[0]
    assert '"GET /t?sid=abcdef...&x=1 HTTP/1.1"' in messages[1]
    assert '"GET /t?sid=short HTTP/1.1"' in messages[2]
    assert f'"WebSocket /ws?sid=abcdef..." {status}' in messages[3]


# -- L5: header fields from the application are checked before they are written ------------


def _app_with_headers(headers: list[tuple[bytes, bytes]]) -> ASGIApp:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello"})

    return app


_BAD_FIELDS = [
    pytest.param([(b"x a", b"1")], "invalid header name", id="space-in-name"),
    pytest.param([(b"", b"1")], "invalid header name", id="empty-name"),
    pytest.param([(b"x:y", b"1")], "invalid header name", id="colon-in-name"),
    pytest.param([(b"x\r\ninjected", b"1")], "invalid header name", id="crlf-in-name"),
    pytest.param([(b"x-v", b"1\r\ninjected: 1")], "CR, LF or NUL", id="crlf-in-value"),
    pytest.param([(b"x-v", b"1\0")], "CR, LF or NUL", id="nul-in-value"),
    pytest.param(
        [(b"content-length", b"5"), (b"content-length", b"6")],
        "conflicting Content-Length",
        id="two-lengths",
    ),
    pytest.param([(b"content-length", b"-1")], "invalid Content-Length", id="negative-length"),
    pytest.param([(b"content-length", b"+5")], "invalid Content-Length", id="signed-length"),
    pytest.param([(b"content-length", b"0_5")], "invalid Content-Length", id="underscore-length"),
]


@pytest.mark.parametrize(("fields", "why"), _BAD_FIELDS)
async def test_a_bad_response_header_is_a_500_and_never_reaches_the_wire(
    fields: list[tuple[bytes, bytes]], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")
    async with serve(_app_with_headers([(b"x-before", b"ok"), *fields])) as srv:
        response = await exchange(srv.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 500 ")
    assert b"injected" not in response and b"x-before" not in response
    assert response.count(b"content-length") == 1 and b"\r\n\r\nInternal Server Error\n" in response
    errors = [r for r in caplog.records if r.name == "tidings.error"]
    assert len(errors) == 1
    assert why in str(errors[0].exc_info[1] if errors[0].exc_info else errors[0].getMessage())


async def test_identical_content_lengths_are_sent_once() -> None:
    fields = [(b"Content-Length", b"5"), (b"content-length", b"5")]
    async with serve(_app_with_headers(fields)) as srv:
        response = await exchange(
            srv.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.lower().count(b"content-length") == 1
    assert response.endswith(b"\r\n\r\nhello")


async def test_a_bad_trailer_name_never_reaches_the_wire(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"hello"})
        await send({"type": "http.response.trailers", "headers": [(b"x a", b"1")]})

    async with serve(app) as srv:
        response = await exchange(srv.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"x a" not in response
    assert response.endswith(b"5\r\nhello\r\n0\r\n\r\n")  # the chunked body still ends
    assert len([r for r in caplog.records if r.name == "tidings.error"]) == 1


def _handshake(path: bytes = b"/") -> bytes:
    key = base64.b64encode(b"0123456789abcdef")
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )


@pytest.mark.parametrize(("fields", "why"), _BAD_FIELDS)
async def test_a_bad_websocket_accept_header_is_a_500(
    fields: list[tuple[bytes, bytes]], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "headers": [(b"x-before", b"ok"), *fields]})

    async with serve(app) as srv:
        response = await exchange(srv.port, _handshake())
    assert response.startswith(b"HTTP/1.1 500 ")
    assert b"injected" not in response and b"x-before" not in response
    errors = [r for r in caplog.records if r.name == "tidings.error"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and why in str(errors[0].exc_info[1])


@pytest.mark.parametrize(("fields", "why"), _BAD_FIELDS)
async def test_a_bad_websocket_denial_header_is_a_500(
    fields: list[tuple[bytes, bytes]], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        assert (await receive())["type"] == "websocket.connect"
        headers = [(b"x-before", b"ok"), *fields]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b"hello"})

    async with serve(app) as srv:
        response = await exchange(srv.port, _handshake())
    assert response.startswith(b"HTTP/1.1 500 ")
    assert b"injected" not in response and b"x-before" not in response
    errors = [r for r in caplog.records if r.name == "tidings.error"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and why in str(errors[0].exc_info[1])


async def test_identical_content_lengths_of_a_websocket_denial_are_sent_once() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        assert (await receive())["type"] == "websocket.connect"
        headers = [(b"content-length", b"5"), (b"Content-Length", b"5")]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b"hello"})

    async with serve(app) as srv:
        response = await exchange(srv.port, _handshake())
    assert response.startswith(b"HTTP/1.1 401 ")
    assert response.lower().count(b"content-length") == 1
    assert response.endswith(b"\r\n\r\nhello")


# -- L2: graceful shutdown ends event streams and held polls at once ------------------------

_ROOM = "/ws/echo/lobby/"


def _transport_env(tmp_path: Path) -> dict[str, str]:
    env = server_env()
    # The transport tests' project on the in-memory layer: sessions live in this process.
    env["DJANGO_SETTINGS_MODULE"] = "tests.django_settings"
    env["TIDINGS_TEST_DB"] = str(tmp_path / "db.sqlite3")
    return env


def _start_transport_server(port: int, tmp_path: Path, out: IO[bytes]) -> subprocess.Popen[bytes]:
    app = "tests.transports.project.asgi:application"
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", app, "--port", str(port)],
        cwd=ROOT,
        env=_transport_env(tmp_path),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


async def test_sigterm_ends_sse_streams_and_held_polls_with_the_close_event(
    tmp_path: Path,
) -> None:
    port = free_port()
    at = Endpoint(port)
    origin = {"origin": at.origin}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        # The default --graceful-timeout (30 s): the streams must not wait it out.
        popen = _start_transport_server(port, tmp_path, out)
        try:
            deadline = time.monotonic() + 20
            while "Tidings serving on" not in log.read_text(errors="replace"):
                assert popen.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
            async with (
                httpx.AsyncClient(timeout=10) as client,
                sse(client, at.url(_ROOM, tidings="sse"), origin) as stream,
            ):
                opened = await stream.next()
                assert opened["type"] == "open"
                # A second session, and a poll of it that the server holds.
                first = await poll(client, at.url(_ROOM, tidings="poll"), headers=origin)
                url = at.url(_ROOM, tidings="poll", sid=first[0]["sid"], last=0)
                held = asyncio.ensure_future(poll(client, url, headers=origin))
                await asyncio.sleep(0.3)  # let the poll reach the server and wait
                assert not held.done()
                signalled = time.monotonic()
                popen.send_signal(signal.SIGTERM)
                closed = await stream.next(timeout=5)
                assert closed["type"] == "close" and closed["code"] == 1001, closed
                assert await stream.ended(timeout=5)
                answer = await asyncio.wait_for(held, 5)
                assert [e["type"] for e in answer] == ["open", "close"], answer
                assert answer[1]["code"] == 1001
            while popen.poll() is None:
                assert time.monotonic() - signalled < 4, "still running 4 s after SIGTERM"
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - signalled
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
    output = log.read_text(errors="replace")
    assert popen.returncode == 0, output
    assert elapsed < 2.0, (elapsed, output)
    assert "Traceback" not in output and "still open; closing them" not in output, output


async def test_a_connection_accepted_during_shutdown_is_refused_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tidings.error")
    release = asyncio.Event()

    async def slow(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    async with serve(slow) as srv:
        state = srv.server.state
        assert state is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # in flight: holds the shutdown
        await wait_for(lambda: bool(state.tasks))
        srv.server.request_stop()
        await wait_for(lambda: state.closing)
        # A connection the listener had accepted just before it closed reaches the
        # protocol now (driven through a socket pair: the listening socket is closed).
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: HttpProtocol(state), ours)
        theirs.settimeout(5)
        response = b""
        while chunk := await loop.run_in_executor(None, theirs.recv, 4096):
            response += chunk
        theirs.close()
        release.set()
        assert (await reader.read()).startswith(b"HTTP/1.1 204")
        writer.close()
    assert response.startswith(b"HTTP/1.1 503 ")
    assert response.endswith(b"\r\n\r\nServer shutting down\n")
    messages = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert messages == ["connection refused: the server is shutting down"]


async def test_http_scopes_carry_the_shutdown_extension() -> None:
    seen: list[object] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        event = scope["extensions"]["tidings.shutdown"]["event"]
        seen.append(event.is_set())
        await send({"type": "http.response.start", "status": 200, "more_body": True})
        await event.wait()  # a stream that ends when the server shuts down
        await send({"type": "http.response.body", "body": b"bye"})

    async with serve(app) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await wait_for(lambda: bool(seen))
        started = time.monotonic()
        srv.server.request_stop()
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.wait_for(srv.task, 5)
        assert time.monotonic() - started < 2
    assert seen == [False]
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"bye")
