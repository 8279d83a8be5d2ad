"""WebSocket over HTTP/2 (RFC 8441, extended CONNECT), with raw frames."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from typing import Any

from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from tests.server._helpers import serve
from tests.server.test_http2 import RawH2, h2_connections, wait_for
from tidings._types import ASGIReceive, ASGISend, Message
from tidings.server.config import Timeouts, WebSocketSettings


class EchoApp:
    """Accepts (or refuses, on /refuse), echoes every message, records the disconnect."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.received: list[Message] = []

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        assert scope["type"] == "websocket"
        self.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close"})
            return
        if scope["path"] == "/deny":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no"})
            return
        subprotocols = scope["subprotocols"]
        await send(
            {"type": "websocket.accept", "subprotocol": subprotocols[0] if subprotocols else None}
        )
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close please":
                await send({"type": "websocket.close", "code": 4000})
                continue
            reply = {k: v for k, v in message.items() if k in ("text", "bytes") and v is not None}
            await send({"type": "websocket.send", **reply})


def client_frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """One masked, final frame as a client sends it (RFC 6455 section 5.2)."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """``(opcode, rsv1, payload)`` of the unmasked frames the server sent."""
    frames = []
    pos = 0
    while pos + 2 <= len(data):
        first, second = data[pos], data[pos + 1]
        n = second & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        frames.append((first & 0x0F, bool(first & 0x40), data[pos : pos + n]))
        pos += n
    return frames


def connect(raw: RawH2, sid: int, path: str = "/ws", **extra: bytes) -> HeadersFrame:
    fields = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"example.test"),
        (b"sec-websocket-version", extra.pop("version", b"13")),
        *((k.replace("_", "-").encode(), v) for k, v in extra.items()),
    ]
    return HeadersFrame(sid, data=raw.encoder.encode(fields), flags=["END_HEADERS"])


def status(raw: RawH2, sid: int) -> int:
    return int(dict(raw.headers[sid][0])[b":status"])


async def test_settings_advertise_extended_connect() -> None:
    async with serve(EchoApp()) as srv:
        raw = await RawH2.open(srv.port)
        (settings, *_) = raw.of_type(SettingsFrame)
        assert settings.settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
        await raw.aclose()
    async with serve(EchoApp(), h2_connect_protocol=False) as srv:
        raw = await RawH2.open(srv.port)
        (settings, *_) = raw.of_type(SettingsFrame)
        assert settings.settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0
        raw.send(connect(raw, 1))  # not offered: a CONNECT is refused
        await raw.wait(lambda: raw.ended(1))
        assert status(raw, 1) == 501
        await raw.aclose()


async def test_echo_and_closing_handshake() -> None:
    app = EchoApp()
    async with serve(app) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(connect(raw, 1, sec_websocket_protocol=b"chat, other"))
        await raw.wait(lambda: raw.headers.get(1))
        assert status(raw, 1) == 200
        assert dict(raw.headers[1][0])[b"sec-websocket-protocol"] == b"chat"
        raw.send(DataFrame(1, data=client_frame(0x1, "héllo".encode())))
        raw.send(DataFrame(1, data=client_frame(0x2, b"\x00\x01")))
        await raw.wait(lambda: len(server_frames(bytes(raw.data.get(1, b"")))) == 2)
        assert server_frames(bytes(raw.data[1])) == [
            (0x1, False, "héllo".encode()),
            (0x2, False, b"\x00\x01"),
        ]
        # The client closes; the server echoes the close and ends the stream.
        raw.send(DataFrame(1, data=client_frame(0x8, struct.pack("!H", 1000) + b"bye")))
        await raw.wait(lambda: raw.ended(1))
        assert server_frames(bytes(raw.data[1]))[-1] == (0x8, False, struct.pack("!H", 1000))
        await wait_for(lambda: app.received[-1]["type"] == "websocket.disconnect")
        await raw.aclose()
    scope = app.scopes[0]
    assert (scope["http_version"], scope["scheme"], scope["path"]) == ("2", "ws", "/ws")
    assert scope["subprotocols"] == ["chat", "other"]
    assert app.received[-1] == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}


async def test_server_initiated_close() -> None:
    app = EchoApp()
    async with serve(app) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(connect(raw, 1))
        raw.send(DataFrame(1, data=client_frame(0x1, b"close please")))
        await raw.wait(lambda: any(f[0] == 0x8 for f in server_frames(bytes(raw.data.get(1, b"")))))
        assert server_frames(bytes(raw.data[1]))[-1] == (0x8, False, struct.pack("!H", 4000))
        assert not raw.ended(1)  # waiting for the client's close
        raw.send(DataFrame(1, data=client_frame(0x8, struct.pack("!H", 4000))))
        await raw.wait(lambda: raw.ended(1))
        await raw.aclose()
    assert app.received[-1] == {"type": "websocket.disconnect", "code": 4000, "reason": ""}


async def test_permessage_deflate_is_negotiated() -> None:
    async with serve(EchoApp()) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(connect(raw, 1, sec_websocket_extensions=b"permessage-deflate"))
        await raw.wait(lambda: raw.headers.get(1))
        assert dict(raw.headers[1][0])[b"sec-websocket-extensions"].startswith(
            b"permessage-deflate"
        )
        text = b"compress me " * 50
        compressor = zlib.compressobj(wbits=-15)
        payload = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
        raw.send(DataFrame(1, data=client_frame(0x1, payload[:-4], rsv1=True)))
        await raw.wait(lambda: server_frames(bytes(raw.data.get(1, b""))))
        ((opcode, rsv1, body),) = server_frames(bytes(raw.data[1]))
        assert (opcode, rsv1) == (0x1, True)
        assert zlib.decompressobj(wbits=-15).decompress(body + b"\x00\x00\xff\xff") == text
        await raw.aclose()


async def test_refusals_and_bad_version() -> None:
    async with serve(EchoApp()) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(
            connect(raw, 1, "/refuse"), connect(raw, 3, "/deny"), connect(raw, 5, version=b"8")
        )
        await raw.wait(lambda: all(raw.ended(sid) for sid in (1, 3, 5)))
        assert status(raw, 1) == 403
        assert status(raw, 3) == 401 and bytes(raw.data[3]) == b"no"
        assert status(raw, 5) == 400
        assert dict(raw.headers[5][0])[b"sec-websocket-version"] == b"13"
        await raw.aclose()


async def test_rst_stream_is_an_abnormal_closure() -> None:
    app = EchoApp()
    async with serve(app) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(connect(raw, 1))
        await raw.wait(lambda: raw.headers.get(1))
        raw.send(RstStreamFrame(1, error_code=ErrorCodes.CANCEL))
        await wait_for(lambda: app.received and app.received[-1]["type"] == "websocket.disconnect")
        # The connection goes on: another WebSocket on it works.
        raw.send(connect(raw, 3))
        raw.send(DataFrame(3, data=client_frame(0x1, b"again")))
        await raw.wait(lambda: server_frames(bytes(raw.data.get(3, b""))))
        await raw.aclose()
    assert app.received[0] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}


async def test_websocket_limits_apply_unchanged() -> None:
    app = EchoApp()
    async with serve(app, websocket=WebSocketSettings(max_message_size=1000)) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(connect(raw, 1))
        raw.send(DataFrame(1, data=client_frame(0x2, b"x" * 1001)))
        await raw.wait(lambda: raw.ended(1))
        (close,) = [f for f in server_frames(bytes(raw.data[1])) if f[0] == 0x8]
        assert close[2][:2] == struct.pack("!H", 1009)
        await raw.aclose()
    assert app.received == [{"type": "websocket.disconnect", "code": 1009, "reason": ""}]


async def test_many_websockets_share_one_connection() -> None:
    async with serve(EchoApp()) as srv:
        raw = await RawH2.open(srv.port)
        sids = list(range(1, 40, 2))
        for sid in sids:
            raw.send(connect(raw, sid), DataFrame(sid, data=client_frame(0x1, b"%d" % sid)))
        await raw.wait(lambda: all(server_frames(bytes(raw.data.get(s, b""))) for s in sids))
        for sid in sids:
            assert server_frames(bytes(raw.data[sid])) == [(0x1, False, b"%d" % sid)]
        await raw.aclose()


async def test_pongs_a_client_does_not_take_are_bounded() -> None:
    # A client that pings but never opens its window: the pongs wait, and past
    # --ws-max-send-buffer of them the stream is reset and the app told (1008).
    app = EchoApp()
    settings = WebSocketSettings(max_send_buffer=1024)
    async with serve(app, websocket=settings) as srv:
        raw = await RawH2.open(srv.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
        raw.send(connect(raw, 1))
        await raw.wait(lambda: raw.headers.get(1))
        tasks_before = len(asyncio.all_tasks())
        raw.send(*(DataFrame(1, data=client_frame(0x9, b"12345678")) for _ in range(200)))
        await raw.wait(lambda: raw.ended(1))
        assert [f.error_code for f in raw.of_type(RstStreamFrame, 1)] == [ErrorCodes.CANCEL]
        assert not raw.data.get(1)  # nothing was written past the closed window
        # The pongs that waited for the window are dropped, not left waiting.
        assert srv.server.state is not None
        await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before)
        await wait_for(lambda: app.received and app.received[-1]["type"] == "websocket.disconnect")
        await raw.aclose()
    assert app.received[-1]["code"] == 1008


async def test_graceful_shutdown_closes_websockets_with_1001() -> None:
    app = EchoApp()
    async with serve(app) as srv:
        raw = await RawH2.open(srv.port)
        raw.send(connect(raw, 1), DataFrame(1, data=client_frame(0x1, b"hi")))
        await raw.wait(lambda: server_frames(bytes(raw.data.get(1, b""))))
        srv.server.request_stop()
        await raw.wait(lambda: len(server_frames(bytes(raw.data[1]))) == 2)
        assert server_frames(bytes(raw.data[1]))[-1][:2] == (0x8, False)
        assert server_frames(bytes(raw.data[1]))[-1][2][:2] == struct.pack("!H", 1001)
        raw.send(DataFrame(1, data=client_frame(0x8, struct.pack("!H", 1001))))
        await asyncio.wait_for(raw.closed.wait(), 5)  # the last stream done: closed
        await raw.aclose()
        assert await asyncio.wait_for(srv.task, 10) == 0
    assert app.received[-1] == {"type": "websocket.disconnect", "code": 1001, "reason": ""}


async def test_a_websocket_stalled_on_its_window_is_reset() -> None:
    app = EchoApp()
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        async with serve(app, timeouts=Timeouts(keepalive=100.0)) as srv:
            raw = await RawH2.open(srv.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
            raw.send(connect(raw, 1), DataFrame(1, data=client_frame(0x1, b"echo me")))
            (conn,) = h2_connections(srv)
            await wait_for(lambda: 1 in conn.streams and conn.streams[1].blocked_since)
            srv.sweep(later=31.0)  # --h2-stall-timeout
            await raw.wait(lambda: raw.ended(1))
            assert [f.error_code for f in raw.of_type(RstStreamFrame, 1)] == [ErrorCodes.CANCEL]
            await wait_for(lambda: not conn.running)
            await raw.aclose()
    finally:
        loop.set_exception_handler(None)
    # Its echo waited in send(), which raised ClientDisconnected: the app ended there.
    assert app.received == [{"type": "websocket.receive", "text": "echo me"}]
    assert errors == []


async def test_websockets_over_http2_are_counted_in_the_metrics() -> None:
    from tidings import _metrics

    metrics = _metrics.enable()
    try:
        app = EchoApp()
        async with serve(app) as srv:
            raw = await RawH2.open(srv.port)
            raw.send(connect(raw, 1))
            await raw.wait(lambda: raw.headers.get(1))
            assert status(raw, 1) == 200
            frame = client_frame(0x1, b"hello")
            raw.send(DataFrame(1, data=frame))
            await raw.wait(lambda: len(server_frames(bytes(raw.data.get(1, b"")))) == 1)
            raw.send(DataFrame(1, data=client_frame(0x8, struct.pack("!H", 4001))))
            await raw.wait(lambda: raw.ended(1))
            await wait_for(lambda: app.received[-1]["type"] == "websocket.disconnect")
            await raw.aclose()
        snapshot = metrics.snapshot()
    finally:
        _metrics.disable()
    assert snapshot["ws_accepted"] == 1
    assert (snapshot["ws_messages_in"], snapshot["ws_messages_out"]) == (1, 1)
    assert snapshot["ws_bytes_in"] == len(frame) + len(client_frame(0x8, b"\x0f\xa1"))
    assert snapshot["ws_bytes_out"] == 2 + len(b"hello")  # one unmasked short frame
    assert snapshot["closes"] == {4001: 1}
