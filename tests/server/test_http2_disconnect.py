"""HTTP/2 clients that leave mid-response, or go silent: the apps see a disconnect.

A client may reset a stream (RST_STREAM), say goodbye (GOAWAY, as h2load does when it
stops) or break the protocol while apps are still answering it. In each case the
app's next ``send()`` raises ``ClientDisconnected`` (an ``OSError``, as over HTTP/1.1
after the client left), nothing is logged as an application error, and the server's
other streams and connections go on.

A connection whose streams run while the client says nothing gets a keepalive PING
after ``--ws-ping-interval``, and is closed if the PING stays unanswered for
``--ws-ping-timeout`` (the timeout sweep runs with a clock moved forward).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PingFrame, RstStreamFrame

from tests.server._helpers import serve
from tests.server.test_http2 import App, RawH2, h2_client, h2_connections, wait_for
from tidings._types import ASGIReceive as Receive
from tidings._types import ASGISend as Send
from tidings.server._http11 import ClientDisconnected
from tidings.server.config import Timeouts, WebSocketSettings

_STREAMS = (1, 3, 5, 7, 9, 11)


class Midway(App):
    """``/midway`` answers in steps, waiting for ``release`` in between.

    ``?before`` waits before the response starts (its body's first frame is then the
    HEADERS frame), otherwise after the first body chunk. What ``send()`` raised is
    recorded, and re-raised for the server to handle.
    """

    async def do_midway(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        before = scope["query_string"] == b"before"
        try:
            if before:
                await self._arrive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a" * 100, "more_body": True})
            if not before:
                await self._arrive()
            for _ in range(3):
                await send({"type": "http.response.body", "body": b"b" * 100, "more_body": True})
            await send({"type": "http.response.body", "body": b"end"})
        except Exception as exc:
            self.errors.append(exc)
            raise

    async def _arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expect:
            self.all_arrived.set()
        await self.release.wait()


def _requests(raw: RawH2) -> None:
    raw.send(
        *(raw.request(sid, "/midway?before" if sid % 4 == 1 else "/midway") for sid in _STREAMS)
    )


def _app_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_streams_reset_mid_response_are_disconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidings.error")
    app = Midway()
    app.expect = len(_STREAMS)
    async with serve(app) as srv:
        raw = await RawH2.open(srv.port)
        _requests(raw)
        await asyncio.wait_for(app.all_arrived.wait(), 5)
        raw.send(*(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL) for sid in _STREAMS))
        # The server has taken the resets in once a PING sent after them is answered.
        raw.send(PingFrame(0, opaque_data=b"resets!!"))
        await raw.wait(lambda: any(f.opaque_data == b"resets!!" for f in raw.of_type(PingFrame)))
        app.release.set()
        await wait_for(lambda: len(app.errors) == len(_STREAMS))
        # The connection goes on: a new stream is answered in full.
        raw.send(raw.request(13, "/hello"))
        await raw.wait(lambda: raw.ended(13))
        assert bytes(raw.data[13]) == b"hello"
        assert raw.goaway() is None
        await raw.aclose()
    assert all(isinstance(e, ClientDisconnected) for e in app.errors), app.errors
    assert _app_errors(caplog) == []
    stopped = [r for r in caplog.records if "after the client left" in r.getMessage()]
    assert len(stopped) == len(_STREAMS)


@pytest.mark.parametrize("leaving", ["goaway", "protocol-error"])
async def test_client_leaving_the_connection_mid_response(
    leaving: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidings.error")
    app = Midway()
    app.expect = len(_STREAMS)
    async with serve(app) as srv, h2_client(srv.port) as other:
        raw = await RawH2.open(srv.port)
        _requests(raw)
        await asyncio.wait_for(app.all_arrived.wait(), 5)
        (conn,) = [c for c in h2_connections(srv) if c.running]
        if leaving == "goaway":
            # What h2load sends when its time is up, the socket left open.
            raw.send(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR))
        else:
            # A PING of 1 octet: FRAME_SIZE_ERROR, a connection error (RFC 9113 6.7).
            raw.writer.write(b"\x00\x00\x01\x06\x00\x00\x00\x00\x00x")
        await wait_for(lambda: conn.lost or all(s.disconnected for s in conn.running))
        app.release.set()
        await wait_for(lambda: len(app.errors) == len(_STREAMS))
        # The apps have returned: the server closes the connection.
        await asyncio.wait_for(raw.closed.wait(), 5)
        assert not any(
            raw.ended(sid) and raw.data.get(sid, b"").endswith(b"end") for sid in _STREAMS
        )
        # Another connection was never disturbed.
        assert bytes((await other.get("/hello")).body) == b"hello"
        await raw.aclose()
    assert all(isinstance(e, ClientDisconnected) for e in app.errors), app.errors
    assert _app_errors(caplog) == []


# -- keepalive PINGs --------------------------------------------------------------------------

_PINGS = {"websocket": WebSocketSettings(ping_interval=20.0, ping_timeout=10.0)}


async def test_a_silent_connection_with_streams_gets_a_ping_and_stays() -> None:
    app = App()
    async with serve(app, **_PINGS) as srv, h2_client(srv.port) as client:
        sid = client.start("/wait", method="POST", end=False)  # an app that runs on
        await wait_for(lambda: h2_connections(srv) and h2_connections(srv)[0].running)
        (conn,) = h2_connections(srv)
        srv.sweep(later=10.0)
        assert conn._ping_sent is None  # not silent long enough
        srv.sweep(later=21.0)
        assert conn._ping_sent is not None
        # The h2 client answers the PING: the connection and its stream go on.
        await wait_for(lambda: conn._ping_sent is None)
        srv.sweep(later=21.0 + 11.0)
        assert not conn.lost and app.messages == []
        await client.send_body(sid, b"still here")
        await wait_for(lambda: len(app.messages) == 1)


async def test_a_client_that_never_answers_the_ping_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.error")
    app = App()
    async with serve(app, **_PINGS) as srv:
        raw = await RawH2.open(srv.port)  # acknowledges SETTINGS, never a PING
        raw.send(raw.request(1, "/wait", method="POST", end=False))
        await wait_for(lambda: bool(h2_connections(srv)) and bool(h2_connections(srv)[0].running))
        srv.sweep(later=21.0)
        await raw.wait(lambda: raw.of_type(PingFrame))
        (ping,) = raw.of_type(PingFrame)
        assert "ACK" not in ping.flags
        srv.sweep(later=21.0 + 5.0)
        assert not raw.closed.is_set()  # --ws-ping-timeout is 10 s
        srv.sweep(later=21.0 + 11.0)
        await asyncio.wait_for(raw.closed.wait(), 5)
        await wait_for(lambda: app.messages == [{"type": "http.disconnect"}])
        await raw.aclose()
    assert any("keepalive PING unanswered" in r.getMessage() for r in caplog.records)


async def test_idle_connections_are_not_pinged() -> None:
    # No stream runs: --keepalive-timeout closes the connection, no PING keeps it.
    async with serve(App(), **_PINGS, timeouts=Timeouts(keepalive=100.0)) as srv:
        raw = await RawH2.open(srv.port)
        await wait_for(lambda: bool(h2_connections(srv)))
        srv.sweep(later=50.0)
        assert raw.of_type(PingFrame) == []
        await raw.aclose()
