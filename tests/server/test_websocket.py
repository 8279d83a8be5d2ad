"""The asyncio WebSocket transport: real sockets on 127.0.0.1, the ``websockets`` client
for well-behaved peers and raw sockets for malformed or misbehaving ones."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import gc
import logging
import os
import shutil
import ssl
import struct
import subprocess
import tracemalloc
import weakref
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tidings._types import WEBSOCKET_DIRECT, ASGIReceive, ASGISend, Message, Scope
from tidings.server._http11 import ClientDisconnected
from tidings.server._websocket import WebSocketProtocol
from tidings.server.config import Timeouts
from tidings.wire import apply_mask

from ._helpers import FAST_SWEEP, Running, exchange, serve, wait_for

App = Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]]

# --- apps --------------------------------------------------------------------------------


async def echo(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


class Recorder:
    """An app that accepts, records everything it receives, and exposes what happened."""

    def __init__(self, *, accept: dict[str, Any] | None = None) -> None:
        self.accept = accept or {"type": "websocket.accept"}
        self.scope: Scope | None = None
        self.messages: list[Message] = []
        self.done = asyncio.Event()
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self.scope = scope
        try:
            assert (await receive())["type"] == "websocket.connect"
            await send(self.accept)
            while True:
                message = await receive()
                self.messages.append(message)
                if message["type"] == "websocket.disconnect":
                    return
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()

    async def disconnect(self) -> Message:
        await asyncio.wait_for(self.done.wait(), 10)
        assert self.messages and self.messages[-1]["type"] == "websocket.disconnect"
        return self.messages[-1]


def ws_url(srv: Running, path: str = "/") -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"


def ws_protocols(srv: Running) -> list[WebSocketProtocol]:
    assert srv.server.state is not None
    return [c for c in srv.server.state.connections if isinstance(c, WebSocketProtocol)]


# --- a raw client ------------------------------------------------------------------------

KEY = base64.b64encode(b"0123456789abcdef")


def upgrade_request(path: str = "/", *, extra: bytes = b"", version: bytes = b"13") -> bytes:
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n"
    )


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head.append(bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + apply_mask(payload, key)


async def read_frame(reader: asyncio.StreamReader, timeout: float = 10.0) -> tuple[int, bytes]:
    async def read() -> tuple[int, bytes]:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        return b0 & 0x0F, await reader.readexactly(n)

    return await asyncio.wait_for(read(), timeout)


async def raw_connect(
    srv: Running, path: str = "/", **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, **kwargs)
    writer.write(upgrade_request(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


async def raw_exchange(srv: Running, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def close_code(payload: bytes) -> int:
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


# --- handshake ---------------------------------------------------------------------------


async def test_echo_text_and_bytes() -> None:
    async with serve(echo) as srv, connect(ws_url(srv)) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        big = "x" * 200_000
        await ws.send(big)
        assert await ws.recv() == big


async def test_scope() -> None:
    app = Recorder()
    async with serve(app) as srv:
        async with connect(ws_url(srv, "/chat/r%C3%A9?x=1"), subprotocols=["one", "two"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol is None
        await app.disconnect()
    scope = app.scope
    assert scope is not None
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["scheme"] == "ws"
    assert scope["http_version"] == "1.1"
    assert scope["path"] == "/chat/ré"
    assert scope["raw_path"] == b"/chat/r%C3%A9"
    assert scope["query_string"] == b"x=1"
    assert scope["root_path"] == ""
    assert scope["subprotocols"] == ["one", "two"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", srv.port)
    assert "websocket.http.response" in scope["extensions"]
    assert "method" not in scope
    assert (b"upgrade", b"websocket") in scope["headers"]
    assert isinstance(scope["state"], dict)


async def test_subprotocol_and_accept_headers() -> None:
    app = Recorder(
        accept={
            "type": "websocket.accept",
            "subprotocol": "two",
            "headers": [(b"x-custom", b"yes"), (b"set-cookie", b"a=b")],
        }
    )
    async with (
        serve(app) as srv,
        connect(ws_url(srv), subprotocols=["one", "two"]) as ws,  # type: ignore[list-item]
    ):
        assert ws.subprotocol == "two"
        assert ws.response is not None
        assert ws.response.headers["x-custom"] == "yes"
        assert ws.response.headers["set-cookie"] == "a=b"


async def test_close_before_accept_is_403() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.close"})
        # After the refusal: the connection is over for the app.
        assert (await receive())["type"] == "websocket.disconnect"
        with pytest.raises(ClientDisconnected):
            await send({"type": "websocket.send", "text": "no"})

    async with serve(app) as srv:
        response = await raw_exchange(srv, upgrade_request())
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    assert b"content-length: 0" in head.lower()
    assert body == b""


@pytest.mark.parametrize(
    ("raises", "status"), [(False, b"403"), (True, b"500")], ids=["returns", "raises"]
)
async def test_app_ending_before_accept(
    raises: bool, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        if raises:
            raise ValueError("boom")

    async with serve(app) as srv:
        response = await raw_exchange(srv, upgrade_request())
    assert response.startswith(b"HTTP/1.1 " + status + b" ")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == (1 if raises else 0)


async def test_denial_response_extension() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        status = 401 if scope["path"] == "/one" else 429
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"www-authenticate", b"Bearer"), (b"connection", b"keep-alive")],
            }
        )
        if scope["path"] == "/one":
            await send({"type": "websocket.http.response.body", "body": b"who are you?"})
        else:
            await send(
                {"type": "websocket.http.response.body", "body": b"slow ", "more_body": True}
            )
            await send({"type": "websocket.http.response.body", "body": b"down"})

    async with serve(app) as srv:
        one = await raw_exchange(srv, upgrade_request("/one"))
        two = await raw_exchange(srv, upgrade_request("/two"))
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(srv, "/one")):
                pass
    head, _, body = one.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"www-authenticate: Bearer" in head
    assert b"content-length: 12" in head
    assert b"connection: close" in head
    assert b"keep-alive" not in head
    assert body == b"who are you?"
    head, _, body = two.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 ")
    assert b"transfer-encoding: chunked" in head
    assert body == b"5\r\nslow \r\n4\r\ndown\r\n0\r\n\r\n"
    assert info.value.response.status_code == 401
    assert info.value.response.body == b"who are you?"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (upgrade_request(version=b"8"), b"426"),
        (upgrade_request().replace(KEY, b"not-a-key"), b"400"),
        (upgrade_request().replace(b"GET", b"POST", 1), b"405"),
    ],
    ids=["version-8", "bad-key", "post"],
)
async def test_bad_handshake(
    request_bytes: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tidings.error")
    app = Recorder()
    async with serve(app) as srv:
        response = await raw_exchange(srv, request_bytes)
    assert response.startswith(b"HTTP/1.1 " + status + b" ")
    if status == b"426":
        assert b"sec-websocket-version: 13" in response.lower()
    assert app.scope is None  # the app never ran
    records = [r for r in caplog.records if "handshake refused" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is None


async def test_invalid_accept_is_500(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")
    app = Recorder(accept={"type": "websocket.accept", "subprotocol": "never-offered"})
    async with serve(app) as srv:
        response = await raw_exchange(srv, upgrade_request())
    assert response.startswith(b"HTTP/1.1 500 ")
    assert isinstance(app.error, RuntimeError)


async def test_handshake_timeout_is_503(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tidings.error")
    release = asyncio.Event()
    seen: list[Message] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await release.wait()
        seen.append(await receive())

    from tidings.server.config import WebSocketSettings

    settings = WebSocketSettings(handshake_timeout=0.2)
    async with serve(app, websocket=settings, sweep_interval=FAST_SWEEP) as srv:
        response = await raw_exchange(srv, upgrade_request())
        release.set()
        await wait_for(lambda: bool(seen))
    assert response.startswith(b"HTTP/1.1 503 ")
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    assert any("--ws-handshake-timeout" in r.getMessage() for r in caplog.records)


async def test_frames_sent_before_accept_are_kept() -> None:
    app = Recorder()
    async with serve(app) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(upgrade_request() + client_frame(0x1, b"early"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await wait_for(lambda: len(app.messages) == 1)
        writer.write(client_frame(0x8, struct.pack("!H", 1000)))
        assert await read_frame(reader) == (0x8, struct.pack("!H", 1000))
        writer.close()
        await app.disconnect()
    assert app.messages[0] == {"type": "websocket.receive", "text": "early"}


async def test_reading_pauses_on_early_data_until_accept() -> None:
    accept = asyncio.Event()
    received: list[Message] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await accept.wait()
        await send({"type": "websocket.accept"})
        while len(received) < 40:
            received.append(await receive())

    async with serve(app) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        frames = b"".join(client_frame(0x2, bytes([i]) * 4096) for i in range(40))
        writer.write(upgrade_request() + frames)  # 160 KiB before the app answered
        await wait_for(lambda: bool(ws_protocols(srv)) and ws_protocols(srv)[0]._read_paused)
        accept.set()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await wait_for(lambda: len(received) == 40)
        writer.close()
    assert [m["bytes"][:1] for m in received] == [bytes([i]) for i in range(40)]


async def test_concurrent_receive_is_an_error() -> None:
    errors: list[BaseException] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        first = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # let it start waiting
        try:
            await receive()
        except RuntimeError as exc:
            errors.append(exc)
        assert (await first)["type"] == "websocket.receive"

    async with serve(app) as srv, connect(ws_url(srv)) as ws:
        await ws.send("x")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert len(errors) == 1


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=t"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_wss_scheme_over_tls(tls_cert: tuple[Path, Path]) -> None:
    cert, key = tls_cert
    app = Recorder()
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    async with (
        serve(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as srv,
        connect(f"wss://127.0.0.1:{srv.port}/", ssl=ctx) as ws,
    ):
        await ws.send("secret")
        await wait_for(lambda: len(app.messages) == 1)
    assert app.scope is not None
    assert app.scope["scheme"] == "wss"
    assert app.messages[0] == {"type": "websocket.receive", "text": "secret"}


# --- messages and closing ----------------------------------------------------------------


async def test_client_close_code_and_reason_reach_the_app() -> None:
    app = Recorder()
    async with serve(app) as srv:
        async with connect(ws_url(srv)) as ws:
            await ws.send("one")
            await ws.close(4000, "bye now")
        disconnect = await app.disconnect()
    assert app.messages[0] == {"type": "websocket.receive", "text": "one"}
    assert disconnect == {"type": "websocket.disconnect", "code": 4000, "reason": "bye now"}


@pytest.mark.parametrize("how", ["reset", "half-close"])
async def test_connection_lost_is_1006(how: str) -> None:
    app = Recorder()
    async with serve(app) as srv:
        _reader, writer, head = await raw_connect(srv)
        assert head.startswith(b"HTTP/1.1 101 ")
        if how == "reset":
            writer.transport.abort()
        else:
            writer.write_eof()
        assert (await app.disconnect())["code"] == 1006
        writer.close()


async def test_app_close_with_code_and_reason() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "done"})
        await send({"type": "websocket.close"})  # twice is harmless
        with pytest.raises(ClientDisconnected):
            await send({"type": "websocket.send", "text": "too late"})
        message = await receive()
        assert message["type"] == "websocket.disconnect"
        assert message["code"] == 4001  # the client's echo

    async with serve(app) as srv, connect(ws_url(srv)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "done")


async def test_app_returning_closes_with_1000() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})

    async with serve(app) as srv, connect(ws_url(srv)) as ws:
        assert await ws.recv() == "bye"
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1000


async def test_cancelled_app_closes_with_1001() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.Event().wait()  # until cancelled

    async with serve(app) as srv, connect(ws_url(srv)) as ws:
        [protocol] = ws_protocols(srv)
        assert protocol.task is not None
        protocol.task.cancel()
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001


async def test_app_ignoring_the_disconnect_is_cancelled_after_application_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app still running ``application_close`` s after the closing handshake (it was
    sent ``websocket.disconnect``) is cancelled, with one warning and no error."""
    caplog.set_level(logging.WARNING, "tidings.error")
    loop = asyncio.get_running_loop()
    disconnects: list[Message] = []
    cancelled_at: list[float] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        disconnects.append(await receive())
        try:
            await asyncio.sleep(3600)  # ignores the disconnect: a leak without the timeout
        except asyncio.CancelledError:
            cancelled_at.append(loop.time())
            raise

    timeouts = Timeouts(application_close=0.3)
    async with serve(app, timeouts=timeouts, sweep_interval=FAST_SWEEP) as srv:
        async with connect(ws_url(srv, "/live?room=1")) as ws:
            closed_at = loop.time()
            await ws.close(1000)
        await wait_for(lambda: bool(cancelled_at), 5)
    assert disconnects == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]
    # Not before the timeout; at most one sweep interval (1 s) after it, plus slack.
    assert 0.3 <= cancelled_at[0] - closed_at < 2.5
    warnings = [r.getMessage() for r in caplog.records if "connection closed" in r.getMessage()]
    assert warnings == [
        "application for WebSocket /live still running 0.3 s after its connection closed; "
        "cancelled (--application-close-timeout)"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tidings.access")
    async with serve(echo, access_log=True) as srv:
        async with connect(ws_url(srv, "/live?room=1")):
            pass
        await raw_exchange(srv, upgrade_request("/old", version=b"8"))
    lines = [r.getMessage() for r in caplog.records if r.name == "tidings.access"]
    assert len(lines) == 2
    assert lines[0].endswith('"WebSocket /live?room=1" 101')
    assert lines[1].endswith('"WebSocket /old" 426')


async def test_app_exception_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "tidings.error")

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise ValueError("kaboom")

    async with serve(app) as srv, connect(ws_url(srv)) as ws:
        await ws.send("go")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_send_after_client_left_raises_client_disconnected() -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            raised.append(exc)
        # receive() keeps answering with the disconnect.
        assert (await receive())["type"] == "websocket.disconnect"

    async with serve(app) as srv:
        async with connect(ws_url(srv)):
            pass
        await wait_for(lambda: bool(raised))
    assert isinstance(raised[0], ClientDisconnected)


