"""HTTP/2 attacks against the server, each with the limit that stops it.

Every test runs the attack on one connection while a well-behaved client keeps
making requests on another, and checks that the attacker is stopped, that what the
server holds for it stays bounded, and that the other client is answered throughout
(each of its requests within a generous bound: starvation, not speed, is the failure
looked for). Frames are written by hand with ``hyperframe`` and ``hpack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.server._helpers import Running, serve
from tests.server.test_http2 import App, H2Client, RawH2, h2_connections, wait_for
from tidings.server.config import Limits, Timeouts
from tidings.wire.http2 import PREFACE

# The longest a well-behaved client's request may take while an attack runs.
_PATIENCE = 2.0


@dataclass
class Bystander:
    """A well-behaved client making requests on its own connection during an attack."""

    served: int = 0
    failures: list[BaseException] = field(default_factory=list)


@contextlib.asynccontextmanager
async def bystander(srv: Running) -> AsyncIterator[Bystander]:
    record = Bystander()
    client = await H2Client.open(srv.port)

    async def loop() -> None:
        while True:
            try:
                reply = await asyncio.wait_for(client.get("/hello"), _PATIENCE)
                assert bytes(reply.body) == b"hello"
            except (AssertionError, TimeoutError) as exc:
                record.failures.append(exc)
                return
            record.served += 1
            await asyncio.sleep(0.005)

    task = asyncio.get_running_loop().create_task(loop())
    try:
        yield record
        served = record.served
        await wait_for(lambda: record.served > served + 2 or record.failures, 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
    assert not record.failures, record.failures
    assert record.served >= 3


async def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    # CVE-2023-44487: open a stream and reset it at once, in a loop.
    app = App()
    async with serve(app) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        sid = 1
        for _ in range(50):
            batch = []
            for _ in range(20):
                batch += [raw.request(sid, "/wait", end=False), RstStreamFrame(sid, error_code=8)]
                sid += 2
            raw.send(*batch)
            with contextlib.suppress(ConnectionError):
                await raw.writer.drain()
            if raw.closed.is_set():
                break
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        assert goaway is not None
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        await asyncio.wait_for(raw.closed.wait(), 5)
        await raw.aclose()
        # The apps it started were bounded by the reset limit, and all have ended.
        # (None at all when the resets arrive with their HEADERS in one read.)
        started = sum(1 for scope in app.scopes if scope["path"] == "/wait")
        assert started <= 250
        assert srv.server.state is not None
        await wait_for(lambda: len(srv.server.state.tasks) <= 1)


async def test_continuation_flood_is_cut_at_the_header_list_size() -> None:
    # CVE-2024-27316 class: a header block that never ends. h2 alone would buffer 64
    # CONTINUATION frames (1 MiB at the default frame size) before refusing.
    async with serve(App()) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        raw.send(HeadersFrame(1, data=raw.encoder.encode([(b":method", b"GET")])))
        frames_sent = 0
        junk = b"\x00" * 16384
        while not raw.closed.is_set() and frames_sent < 64:
            raw.send(ContinuationFrame(1, data=junk))
            frames_sent += 1
            with contextlib.suppress(ConnectionError):
                await raw.writer.drain()
            await asyncio.sleep(0.01)
        await asyncio.wait_for(raw.closed.wait(), 5)
        goaway = raw.goaway()
        await raw.aclose()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # --h2-max-header-list-size is 32 KiB: the third 16 KiB frame passes it. A
    # frame or two more may be in flight before the close reaches us.
    assert frames_sent <= 6


async def test_endless_empty_continuation_frames_are_cut() -> None:
    # The same class with frames that carry nothing: the block never grows, the count
    # of its frames does (bounded by the core's _MAX_CONTINUATIONS).
    async with serve(App()) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        raw.send(HeadersFrame(1, data=raw.encoder.encode([(b":method", b"GET")])))
        batches = 0
        empty = ContinuationFrame(1, data=b"").serialize()
        while not raw.closed.is_set() and batches < 100:
            raw.writer.write(empty * 100)
            batches += 1
            with contextlib.suppress(ConnectionError):
                await raw.writer.drain()
            await asyncio.sleep(0.01)
        await asyncio.wait_for(raw.closed.wait(), 5)
        goaway = raw.goaway()
        await raw.aclose()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert batches < 10  # cut at the second batch; a few more may be in flight


async def test_data_on_closed_streams_in_a_loop_is_rapid_reset_too() -> None:
    # Each DATA frame on a stream that has ended is answered with RST_STREAM
    # STREAM_CLOSED (RFC 9113 section 5.1): counted with the resets.
    async with serve(App()) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        raw.send(raw.request(1, "/hello"))
        await raw.wait(lambda: raw.ended(1))
        sent = 0
        while not raw.closed.is_set() and sent < 5000:
            raw.send(*(DataFrame(1, data=b"x") for _ in range(100)))
            sent += 100
            with contextlib.suppress(ConnectionError):
                await raw.writer.drain()
            await asyncio.sleep(0)
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        await raw.aclose()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert len(raw.of_type(RstStreamFrame, 1)) <= 300


async def test_hpack_bomb_is_capped_by_the_decoded_list_size() -> None:
    # A 4 KiB field in the HPACK dynamic table, then a block of one-byte references
    # to it: 2 KiB on the wire that decodes to 8 MiB.
    async with serve(App()) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        encoder = raw.encoder
        head = encoder.encode(
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"t"),
                (b":path", b"/"),
                (b"x-bomb", b"b" * 4000),
            ]
        )
        # x-bomb is now dynamic table entry 62 (RFC 7541 section 2.3.3): 0x80 | 62.
        block = head + bytes([0x80 | 62]) * 2048
        raw.send(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]))
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        await asyncio.wait_for(raw.closed.wait(), 5)
        await raw.aclose()
    assert goaway is not None
    assert goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.COMPRESSION_ERROR)


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_control_frame_flood_without_reading_is_cut(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Each PING or SETTINGS asks for an ACK; a client that never reads them would
    # have us queue ACKs without end.
    caplog.set_level(logging.WARNING, "tidings.error")
    # No idle timeout during the flood: the limit, not the idle sweep, must end it.
    async with serve(App(), timeouts=Timeouts(keepalive=100.0)) as srv, bystander(srv):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.setblocking(False)
        _reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(PREFACE + SettingsFrame(0).serialize())
        await writer.drain()
        await wait_for(lambda: len(h2_connections(srv)) == 2)
        conn = h2_connections(srv)
        target = next(c for c in conn if c.client == sock.getsockname()[:2])
        # Small kernel buffers on both ends, so that the server's own queue is what
        # fills (the kernel would otherwise absorb some MiB of ACKs first).
        server_sock = target.transport.get_extra_info("socket")
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        frame = (
            PingFrame(0, opaque_data=b"12345678") if kind == "ping" else SettingsFrame(0)
        ).serialize()
        most = 0
        cut = False
        for _ in range(400):  # up to 400 x 1000 frames; the cut comes far sooner
            writer.write(frame * 1000)
            try:
                await asyncio.wait_for(writer.drain(), 1)
            except (ConnectionError, TimeoutError):
                cut = True
            if not target.lost:
                most = max(most, target.transport.get_write_buffer_size())
            if cut or target.lost:
                break
            await asyncio.sleep(0)
        await wait_for(lambda: target.lost)
        writer.close()
    assert any("while not reading the answers" in r.getMessage() for r in caplog.records)
    # The queue of ACKs stayed within the high-water mark plus the allowance
    # (_MAX_UNREAD_CONTROL frames, and one read's worth counted at once).
    assert most <= 64 * 1024 + 17 * 1000 + 256 * 1024


async def test_zero_window_stall_holds_nothing_and_times_out() -> None:
    app = App()
    # The sweep runs as if 31 s had passed: the bystander's idle connection must not
    # time out meanwhile (--keepalive-timeout).
    async with serve(app, timeouts=Timeouts(keepalive=100.0)) as srv, bystander(srv):
        raw = await RawH2.open(srv.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
        raw.send(raw.request(1, "/big?100000000"))  # 100 MB the client will never take
        await raw.wait(lambda: raw.headers.get(1))
        (attacker,) = [c for c in h2_connections(srv) if 1 in c.streams and c.running]
        await wait_for(lambda: attacker.streams[1].blocked_since is not None)
        # The app is held in its first send(): nothing is buffered for the stream.
        assert app.sends == 1
        assert attacker.transport.get_write_buffer_size() == 0
        assert not raw.of_type(DataFrame)
        srv.sweep(later=10.0)
        assert not raw.ended(1)  # --h2-stall-timeout is 30 s
        srv.sweep(later=31.0)
        await raw.wait(lambda: raw.ended(1))
        assert [f.error_code for f in raw.of_type(RstStreamFrame, 1)] == [ErrorCodes.CANCEL]
        assert srv.server.state is not None
        await wait_for(lambda: not attacker.running)
        await raw.aclose()


async def test_stream_id_exhaustion() -> None:
    # The highest stream id a client may use (RFC 9113 section 5.1.1); after it,
    # the connection can carry no new stream, and a lower id is a connection error.
    last = (1 << 31) - 1
    async with serve(App()) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        raw.send(raw.request(last, "/hello"))
        await raw.wait(lambda: raw.ended(last))
        assert bytes(raw.data[last]) == b"hello"
        raw.send(raw.request(3, "/hello"))
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        assert goaway is not None
        assert (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.PROTOCOL_ERROR, last)
        await asyncio.wait_for(raw.closed.wait(), 5)
        await raw.aclose()


async def test_streams_over_the_limit_are_refused() -> None:
    app = App()
    app.expect = 5
    async with serve(app, limits=Limits(h2_max_concurrent_streams=5)) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        raw.send(*(raw.request(sid, "/slow") for sid in (1, 3, 5, 7, 9)))
        await asyncio.wait_for(app.all_arrived.wait(), 5)
        raw.send(raw.request(11, "/hello"))
        await raw.wait(lambda: raw.ended(11))
        assert [f.error_code for f in raw.of_type(RstStreamFrame, 11)] == [
            ErrorCodes.REFUSED_STREAM
        ]
        assert raw.goaway() is None  # a stream error, not a connection error
        app.release.set()
        await raw.wait(lambda: all(raw.ended(sid) for sid in (1, 3, 5, 7, 9)))
        raw.send(raw.request(13, "/hello"))  # room again
        await raw.wait(lambda: raw.ended(13))
        assert bytes(raw.data[13]) == b"hello"
        await raw.aclose()


async def test_refusing_streams_in_a_loop_is_rapid_reset_too() -> None:
    app = App()
    app.expect = 10**9  # /slow never completes
    async with serve(app, limits=Limits(h2_max_concurrent_streams=2)) as srv, bystander(srv):
        raw = await RawH2.open(srv.port)
        sid = 1
        while not raw.closed.is_set() and sid < 4000:
            raw.send(*(raw.request(sid + 2 * i, "/slow") for i in range(50)))
            sid += 100
            with contextlib.suppress(ConnectionError):
                await raw.writer.drain()
            await asyncio.sleep(0)
        await raw.wait(raw.goaway)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        await raw.aclose()
        app.release.set()
    # Two ran; every other stream was refused before its app started.
    assert sum(1 for scope in app.scopes if scope["path"] == "/slow") == 2
