"""HTTP/2 in the server: h2c, ALPN over TLS, streams, flow control, trailers, shutdown.

Clients: the ``h2`` library driven over a real socket (``H2Client``, also used by the
attack tests in ``tests/security/test_h2_*``), ``httpx`` with HTTP/2, and ``curl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.events as ev
import hpack
import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.server._helpers import Running, exchange, serve
from tidings._types import ASGIReceive as Receive
from tidings._types import ASGISend as Send
from tidings._types import Message
from tidings.server._http2 import H2Protocol
from tidings.server._options import OPTIONS
from tidings.server.config import Config, ConfigError, Limits, Timeouts
from tidings.wire.http2 import PREFACE

# -- a client: h2 over a real socket --------------------------------------------------------


@dataclass
class Reply:
    """What came back on one stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reset: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    window: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    """An HTTP/2 client connection: ``h2`` over an asyncio socket, events read in a task.

    ``ack`` decides whether received DATA reopens the stream's window (the connection's
    window is always reopened); a test that wants a stalled stream passes False.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, ack: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.ack = ack
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.replies: dict[int, Reply] = {}
        self.goaway: ev.ConnectionTerminated | None = None
        self.settings = asyncio.Event()  # the server's SETTINGS arrived
        self.closed = asyncio.Event()
        self.window = asyncio.Event()  # set on any WINDOW_UPDATE
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        ack: bool = True,
        settings: dict[int, int] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        client = cls(reader, writer, ack=ack)
        client.conn.initiate_connection()
        if settings:
            client.conn.update_settings(settings)
        client.flush()
        client._task = asyncio.get_running_loop().create_task(client._read())
        await asyncio.wait_for(client.settings.wait(), 5)
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    self._on(event)
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for reply in self.replies.values():
                reply.done.set()
                reply.window.set()
            self.window.set()

    def _on(self, event: ev.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        reply = self.replies.get(sid) if sid else None
        if isinstance(event, ev.RemoteSettingsChanged):
            self.settings.set()
        elif isinstance(event, ev.ResponseReceived) and reply is not None:
            reply.headers = list(event.headers)
        elif isinstance(event, ev.DataReceived) and reply is not None:
            reply.body += event.data
            self.conn.increment_flow_control_window(event.flow_controlled_length)
            if self.ack and event.flow_controlled_length:
                # The stream may have ended in this same read.
                with contextlib.suppress(StreamClosedError):
                    self.conn.increment_flow_control_window(event.flow_controlled_length, sid)
        elif isinstance(event, ev.TrailersReceived) and reply is not None:
            reply.trailers = list(event.headers)
        elif isinstance(event, ev.StreamEnded) and reply is not None:
            reply.done.set()
        elif isinstance(event, ev.StreamReset) and reply is not None:
            reply.reset = event.error_code
            reply.done.set()
            reply.window.set()
        elif isinstance(event, ev.WindowUpdated):
            self.window.set()
            if reply is not None:
                reply.window.set()
        elif isinstance(event, ev.ConnectionTerminated):
            self.goaway = event

    def start(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        headers: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
    ) -> int:
        """Open a stream with a request head; its id."""
        sid = self.conn.get_next_available_stream_id()
        self.replies[sid] = Reply()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            (b":path", path.encode()),
            *(headers or []),
        ]
        self.conn.send_headers(sid, fields, end_stream=end)
        self.flush()
        return sid

    async def send_body(self, sid: int, data: bytes, *, end: bool = True) -> None:
        """Send ``data`` on a stream as the flow-control windows allow."""
        pos = 0
        while pos < len(data):
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.window.clear()
                await asyncio.wait_for(self.window.wait(), 5)
                continue
            chunk = data[pos : pos + window]
            pos += len(chunk)
            self.conn.send_data(sid, chunk, end_stream=end and pos == len(data))
            self.flush()
            await self.writer.drain()
        if end and not data:
            self.conn.end_stream(sid)
            self.flush()

    async def reply(self, sid: int, timeout: float = 10) -> Reply:
        reply = self.replies[sid]
        await asyncio.wait_for(reply.done.wait(), timeout)
        return reply

    async def get(self, path: str = "/", **kwargs: Any) -> Reply:
        return await self.reply(self.start(path, **kwargs))

    async def aclose(self) -> None:
        if not self.writer.is_closing():
            self.conn.close_connection()
            self.flush()
            self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class RawH2:
    """Frames written by hand, and every frame the server sends, decoded.

    For what a well-behaved client never sends (the attack tests), and for reading a
    connection after GOAWAY (an ``h2`` client stops processing frames there). It
    acknowledges the server's SETTINGS and nothing else: no WINDOW_UPDATE, no PING ACK.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []
        self.headers: dict[int, list[list[tuple[bytes, bytes]]]] = {}
        self.data: dict[int, bytearray] = {}
        self.received = 0  # bytes read from the server
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, settings: dict[int, int] | None = None) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        writer.write(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        raw._task = asyncio.get_running_loop().create_task(raw._read())
        await raw.wait(lambda: raw.of_type(SettingsFrame))
        return raw

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(frame.serialize() for frame in frames))

    def request(
        self,
        sid: int,
        path: str = "/",
        *,
        method: str = "GET",
        end: bool = True,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> HeadersFrame:
        """A HEADERS frame opening stream ``sid`` (encoded now: keep the order)."""
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            (b":path", path.encode()),
            *(extra or []),
        ]
        flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
        return HeadersFrame(sid, data=self.encoder.encode(fields), flags=flags)

    async def _read(self) -> None:
        buf = bytearray()
        try:
            while data := await self.reader.read(65536):
                self.received += len(data)
                buf += data
                while len(buf) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
                    if len(buf) < 9 + length:
                        break
                    frame.parse_body(memoryview(bytes(buf[9 : 9 + length])))
                    del buf[: 9 + length]
                    self._on(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def _on(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame):
            block = [(bytes(k), bytes(v)) for k, v in self.decoder.decode(frame.data, raw=True)]
            self.headers.setdefault(frame.stream_id, []).append(block)
        elif isinstance(frame, DataFrame):
            self.data.setdefault(frame.stream_id, bytearray()).extend(frame.data)

    def of_type(self, kind: type[Frame], sid: int | None = None) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind) and sid in (None, f.stream_id)]

    def ended(self, sid: int) -> bool:
        """Whether stream ``sid`` got END_STREAM or RST_STREAM."""
        return any(
            f.stream_id == sid and ("END_STREAM" in f.flags or isinstance(f, RstStreamFrame))
            for f in self.frames
            if isinstance(f, HeadersFrame | DataFrame | RstStreamFrame)
        )

    def goaway(self) -> GoAwayFrame | None:
        frames = self.of_type(GoAwayFrame)
        return frames[0] if frames else None

    async def wait(self, predicate: Any, timeout: float = 5.0) -> None:
        await wait_for(lambda: predicate() or self.closed.is_set(), timeout)
        assert predicate(), "the connection closed first"

    async def aclose(self) -> None:
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