async def test_protocol_error_closes_with_its_code() -> None:
    app = Recorder()
    async with serve(app) as srv:
        reader, writer, _ = await raw_connect(srv)
        writer.write(client_frame(0x1, b"unmasked", mask=False))
        opcode, payload = await read_frame(reader)
        assert (opcode, close_code(payload)) == (0x8, 1002)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closes TCP
        writer.close()
        assert (await app.disconnect())["code"] == 1002


async def test_messages_before_a_protocol_error_are_answered_first() -> None:
    async with serve(echo) as srv:
        reader, writer, _ = await raw_connect(srv)
        # A message, then a frame with RSV2 set, in one write: the echo comes before
        # the close frame (Autobahn 3.2 strict).
        writer.write(client_frame(0x1, b"first") + bytes((0xA1, 0x80)) + os.urandom(4))
        assert await read_frame(reader) == (0x1, b"first")
        opcode, payload = await read_frame(reader)
        assert (opcode, close_code(payload)) == (0x8, 1002)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_held_protocol_error_is_sent_when_the_app_is_slow() -> None:
    got: list[Message] = []
    release = asyncio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        await release.wait()  # never answers in time
        got.append(await receive())

    async with serve(app) as srv:
        reader, writer, _ = await raw_connect(srv)
        writer.write(client_frame(0x2, b"data") + client_frame(0x1, b"\xff"))
        await wait_for(lambda: len(got) == 1)
        srv.sweep(later=1.5)  # the app has not asked for the next message for over 1 s
        opcode, payload = await read_frame(reader)
        assert (opcode, close_code(payload)) == (0x8, 1007)
        release.set()
        await wait_for(lambda: len(got) == 2)
        writer.close()
    assert got == [
        {"type": "websocket.receive", "bytes": b"data"},
        {"type": "websocket.disconnect", "code": 1007, "reason": ""},
    ]


