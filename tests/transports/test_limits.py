"""Every documented limit of the session transports, and the router's settings checks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.server._helpers import open_conn, read_response
from tidings.transports import TransportRouter, TransportSettings
from tidings.transports._manager import make_sid

from . import apps
from ._client import msg, poll, send_items, session_ws, sse, texts, ws_next
from .conftest import Harness, LoggedIn, harness
from .test_resume import lifecycle, until

ROOM = "/ws/echo/lobby/"

pytestmark = pytest.mark.usefixtures("django_db")


# -- settings ---------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    settings = TransportRouter({"websocket": apps.raw_echo}).settings
    assert settings == TransportSettings(
        resume_window=30.0,
        buffer_messages=1000,
        buffer_bytes=1024 * 1024,
        max_post_size=1024 * 1024,
        poll_hold=25.0,
        sse_heartbeat=15.0,
        max_sessions_per_user=100,
        max_sessions=10_000,
        remote_timeout=3.0,
        client_open_rate=10.0,
        client_open_burst=100,
        claim_window=10.0,
        channel_layer_alias="default",
    )


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("resume_window", 0, ValueError),
        ("resume_window", -1.5, ValueError),
        ("resume_window", "30", TypeError),
        ("poll_hold", 10**9, ValueError),
        ("sse_heartbeat", True, TypeError),
        ("remote_timeout", None, TypeError),
        ("buffer_messages", 0, ValueError),
        ("buffer_bytes", 1.5, TypeError),
        ("max_post_size", -1, ValueError),
        ("max_sessions_per_user", False, TypeError),
        ("max_sessions", 0, ValueError),
        ("max_sessions", -5, ValueError),
        ("max_sessions", 10.0, TypeError),
        ("max_sessions", "10000", TypeError),
        ("channel_layer_alias", "", TypeError),
        ("client_open_rate", 0, ValueError),
        ("client_open_rate", "10", TypeError),
        ("client_open_burst", 0, ValueError),
        ("client_open_burst", 1.5, TypeError),
        ("claim_window", 0, ValueError),
        ("claim_window", None, TypeError),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_argument(
    name: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=rf"TransportRouter\({name}=\.\.\.\)"):
        TransportRouter({"websocket": apps.raw_echo}, **{name: value})


def test_unknown_setting_and_missing_websocket_app() -> None:
    with pytest.raises(TypeError, match=r"unknown setting.*resume_windw"):
        TransportRouter({"websocket": apps.raw_echo}, resume_windw=3)
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="'websocket'"):
        TransportRouter({"http": apps.http_hello})


# -- the resume buffer ------------------------------------------------------------------


async def _open_and_leave(h: Harness) -> str:
    sid: str = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    return sid


@pytest.mark.parametrize(
    ("settings", "command", "kept"),
    [({"buffer_messages": 10}, "count 25", 10), ({"buffer_bytes": 1000}, "big 2000", 0)],
    ids=["messages", "bytes"],
)
async def test_buffer_overflow_ends_the_session_cleanly(
    settings: dict[str, Any], command: str, kept: int
) -> None:
    async with harness(**settings) as h:
        sid = await _open_and_leave(h)
        send = h.url(ROOM, tidings="send", sid=sid)
        await send_items(h.client, send, [msg(1, command)], h.origin)
        await until(lambda: ("disconnect", 1013) in lifecycle())
        # The client comes back: what was buffered, then the end of the session.
        got = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid))
        assert got[0]["resumed"] is True
        assert texts(got) == [str(i) for i in range(kept)]
        assert got[-1] == {"type": "close", "code": 1013, "reason": "resume buffer full"}
        assert lifecycle() == [("connect", "longpoll"), ("disconnect", 1013)]


async def test_acknowledging_makes_room() -> None:
    async with harness(buffer_messages=10) as h:
        async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
            sid = (await stream.next())["sid"]
            send = h.url(ROOM, tidings="send", sid=sid)
            for round_ in range(3):
                cseq = round_ + 1
                await send_items(h.client, send, [msg(cseq, "count 8")], h.origin)
                got = [await stream.next() for _ in range(8)]
                assert texts(got) == [str(i) for i in range(8)]
                ack = {"ack": got[-1]["seq"]}
                assert (await send_items(h.client, send, [ack], h.origin)).status_code == 200
        assert ("disconnect", 1013) not in lifecycle()


# -- POST bodies ------------------------------------------------------------------------


async def test_post_size_limit() -> None:
    async with harness(max_post_size=100) as h:
        sid = await _open_and_leave(h)
        send = h.url(ROOM, tidings="send", sid=sid)
        fits = json.dumps([msg(1, "x" * 60)])
        assert len(fits) <= 100
        response = await h.client.post(send, content=fits, headers={"Origin": h.origin})
        assert response.status_code == 200
        big = json.dumps([msg(2, "x" * 200)]).encode()
        response = await h.client.post(send, content=big, headers={"Origin": h.origin})
        assert response.status_code == 413
        assert response.headers["connection"] == "close"

        # Chunked, no Content-Length: refused once the body passes the limit.
        reader, writer = await open_conn(h.running.port)
        target = send.removeprefix(h.origin)
        cookie = "; ".join(f"{k}={v}" for k, v in h.client.cookies.items())
        head = (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {h.origin}\r\n"
            f"Cookie: {cookie}\r\n"
        )
        writer.write(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(big), 30):
            piece = big[start : start + 30]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        response_413 = await read_response(reader)
        writer.close()
        assert response_413.status == 413
        assert [d for e, _, d in apps.EVENTS if e == "receive"] == ["x" * 60]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"cseq": 1, "text": "x"}', "must be a JSON array"),
        (b"[1]", "must be a JSON object"),
        (b'[{"cseq": 0, "text": "x"}]', "cseq must be an integer"),
        (b'[{"cseq": true, "text": "x"}]', "cseq must be an integer"),
        (b'[{"cseq": 1}]', "exactly one of"),
        (b'[{"cseq": 1, "text": "x", "bytes": "eA=="}]', "exactly one of"),
        (b'[{"cseq": 1, "text": 5}]', "'text' must be a string"),
        (b'[{"cseq": 1, "bytes": 5}]', "'bytes' must be a base64 string"),
        (b'[{"cseq": 1, "bytes": "***"}]', "not valid base64"),
        (b'[{"ack": -1}]', "ack must be an integer"),
        (b'[{"hello": 1}]', "unknown client message"),
    ],
)
async def test_bad_bodies_get_400(h: Harness, body: bytes, reason: str) -> None:
    sid = await _open_and_leave(h)
    send = h.url(ROOM, tidings="send", sid=sid)
    response = await h.client.post(send, content=body, headers={"Origin": h.origin})
    assert response.status_code == 400
    assert reason in response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize(("sid", "status"), [("nonsense", 404), ("", 400)])
async def test_unknown_session_gets_404(h: Harness, sid: str, status: int) -> None:
    await _open_and_leave(h)
    send = h.url(ROOM, tidings="send", sid=sid)
    response = await send_items(h.client, send, [msg(1, "x")], h.origin)
    assert response.status_code == status


async def test_session_of_a_process_that_does_not_answer() -> None:
    async with harness(remote_timeout=0.2) as h:
        sid = make_sid("A" * 32, "tidings-sessions.abc!def")  # signed, nobody reads that port
        send = h.url(ROOM, tidings="send", sid=sid)
        response = await send_items(h.client, send, [msg(1, "x")], h.origin)
        assert response.status_code == 503
        close = h.url(ROOM, tidings="close", sid=sid)
        assert (await h.client.post(close, headers={"Origin": h.origin})).status_code == 503
        fresh = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid))
        assert fresh[0]["resumed"] is False and fresh[0]["sid"] != sid


async def test_forged_token_with_this_process_port_gets_404(h: Harness) -> None:
    sid = await _open_and_leave(h)
    token, _, port = sid.partition(".")
    forged = ("B" if token[0] != "B" else "C") + token[1:] + "." + port
    response = await send_items(h.client, h.url(ROOM, tidings="send", sid=forged), [], h.origin)
    assert response.status_code == 404
    assert (
        await send_items(h.client, h.url(ROOM, tidings="send", sid=sid), [], h.origin)
    ).json() == {"cack": 0}


# -- holds and heartbeats ---------------------------------------------------------------


async def test_poll_hold() -> None:
    async with harness(poll_hold=0.3) as h:
        sid = await _open_and_leave(h)
        started = time.monotonic()
        got = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid))
        assert 0.25 < time.monotonic() - started < 3
        assert len(got) == 1 and got[0]["type"] == "open"


async def test_sse_heartbeat() -> None:
    async with (
        harness(sse_heartbeat=0.1) as h,
        sse(h.client, h.url(ROOM, tidings="sse")) as stream,
    ):
        sid = (await stream.next())["sid"]
        await asyncio.sleep(0.35)
        send = h.url(ROOM, tidings="send", sid=sid)
        await send_items(h.client, send, [msg(1, "after")], h.origin)
        assert (await stream.next())["text"] == "after"
        assert stream.raw.count(b":\n\n") >= 2


# -- sessions per user ------------------------------------------------------------------


async def test_max_sessions_per_user(logged_in: LoggedIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tidings.transports")
    async with harness(max_sessions_per_user=2) as h:
        alice, bob = await logged_in(), await logged_in()
        url = h.url(ROOM, tidings="poll")
        sids = [(await poll(h.client, url, headers=alice.headers))[0]["sid"] for _ in range(2)]
        started = time.monotonic()
        for _ in range(5):
            refused = await h.client.get(url, headers=alice.headers)
            assert refused.status_code == 429
        # One user's refusals log one warning a second at most.
        elapsed = time.monotonic() - started
        warnings = [r for r in caplog.records if "max_sessions_per_user" in r.getMessage()]
        assert 1 <= len(warnings) <= 1 + int(elapsed), (len(warnings), elapsed)
        headers = {**alice.headers, "Origin": h.origin}
        with pytest.raises(InvalidStatus) as denied:
            async with connect(h.ws_url(ROOM, tidings="ws"), additional_headers=headers):
                pass
        assert denied.value.response.status_code == 429
        await poll(h.client, url, headers=bob.headers)  # other users are not affected
        for _ in range(3):
            await poll(h.client, url)  # nor anonymous clients
        # Ending one of Alice's sessions makes room for a new one.
        close = h.url(ROOM, tidings="close", sid=sids[0])
        assert (await h.client.post(close, headers=headers)).status_code == 204
        await poll(h.client, url, headers=alice.headers)
        assert (await h.client.get(url, headers=alice.headers)).status_code == 429


# -- sessions per process ---------------------------------------------------------------


async def _refused_over_max_sessions(h: Harness, retry_after: str, **params: str) -> None:
    """A new session over ``poll``, ``sse`` and ``ws`` gets 503 with ``Retry-After``."""
    for action in ("poll", "sse"):
        refused = await h.client.get(h.url(ROOM, tidings=action, **params))
        assert refused.status_code == 503, (action, refused.status_code)
        assert refused.headers["retry-after"] == retry_after
        assert "too many sessions" in refused.text
    with pytest.raises(InvalidStatus) as denied:
        async with session_ws(h.ws_url(ROOM, tidings="ws", **params), h.origin):
            pass
    assert denied.value.response.status_code == 503
    assert denied.value.response.headers["Retry-After"] == retry_after


async def test_max_sessions_counts_every_session_and_never_refuses_a_resume(
    logged_in: LoggedIn, caplog: pytest.LogCaptureFixture
) -> None:
    """Anonymous and authenticated sessions fill ``max_sessions``; then new ones get 503
    (SSE, long-poll, WebSocket handshake) with one warning, resumes still work, and a
    closed session frees its slot."""
    caplog.set_level(logging.WARNING, "tidings.transports")
    async with harness(max_sessions=3, poll_hold=0.2) as h:
        alice = await logged_in()
        url = h.url(ROOM, tidings="poll")
        first = (await poll(h.client, url))[0]["sid"]
        async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:  # live, attached
            second = (await stream.next())["sid"]
        third = (await poll(h.client, url, headers=alice.headers))[0]["sid"]
        assert h.sessions == 3
        caplog.clear()
        started = time.monotonic()
        await _refused_over_max_sessions(h, "30")
        # A sid that cannot be resumed asks for a new session: refused as well.
        await _refused_over_max_sessions(h, "30", sid="A" * 32 + "." + first.partition(".")[2])
        elapsed = time.monotonic() - started
        assert [("connect", t) for t in ("longpoll", "sse", "longpoll")] == lifecycle()
        assert h.sessions == 3
        # Six refusals, one warning a second at most (a slow machine may span two seconds).
        warnings = [r for r in caplog.records if "max_sessions" in r.getMessage()]
        assert 1 <= len(warnings) <= 1 + int(elapsed), (len(warnings), elapsed)

        # Resuming is never refused, over any transport.
        resumed = await poll(h.client, h.url(ROOM, tidings="poll", sid=first))
        assert resumed[0]["resumed"] is True
        async with session_ws(h.ws_url(ROOM, tidings="ws", sid=second), h.origin) as ws:
            opened = await ws_next(ws)
            assert opened["resumed"] is True and opened["sid"] == second
        async with sse(h.client, h.url(ROOM, tidings="sse", sid=third), alice.headers) as stream:
            opened = await stream.next()
            assert opened["resumed"] is True and opened["sid"] == third

        # Closing one makes room for exactly one new session.
        close = h.url(ROOM, tidings="close", sid=second)
        assert (await h.client.post(close, headers={"Origin": h.origin})).status_code == 204
        assert h.sessions == 2
        async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
            opened = await ws_next(ws)
            assert opened["resumed"] is False
            await _refused_over_max_sessions(h, "30")


async def test_an_expired_session_frees_its_slot() -> None:
    """A session whose client went away holds its slot for ``resume_window``, then frees
    it; ``Retry-After`` is the resume window rounded up."""
    async with harness(max_sessions=1, resume_window=0.2) as h:
        async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
            sid = (await stream.next())["sid"]
            await _refused_over_max_sessions(h, "1")  # attached: it cannot expire meanwhile
        await until(lambda: h.sessions == 0)
        await until(lambda: ("disconnect", 1006) in lifecycle())  # expired: its consumer is told
        fresh = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid))
        assert fresh[0]["resumed"] is False and fresh[0]["sid"] != sid
        assert h.sessions == 1