@contextlib.asynccontextmanager
async def h2_client(port: int, **kwargs: Any) -> AsyncIterator[H2Client]:
    client = await H2Client.open(port, **kwargs)
    try:
        yield client
    finally:
        await client.aclose()


# -- the app --------------------------------------------------------------------------------


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("disconnected")
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


class App:
    """Routes by path; records what the tests look at."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.messages: list[Message] = []
        self.release = asyncio.Event()
        self.arrived = 0
        self.all_arrived = asyncio.Event()
        self.expect = 100
        self.errors: list[BaseException] = []
        self.sends = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.scopes.append(scope)
        path = scope["path"]
        handler = getattr(self, "do_" + path.strip("/").split("/")[0] or "do_hello", None)
        if handler is None:
            handler = self.do_hello
        await handler(scope, receive, send)

    async def respond(self, send: Send, body: bytes, status: int = 200) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def do_hello(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"X-Mixed-Case", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": b"hello"})

    async def do_scope(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await read_body(receive)
        shown = {
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "query_string": scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "client": scope["client"],
            "extensions": sorted(scope["extensions"]),
        }
        await self.respond(send, json.dumps(shown).encode())

    async def do_echo(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        digest = hashlib.sha256(body).hexdigest().encode()
        await self.respond(send, b"%d %s" % (len(body), digest))

    async def do_big(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        size = int(scope["query_string"] or b"0")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < size:
            n = min(len(piece), size - sent)
            sent += n
            self.sends += 1
            await send({"type": "http.response.body", "body": piece[:n], "more_body": sent < size})

    async def do_barrier(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        self.arrived += 1
        if self.arrived >= self.expect:
            self.all_arrived.set()
        await self.all_arrived.wait()
        await self.respond(send, b"together")

    async def do_trailers(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"!"})
        await send(
            {"type": "http.response.trailers", "headers": [(b"x-a", b"1")], "more_trailers": True}
        )
        await send({"type": "http.response.trailers", "headers": [(b"X-Checksum", b"abc")]})

    async def do_wait(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                return

    async def do_slow(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await read_body(receive)
        self.arrived += 1
        if self.arrived >= self.expect:
            self.all_arrived.set()
        await self.release.wait()
        await self.respond(send, b"finished")

    async def do_fail(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["query_string"] == b"late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    async def do_head(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"not for HEAD"})


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def h2_connections(srv: Running) -> list[H2Protocol]:
    assert srv.server.state is not None
    return [c for c in srv.server.state.connections if isinstance(c, H2Protocol)]


# -- ways in --------------------------------------------------------------------------------


async def test_h2c_prior_knowledge_scope() -> None:
    app = App()
    async with serve(app) as srv, h2_client(srv.port) as client:
        reply = await client.get("/scope?a=1&b=%20", headers=[(b"x-custom", b"v")])
        assert reply.status == 200
        shown = json.loads(reply.body)
        assert shown["http_version"] == "2"
        assert shown["method"] == "GET"
        assert shown["scheme"] == "http"
        assert shown["path"] == "/scope"
        assert shown["query_string"] == "a=1&b=%20"
        # :authority becomes Host, first; no pseudo-header reaches the app.
        assert shown["headers"] == [["host", "example.test"], ["x-custom", "v"]]
        assert shown["client"][0] == "127.0.0.1"
        assert "http.response.trailers" in shown["extensions"]
        assert "tidings.shutdown" in shown["extensions"]


async def test_cookie_crumbs_are_joined() -> None:
    # RFC 9113 section 8.2.3: a client may split Cookie into several fields; the app
    # gets one, as over HTTP/1.1.
    async with serve(App()) as srv, h2_client(srv.port) as client:
        reply = await client.get("/scope", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert ["cookie", "a=1; b=2"] in json.loads(reply.body)["headers"]


async def test_response_head_is_lower_cased_and_dated() -> None:
    async with serve(App()) as srv, h2_client(srv.port) as client:
        reply = await client.get("/hello")
        assert bytes(reply.body) == b"hello"
        assert reply.header(b"x-mixed-case") == b"1"
        assert reply.header(b"date") is not None
        assert reply.header(b"content-length") == b"5"


async def test_httpx_http2_prior_knowledge() -> None:
    async with serve(App()) as srv, httpx.AsyncClient(http1=False, http2=True) as client:
        responses = await asyncio.gather(*(client.get(f"{srv.url}/hello") for _ in range(20)))
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert {r.text for r in responses} == {"hello"}


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is needed (apt-get install curl)")
    return subprocess.run(
        [curl, "-sS", "--max-time", "10", *args], capture_output=True, text=True, check=True
    )


async def test_curl_h2c_prior_knowledge() -> None:
    async with serve(App()) as srv:
        out = await asyncio.to_thread(
            _curl,
            "--http2-prior-knowledge",
            "-d",
            "abc",
            "-w",
            " %{http_version}",
            f"{srv.url}/echo",
        )
    assert out.stdout == f"3 {hashlib.sha256(b'abc').hexdigest()} 2"


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=t"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_alpn_h2_and_http11_fallback_over_tls(tls_cert: tuple[Path, Path]) -> None:
    cert, key = tls_cert
    app = App()
    async with serve(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as srv:
        url = f"https://127.0.0.1:{srv.port}/scope"
        h2 = await asyncio.to_thread(_curl, "--cacert", str(cert), "--http2", url)
        h11 = await asyncio.to_thread(_curl, "--cacert", str(cert), "--http1.1", url)
        # A client that offers only http/1.1 in ALPN.
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        # The h2 client over TLS with ALPN h2.
        tls = ssl.create_default_context(cafile=str(cert))
        tls.set_alpn_protocols(["h2"])
        async with h2_client(srv.port, tls=tls) as client:
            reply = await client.get("/scope")
    assert json.loads(h2.stdout)["http_version"] == "2"
    assert json.loads(h2.stdout)["scheme"] == "https"
    assert json.loads(h11.stdout)["http_version"] == "1.1"
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"hello")
    assert json.loads(reply.body)["scheme"] == "https"


async def test_no_h2c_gives_the_preface_the_http11_error() -> None:
    async with serve(App(), h2c=False) as srv:
        raw = await exchange(srv.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_no_http2_turns_off_h2c_and_alpn(tls_cert: tuple[Path, Path]) -> None:
    cert, key = tls_cert
    async with serve(App(), http2=False) as srv:
        raw = await exchange(srv.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 ")
    async with serve(App(), http2=False, ssl_certfile=str(cert), ssl_keyfile=str(key)) as srv:
        out = await asyncio.to_thread(
            _curl,
            "--cacert",
            str(cert),
            "--http2",
            "-w",
            "%{http_version}",
            "-o",
            "/dev/null",
            f"https://127.0.0.1:{srv.port}/",
        )
    assert out.stdout == "1.1"


async def test_preface_split_across_reads_is_h2c() -> None:
    async with serve(App()) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        client = H2Client(reader, writer, ack=True)
        client.conn.initiate_connection()
        data = client.conn.data_to_send()
        for part in (data[:5], data[5:16], data[16:30], data[30:]):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)
        client._task = asyncio.get_running_loop().create_task(client._read())
        reply = await client.get("/hello")
        await client.aclose()
    assert bytes(reply.body) == b"hello"


# -- streams and flow control ---------------------------------------------------------------


async def test_100_concurrent_streams_on_one_connection() -> None:
    app = App()
    app.expect = 100
    async with serve(app) as srv, h2_client(srv.port) as client:
        # Each app waits until all 100 are running: served one by one, none would finish.
        sids = [client.start("/barrier") for _ in range(100)]
        replies = await asyncio.gather(*(client.reply(sid) for sid in sids))
    assert [bytes(r.body) for r in replies] == [b"together"] * 100


async def test_large_response_follows_the_client_window() -> None:
    size = 3 * 1024 * 1024 + 17
    app = App()
    async with serve(app) as srv, h2_client(srv.port) as client:
        reply = await client.get(f"/big?{size}")
    piece = bytes(range(256)) * 256
    assert len(reply.body) == size
    assert bytes(reply.body[: len(piece)]) == piece
    assert bytes(reply.body[-17:]) == piece[:17]


async def test_a_stalled_stream_does_not_block_the_others() -> None:
    app = App()
    async with serve(app) as srv, h2_client(srv.port, ack=False) as client:
        stalled = client.start("/big?10000000")
        # Its window (64 KiB) fills and is never reopened; its app waits in send().
        await wait_for(lambda: len(client.replies[stalled].body) >= 65535)
        for _ in range(5):
            reply = await client.get("/hello")
            assert bytes(reply.body) == b"hello"
        assert not client.replies[stalled].done.is_set()
        assert app.sends <= 2  # the app is held in send(): nothing piles up server-side


async def test_large_request_body_and_window_updates() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: 32 times the stream window
    async with serve(App()) as srv, h2_client(srv.port) as client:
        sid = client.start("/echo", method="POST", end=False)
        await client.send_body(sid, body)
        reply = await client.reply(sid)
    assert bytes(reply.body) == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


async def test_unread_body_holds_the_stream_window_only() -> None:
    app = App()
    app.expect = 2  # /barrier never reads its body
    async with serve(app) as srv, h2_client(srv.port) as client:
        sid = client.start("/barrier", method="POST", end=False)
        sending = asyncio.ensure_future(client.send_body(sid, b"x" * 200_000))
        # The client may send exactly the stream window, then must wait.
        await wait_for(lambda: client.conn.local_flow_control_window(sid) == 0)
        (conn,) = h2_connections(srv)
        await wait_for(lambda: conn.streams[sid].body_size == 65536)
        await asyncio.sleep(0.05)
        assert conn.streams[sid].body_size == 65536
        assert not sending.done()
        # Other streams go on meanwhile.
        other = client.start("/hello")
        assert bytes((await client.reply(other)).body) == b"hello"
        sending.cancel()
        app.all_arrived.set()


async def test_trailers_both_ways() -> None:
    async with serve(App()) as srv, h2_client(srv.port) as client:
        sid = client.start("/trailers", method="POST", end=False)
        await client.send_body(sid, b"body", end=False)
        client.conn.send_headers(sid, [(b"x-request-trailer", b"t")], end_stream=True)
        client.flush()
        reply = await client.reply(sid)
    assert bytes(reply.body) == b"body!"
    assert reply.trailers == [(b"x-a", b"1"), (b"x-checksum", b"abc")]
    assert reply.header(b"content-length") is None


async def test_rst_stream_gives_http_disconnect() -> None:
    app = App()
    async with serve(app) as srv, h2_client(srv.port) as client:
        sid = client.start("/wait", method="POST", end=False)
        await client.send_body(sid, b"part", end=False)
        await wait_for(lambda: len(app.messages) == 1)
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        await wait_for(lambda: len(app.messages) == 2)
        # The connection goes on.
        assert bytes((await client.get("/hello")).body) == b"hello"
    assert app.messages == [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]


async def test_stalled_request_body_is_reset_after_body_timeout() -> None:
    app = App()
    async with serve(app, timeouts=Timeouts(keepalive=100.0)) as srv, h2_client(srv.port) as c:
        sid = c.start("/wait", method="POST", end=False)
        await c.send_body(sid, b"part", end=False)
        await wait_for(lambda: len(app.messages) == 1)
        srv.sweep(later=20.0)
        assert len(app.messages) == 1  # --body-timeout is 30 s
        srv.sweep(later=31.0)
        reply = await c.reply(sid)
        await wait_for(lambda: len(app.messages) == 2)
    assert reply.reset == ErrorCodes.CANCEL
    assert app.messages[1] == {"type": "http.disconnect"}


async def test_app_errors_give_500_or_a_reset() -> None:
    async with serve(App()) as srv, h2_client(srv.port) as client:
        early = await client.get("/fail")
        late = await client.get("/fail?late")
        head = await client.get("/head", method="HEAD")
    assert early.status == 500
    assert late.status == 200 and late.reset == ErrorCodes.INTERNAL_ERROR
    assert head.status == 200 and bytes(head.body) == b""
    assert head.header(b"content-length") == b"12"  # what GET would send


async def test_graceful_shutdown_sends_goaway_and_completes_streams() -> None:
    app = App()
    app.expect = 3
    async with serve(app) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(*(raw.request(sid, "/slow") for sid in (1, 3, 5)))
        await asyncio.wait_for(app.all_arrived.wait(), 5)
        srv.server.request_stop()
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        assert goaway is not None
        assert (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, 5)
        raw.send(raw.request(7, "/hello"))  # after GOAWAY: refused, never run
        await raw.wait(lambda: raw.ended(7))
        assert not raw.closed.is_set()
        app.release.set()
        await asyncio.wait_for(raw.closed.wait(), 5)  # closed once the streams are done
        await raw.aclose()
        assert await asyncio.wait_for(srv.task, 10) == 0
    assert [bytes(raw.data[sid]) for sid in (1, 3, 5)] == [b"finished"] * 3
    assert [f.error_code for f in raw.of_type(RstStreamFrame, 7)] == [ErrorCodes.REFUSED_STREAM]
    assert len(app.scopes) == 3


async def test_idle_connection_gets_goaway_and_closes() -> None:
    async with serve(App()) as srv, h2_client(srv.port) as client:
        assert bytes((await client.get("/hello")).body) == b"hello"
        srv.sweep(later=1.0)
        assert not client.closed.is_set()  # --keepalive-timeout is 5 s
        srv.sweep(later=6.0)
        await asyncio.wait_for(client.closed.wait(), 5)
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.NO_ERROR


async def test_proxy_headers_over_http2() -> None:
    async with serve(App(), proxy_headers=True) as srv, h2_client(srv.port) as client:
        reply = await client.get(
            "/scope",
            headers=[(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")],
        )
    shown = json.loads(reply.body)
    assert shown["client"] == ["203.0.113.9", 0]
    assert shown["scheme"] == "https"


async def test_body_over_max_body_size_is_413() -> None:
    async with serve(App(), limits=Limits(max_body_size=1000)) as srv, h2_client(srv.port) as c:
        declared = await c.get(
            "/echo", method="POST", headers=[(b"content-length", b"5000")], end=False
        )
        sid = c.start("/echo", method="POST", end=False)
        await c.send_body(sid, b"x" * 5000)
        streamed = await c.reply(sid)
    assert declared.status == 413
    assert streamed.status == 413


async def test_protocol_errors_get_the_rfc_error_codes() -> None:
    async with serve(App()) as srv:
        # RFC 9113 section 8.1.1: Content-Length on a request that has no body.
        raw = await RawH2.open(srv.port)
        raw.send(raw.request(1, "/hello", extra=[(b"content-length", b"3")]))
        await raw.wait(lambda: raw.ended(1))
        assert [f.error_code for f in raw.of_type(RstStreamFrame, 1)] == [ErrorCodes.PROTOCOL_ERROR]
        assert raw.goaway() is None
        await raw.aclose()
        # RFC 9113 section 4.3: a header block that can't be decoded (index 0).
        raw = await RawH2.open(srv.port)
        raw.send(HeadersFrame(1, data=b"\x80", flags=["END_HEADERS", "END_STREAM"]))
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.COMPRESSION_ERROR
        assert len(raw.of_type(GoAwayFrame)) == 1
        await raw.aclose()
        # RFC 9113 section 6.5: a SETTINGS ACK with a payload.
        raw = await RawH2.open(srv.port)
        ack = SettingsFrame(0, flags=["ACK"]).serialize()
        raw.writer.write(b"\x00\x00\x06" + ack[3:] + b"\x00\x04\x00\x00\x00\x01")
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.FRAME_SIZE_ERROR
        await raw.aclose()


async def test_advertised_settings_come_from_the_options() -> None:
    limits = Limits(
        h2_max_concurrent_streams=7,
        h2_initial_window_size=100_000,
        h2_max_frame_size=32768,
        h2_max_header_list_size=8192,
    )
    async with serve(App(), limits=limits) as srv, h2_client(srv.port) as client:
        remote = client.conn.remote_settings
        assert remote[SettingCodes.MAX_CONCURRENT_STREAMS] == 7
        assert remote[SettingCodes.INITIAL_WINDOW_SIZE] == 100_000
        assert remote[SettingCodes.MAX_FRAME_SIZE] == 32768
        assert remote[SettingCodes.MAX_HEADER_LIST_SIZE] == 8192


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"limits": Limits(h2_max_concurrent_streams=0)}, "--h2-max-concurrent-streams"),
        ({"limits": Limits(h2_max_frame_size=1000)}, "--h2-max-frame-size"),
        ({"limits": Limits(h2_max_frame_size=1 << 24)}, "--h2-max-frame-size"),
        ({"limits": Limits(h2_initial_window_size=1 << 31)}, "--h2-initial-window-size"),
        ({"limits": Limits(h2_max_header_list_size=10)}, "--h2-max-header-list-size"),
        ({"timeouts": Timeouts(h2_stall=0)}, "--h2-stall-timeout"),
    ],
)
def test_bad_http2_options_fail_naming_the_flag(changes: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        Config(app="m:a", **changes)


def test_bad_http2_flag_fails_at_start_up() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidings.server._cli",
            "serve",
            "m:a",
            "--h2-max-frame-size",
            "1KiB",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--h2-max-frame-size must be an integer from 16384 to 16777215" in proc.stderr


def test_every_http2_option_is_in_the_table() -> None:
    flags = {o.flag for o in OPTIONS}
    assert {
        "--http2",
        "--h2c",
        "--h2-connect-protocol",
        "--h2-max-concurrent-streams",
        "--h2-max-header-list-size",
        "--h2-initial-window-size",
        "--h2-max-frame-size",
        "--h2-stall-timeout",
    } <= flags