async def test_message_too_big_is_1009() -> None:
    from tidings.server.config import WebSocketSettings

    app = Recorder()
    settings = WebSocketSettings(max_message_size=1024)
    async with serve(app, websocket=settings) as srv:
        async with connect(ws_url(srv), compression=None) as ws:
            await ws.send("x" * 1024)  # at the limit: fine
            await ws.send("x" * 1025)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
        assert (await app.disconnect())["code"] == 1009
    assert app.messages[0] == {"type": "websocket.receive", "text": "x" * 1024}


async def test_deflate_bomb_is_1009() -> None:
    from tidings.server.config import WebSocketSettings

    app = Recorder()
    settings = WebSocketSettings(max_message_size=64 * 1024)
    async with serve(app, websocket=settings) as srv:
        async with connect(ws_url(srv)) as ws:  # permessage-deflate by default
            bomb = b"\0" * (8 * 1024 * 1024)
            assert len(zlib.compress(bomb)) < 64 * 1024  # small on the wire
            await ws.send(bomb)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
        assert (await app.disconnect())["code"] == 1009


async def test_deflate_negotiated_and_round_trips() -> None:
    async with serve(echo) as srv:
        async with connect(ws_url(srv)) as ws:
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
            text = "tidings " * 5000
            await ws.send(text)
            assert await ws.recv() == text
            await ws.send(os.urandom(3000))
            assert len(await ws.recv()) == 3000
        from tidings.server.config import WebSocketSettings

    async with (
        serve(echo, websocket=WebSocketSettings(per_message_deflate=False)) as srv,
        connect(ws_url(srv)) as ws,
    ):
        assert ws.response is not None
        assert "sec-websocket-extensions" not in ws.response.headers
        await ws.send("plain")
        assert await ws.recv() == "plain"


async def test_extensions_of_the_scope() -> None:
    """ASGI's denial responses and Tidings' direct delivery; no other extension, no
    top-level scope key, and only for WebSocket scopes."""
    seen: dict[str, Scope] = {}
    results: list[object] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        seen[scope["type"]] = scope
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        direct = scope["extensions"][WEBSOCKET_DIRECT]
        results.append(direct["send_nowait"]({"type": "websocket.send", "text": "direct"}))
        # The former tidings.websocket.send_frames extension is gone: an unknown message.
        with pytest.raises(RuntimeError):
            await send({"type": "tidings.websocket.send_frames", "frames": b""})
        await send({"type": "websocket.send", "text": "after"})
        await receive()

    async with serve(app) as srv:
        async with connect(ws_url(srv)) as ws:
            assert await ws.recv() == "direct"
            assert await ws.recv() == "after"
        response = await exchange(
            srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert response.endswith(b"ok")
    assert results == [True]
    websocket = seen["websocket"]
    assert set(websocket["extensions"]) == {"websocket.http.response", WEBSOCKET_DIRECT}
    assert list(websocket["extensions"][WEBSOCKET_DIRECT]) == ["send_nowait"]
    assert not [key for key in websocket if key.startswith("tidings")]
    http = seen["http"]
    assert WEBSOCKET_DIRECT not in http.get("extensions", {})
    assert not [key for key in http if key.startswith("tidings")]


async def test_invalid_messages_raise_runtime_error() -> None:
    errors: list[str] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        bad: Message
        for bad in (
            {"type": "websocket.send", "text": "before accept"},
            {"type": "websocket.http.response.body", "body": b""},
        ):
            with pytest.raises(RuntimeError) as info:
                await send(bad)
            errors.append(str(info.value))
        await send({"type": "websocket.accept"})
        for bad in (
            {"type": "websocket.accept"},
            {"type": "websocket.send"},
            {"type": "websocket.close", "code": 1005},
        ):
            with pytest.raises(RuntimeError) as info:
                await send(bad)
            errors.append(str(info.value))
        await send({"type": "websocket.close"})

    async with serve(app) as srv, connect(ws_url(srv)) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert len(errors) == 5


# --- keepalive ---------------------------------------------------------------------------


async def test_ping_timeout_closes_with_1011() -> None:
    from tidings.server.config import WebSocketSettings

    app = Recorder()
    settings = WebSocketSettings(ping_interval=0.2, ping_timeout=0.2)
    async with serve(app, websocket=settings, sweep_interval=FAST_SWEEP) as srv:
        # A raw client that reads frames but never answers pings.
        reader, writer, _ = await raw_connect(srv)
        opcode, payload = await read_frame(reader)
        assert opcode == 0x9  # the keepalive ping
        opcode, payload = await read_frame(reader)
        assert (opcode, close_code(payload)) == (0x8, 1011)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert (await app.disconnect())["code"] == 1011


async def test_answered_pings_keep_the_connection() -> None:
    from tidings.server.config import WebSocketSettings

    settings = WebSocketSettings(ping_interval=0.2, ping_timeout=1.0)
    async with serve(echo, websocket=settings, sweep_interval=FAST_SWEEP) as srv:
        reader, writer, _ = await raw_connect(srv)
        for _ in range(2):
            opcode, payload = await read_frame(reader)
            assert opcode == 0x9
            writer.write(client_frame(0xA, payload))
        writer.write(client_frame(0x1, b"still here"))
        assert await read_frame(reader) == (0x1, b"still here")
        writer.close()


# --- flow control ------------------------------------------------------------------------


async def test_reading_pauses_at_max_queue() -> None:
    from tidings.server.config import WebSocketSettings

    release = asyncio.Event()
    received: list[str] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            received.append(message["text"][:8])

    async with (
        serve(app, websocket=WebSocketSettings(max_queue=4)) as srv,
        connect(ws_url(srv), compression=None) as ws,
    ):
        for i in range(300):
            await ws.send(f"{i:08}".ljust(4096, "."))
        [protocol] = ws_protocols(srv)
        await wait_for(lambda: protocol._read_paused)
        # At most max_queue plus what one read (256 KiB) held, not all 300.
        assert len(protocol._queue) <= 4 + 256 // 4 + 1
        release.set()
        await wait_for(lambda: len(received) == 300)
        assert not protocol._read_paused
    assert received == [f"{i:08}" for i in range(300)]


async def test_send_waits_for_a_client_that_stops_reading() -> None:
    sent = 0
    blob = b"x" * 65536

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        nonlocal sent
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(400):
            await send({"type": "websocket.send", "bytes": blob})
            sent += 1

    async with serve(app) as srv:
        reader, writer, _ = await raw_connect(srv, limit=1 << 20)
        [protocol] = ws_protocols(srv)
        # The client reads nothing: send() ends up waiting on the transport.
        await wait_for(lambda: bool(protocol._drain_waiters))
        buffered = protocol.transport.get_write_buffer_size()
        assert buffered <= 64 * 1024 + len(blob) + 16  # the high-water mark + one message
        assert sent < 400
        # Reading again releases the sender.
        for _ in range(400):
            opcode, payload = await read_frame(reader)
            assert (opcode, len(payload)) == (0x2, len(blob))
        assert sent == 400
        writer.close()


async def test_overflowing_send_buffer_closes_with_1008(caplog: pytest.LogCaptureFixture) -> None:
    from tidings.server.config import WebSocketSettings

    caplog.set_level(logging.WARNING, "tidings.error")
    outcome: list[Any] = []
    blob = b"y" * 16384
    peak = 0

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        [protocol] = ws_protocols(srv)

        async def sender() -> None:
            nonlocal peak
            for _ in range(100):
                await send({"type": "websocket.send", "bytes": blob})
                peak = max(peak, protocol.transport.get_write_buffer_size())

        # Many concurrent senders (as a busy group fan-out would be) pile bytes up.
        results = await asyncio.gather(*(sender() for _ in range(64)), return_exceptions=True)
        outcome.append({type(r) for r in results})
        outcome.append(await receive())
        outcome.append(protocol.transport.is_closing())

    settings = WebSocketSettings(max_send_buffer=256 * 1024)
    async with serve(app, websocket=settings) as srv:
        _reader, writer, _ = await raw_connect(srv)  # and never read
        await wait_for(lambda: len(outcome) == 3)
        await wait_for(lambda: srv.connections == 0)
        writer.close()
    failures, disconnect, closing = outcome
    # Senders that ran while the kernel still took bytes finished; the rest were cut off.
    assert ClientDisconnected in failures
    assert failures <= {ClientDisconnected, type(None)}
    assert disconnect == {
        "type": "websocket.disconnect",
        "code": 1008,
        "reason": "send buffer full",
    }
    assert closing
    # Memory stayed bounded: never past the limit plus one message.
    assert 0 < peak <= 256 * 1024 + len(blob) + 16
    records = [r for r in caplog.records if "not reading" in r.getMessage()]
    assert len(records) == 1


# --- shutdown ----------------------------------------------------------------------------


async def test_graceful_shutdown_refuses_pending_handshakes() -> None:
    started = asyncio.Event()
    seen: list[Message] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        started.set()
        seen.append(await receive())

    async with serve(app) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(upgrade_request())
        await asyncio.wait_for(started.wait(), 10)
        srv.server.request_stop()
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert await asyncio.wait_for(srv.task, 10) == 0
    assert response.startswith(b"HTTP/1.1 503 ")
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


async def test_graceful_timeout_aborts_clients_that_do_not_close() -> None:
    from tidings.server.config import Timeouts

    app = Recorder()
    async with serve(app, timeouts=Timeouts(graceful=0.2)) as srv:
        reader, writer, _ = await raw_connect(srv)
        srv.server.request_stop()
        opcode, payload = await read_frame(reader)
        assert (opcode, close_code(payload)) == (0x8, 1001)
        # This client never answers the close frame: cut off after the graceful timeout.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert await asyncio.wait_for(srv.task, 10) == 0
        writer.close()
    await asyncio.wait_for(app.done.wait(), 10)  # its task was cancelled


async def test_graceful_shutdown_closes_with_1001() -> None:
    app = Recorder()
    async with serve(app) as srv:
        async with connect(ws_url(srv)) as ws:
            await ws.send("hi")
            await wait_for(lambda: len(app.messages) == 1)
            srv.server.request_stop()
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
        assert (await app.disconnect())["code"] == 1001
        assert await asyncio.wait_for(srv.task, 10) == 0
    assert srv.connections == 0


async def test_many_connections_echo_concurrently() -> None:
    async def client(srv: Running, i: int) -> None:
        ws: ClientConnection
        async with connect(ws_url(srv), compression=None) as ws:
            for j in range(20):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"

    async with serve(echo) as srv:
        await asyncio.wait_for(asyncio.gather(*(client(srv, i) for i in range(20))), 30)
        await wait_for(lambda: srv.connections == 0)


# --- what one connection holds (issue 18: memory per idle connection) --------------------


async def test_the_upgraded_http_protocol_is_freed_without_the_collector() -> None:
    """The HTTP/1.1 protocol (its parser, its header list) goes at once, not at a gc pass."""
    freed: list[weakref.ref[Any]] = []
    gc.disable()
    try:
        async with serve(echo) as srv:
            state = srv.server.state
            assert state is not None and state.websocket_upgrade is not None
            upgrade = state.websocket_upgrade

            def watching(http: Any, scope: dict[str, Any], trailing: bytes) -> None:
                freed.append(weakref.ref(http))
                upgrade(http, scope, trailing)

            state.websocket_upgrade = watching
            for protocol in list(state.connections):  # none yet: the hook is read per connection
                protocol.upgrade_handler = watching  # type: ignore[attr-defined]
            async with connect(ws_url(srv), compression=None) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                assert len(freed) == 1
                assert freed[0]() is None
    finally:
        gc.enable()


async def test_the_scope_and_its_extensions_are_key_sharing_dicts() -> None:
    app = Recorder()
    async with serve(app) as srv, connect(ws_url(srv)) as ws:
        await ws.send("x")
        await wait_for(lambda: len(app.messages) == 1)
        scope = app.scope
        assert scope is not None
        extensions = scope["extensions"]
        direct = extensions[WEBSOCKET_DIRECT]
        for shared in (scope, extensions, direct):
            assert type(shared) is dict  # (their memory: test_ws_handshake.py)
        assert list(scope) == [
            "type", "asgi", "http_version", "scheme", "path", "raw_path", "query_string",
            "root_path", "headers", "client", "server", "subprotocols", "state", "extensions",
        ]  # fmt: skip
        assert list(extensions) == ["websocket.http.response", WEBSOCKET_DIRECT]
        assert list(direct) == ["send_nowait"]
        # The app may use them as any dict: a key it adds is kept.
        scope["user"] = "alice"
        extensions["mine"] = {}
        assert scope["user"] == "alice" and "mine" in extensions
        assert direct["send_nowait"]({"type": "websocket.send", "text": "direct"}) is True
        assert await ws.recv() == "direct"


_current: contextvars.ContextVar[str] = contextvars.ContextVar("_current", default="unset")


async def test_an_app_whose_call_runs_code_runs_it_in_its_own_task() -> None:
    """Only an ``async def`` call is made outside the task; other code runs inside it."""
    seen: list[asyncio.Task[Any] | None] = []

    class Plain:
        def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> Any:
            seen.append(asyncio.current_task())
            _current.set("set by the app")
            return echo(scope, receive, send)

    async with serve(Plain()) as srv, connect(ws_url(srv)) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0] is not asyncio.current_task()
    assert _current.get() == "unset"  # the app's context is its task's, not ours


async def test_an_app_that_is_an_async_function_keeps_no_wrapper_frame() -> None:
    async with serve(echo) as srv, connect(ws_url(srv)) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        (protocol,) = ws_protocols(srv)
        assert protocol.task is not None
        coro = protocol.task.get_coro()
        assert getattr(coro, "__qualname__", "") == "echo"  # the app's own coroutine


async def test_an_idle_connection_holds_no_per_connection_buffers() -> None:
    async with serve(echo) as srv, connect(ws_url(srv), compression=None) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        (protocol,) = ws_protocols(srv)
        conn = protocol._conn
        assert conn is not None
        assert (conn._parser, conn._events, conn._out, conn._frag_buffer) == (None,) * 4
        assert protocol._early is None and protocol._queue is None
        assert protocol._drain_waiters == [] and not hasattr(protocol, "__dict__")


async def test_memory_of_idle_connections_is_bounded() -> None:
    """What Tidings' own code allocates per idle WebSocket stays under a bound.

    Counted with tracemalloc: allocations made with a frame of ``tidings/`` on the
    stack (the client's side, in this process too, is not), per connection, growing
    from 20 to 120 open connections. The bound is a tenth over today's figure (2,655
    bytes on CPython 3.11), so a frame or a few objects added per connection fail it.
    (``benchmarks/scale.py`` measures the whole process's RSS.)
    """
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]] = []
    async with serve(echo) as srv:
        try:

            async def open_more(n: int) -> None:
                for _ in range(n):
                    reader, writer, head = await raw_connect(srv)
                    assert head.startswith(b"HTTP/1.1 101 ")
                    conns.append((reader, writer, head))
                await wait_for(lambda: len(ws_protocols(srv)) == len(conns))

            await open_more(20)
            gc.collect()
            tracemalloc.start(25)
            try:
                before = _tidings_bytes(tracemalloc.take_snapshot())
                await open_more(100)
                gc.collect()
                after = _tidings_bytes(tracemalloc.take_snapshot())
            finally:
                tracemalloc.stop()
            per_connection = (after - before) / 100
            assert per_connection < _IDLE_CONNECTION_BYTES, per_connection
        finally:
            for _, writer, _ in conns:
                writer.close()


#: Bytes allocated by tidings code per idle WebSocket (see the test above).
_IDLE_CONNECTION_BYTES = 2920


def _tidings_bytes(snapshot: tracemalloc.Snapshot) -> int:
    pattern = str(Path(__file__).resolve().parents[2] / "tidings" / "*")
    ours = snapshot.filter_traces([tracemalloc.Filter(True, pattern, all_frames=True)])
    return sum(stat.size for stat in ours.statistics("filename"))
