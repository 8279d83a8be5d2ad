"""Hostile clients of the fallback transports (issue 13), over real sockets.

Each test drives one attack against a real server on 127.0.0.1 with default
settings unless it says otherwise, and checks the answer plus what the attack
was after: server memory (the worker's RSS from ``/proc``, Redis'
``used_memory``) where memory was the harm, a well-behaved client's latency
where that was the harm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.server._helpers import open_conn, read_response, serve
from tests.transports import apps
from tests.transports._client import Endpoint, msg, send_items, session_ws, sse, ws_next
from tests.transports.conftest import CLIENT_HEADERS, Harness, harness
from tests.transports.test_resume import until
from tests.transports.test_workers import fresh_connections, servers
from tidings.transports._manager import parse_sid

ROOM = "/ws/echo/lobby/"
MiB = 1024 * 1024

pytestmark = pytest.mark.usefixtures("django_db")


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    """A transport test server with the default settings (in this process)."""
    async with harness() as running:
        yield running


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def open_session(client: httpx.AsyncClient, at: Endpoint) -> tuple[str, int]:
    """Open a session with a poll; its id and the pid of the worker that owns it."""
    response = await client.get(at.url(ROOM, tidings="poll"))
    assert response.status_code == 200, response.text
    return response.json()[0]["sid"], int(response.headers["x-pid"])


async def raw_post(port: int, target: str, origin: str, body: bytes, declared: int) -> int:
    """POST ``body`` (``declared`` in Content-Length) on a new connection; the status."""
    reader, writer = await open_conn(port)
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    try:
        writer.write(head.encode() + body)
        return (await read_response(reader)).status
    finally:
        writer.close()


# -- H1: forged session ids ---------------------------------------------------------------


async def test_forged_session_ids_reach_no_channel(redis_url: str, tmp_path: Path) -> None:
    """``sid=<random>.<channel>`` made the server layer.send the body to that channel."""
    store = redis.asyncio.from_url(redis_url)
    with servers(redis_url, tmp_path, workers=1, count=1) as (at,):
        async with fresh_connections() as client:
            sid, pid = await open_session(client, at)
            token, mac, port = sid.split(".", 2)
            await asyncio.sleep(0.2)  # let the worker settle after its first session
            keys, memory, resident = await store.dbsize(), await store.info("memory"), rss(pid)
            forged = [
                f"{secrets.token_urlsafe(24)}.{port}",  # the old format: any channel
                f"{secrets.token_urlsafe(24)}.{mac}.{port}",  # another token, our mac
                f"{token}.{mac}.tidings-sessions.victim!x",  # our mac, another channel
                f"{token}.{'A' * 22}.{port}",  # a made-up mac
            ]
            body = json.dumps([msg(1, "x" * 60_000)]).encode()
            started = time.monotonic()
            statuses = []
            for _ in range(25):
                for fake in forged:
                    target = at.url(ROOM, tidings="send", sid=fake).removeprefix(at.origin)
                    # Declared 1 MiB, nothing sent: the answer cannot wait for the body.
                    statuses.append(await raw_post(at.port, target, at.origin, b"", MiB))
                    statuses.append(await raw_post(at.port, target, at.origin, body, len(body)))
            elapsed = time.monotonic() - started
            assert set(statuses) == {404} and len(statuses) == 200
            assert elapsed < 5
            after = await store.info("memory")
            assert await store.dbsize() <= keys  # no message parked on any channel
            assert after["used_memory"] - memory["used_memory"] < MiB
            assert rss(pid) - resident < 50 * MiB
            # The real session is untouched and still works.
            send = at.url(ROOM, tidings="send", sid=sid)
            assert (await send_items(client, send, [msg(1, "hi")], at.origin)).json() == {"cack": 1}
    await store.aclose()


async def test_a_forged_id_is_refused_before_the_stack_runs(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    sid = (await h.client.get(h.url(ROOM, tidings="poll"))).json()[0]["sid"]
    apps.EVENTS.clear()
    token, mac, port = sid.split(".", 2)
    forged = f"{token}.{mac[::-1]}.{port}"
    assert parse_sid(sid) is not None and parse_sid(forged) is None
    for action in ("send", "close"):
        target = h.url(ROOM, tidings=action, sid=forged).removeprefix(h.origin)
        assert await raw_post(h.running.port, target, h.origin, b"", MiB) == 404
    assert apps.EVENTS == []  # no consumer, no middleware's user lookup got that far
    # Resuming with it opens a new session instead.
    got = (await h.client.get(h.url(ROOM, tidings="poll", sid=forged))).json()
    assert got[0]["resumed"] is False and got[0]["sid"] not in (sid, forged)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert sid not in logged and forged not in logged and token not in logged


# -- M1: anonymous sessions are bound to their browser ------------------------------------


@pytest.fixture
async def stranger() -> AsyncIterator[httpx.AsyncClient]:
    """Another HTTP client (another browser: no cookies of the victim)."""
    async with httpx.AsyncClient(timeout=10, headers=CLIENT_HEADERS) as client:
        yield client


async def test_an_anonymous_session_cannot_be_taken_over_with_its_id(
    h: Harness, stranger: httpx.AsyncClient
) -> None:
    async with h.client.stream("GET", h.url(ROOM, tidings="sse")) as response:
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("tidings_bk=")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert attributes == {f"path={ROOM}", "httponly", "samesite=lax"}  # http: no Secure
    async with sse(h.client, h.url(ROOM, tidings="sse")) as victim:
        opened = await victim.next()
        sid = opened["sid"]
        send = h.url(ROOM, tidings="send", sid=sid)
        # The stranger knows the id (e.g. from an access log), not the cookie.
        assert (await send_items(stranger, send, [msg(1, "evil")], h.origin)).status_code == 404
        assert (await send_items(stranger, send, [{"ack": 5}], h.origin)).status_code == 404
        close = h.url(ROOM, tidings="close", sid=sid)
        assert (await stranger.post(close, headers={"Origin": h.origin})).status_code == 204
        taken = (await stranger.get(h.url(ROOM, tidings="poll", sid=sid))).json()
        assert taken[0]["resumed"] is False and taken[0]["sid"] != sid
        async with session_ws(
            h.ws_url(ROOM, tidings="ws", sid=sid), h.origin, jar=httpx.Cookies()
        ) as ws:
            assert (await ws_next(ws))["resumed"] is False
        # None of it touched the victim's session: still attached, still working.
        assert (await send_items(h.client, send, [msg(1, "mine")], h.origin)).json() == {"cack": 1}
        assert (await victim.next())["text"] == "mine"
    assert [d for e, _, d in apps.EVENTS if e == "receive"] == ["mine"]


# -- M2: text that no WebSocket frame can carry -------------------------------------------


async def test_a_lone_surrogate_never_reaches_the_consumer(h: Harness) -> None:
    async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
        sid = (await stream.next())["sid"]
        send = h.url(ROOM, tidings="send", sid=sid)
        body = b'[{"cseq": 1, "text": "a\\ud800b"}]'
        response = await h.client.post(send, content=body, headers={"Origin": h.origin})
        assert response.status_code == 400 and "Unicode" in response.text
        # The session lives on: the consumer did not crash relaying it.
        good = "caf\u00e9 \U0001f600"
        assert (await send_items(h.client, send, [msg(1, good)], h.origin)).status_code == 200
        assert (await stream.next())["text"] == good
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        await ws_next(ws)
        await ws.send('{"cseq": 1, "text": "\\udfff"}')
        with pytest.raises(ConnectionClosed) as closed:
            await ws_next(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert [d for e, _, d in apps.EVENTS if e == "receive"] == [good]
    assert ("disconnect", 1011) not in [(e, d) for e, _, d in apps.EVENTS]


# -- M3: POSTs piling up on a busy session ------------------------------------------------


async def test_posts_to_a_busy_session_are_answered_at_once(redis_url: str, tmp_path: Path) -> None:
    with servers(redis_url, tmp_path, workers=1, count=1) as (at,):
        async with fresh_connections() as client:
            sid, pid = await open_session(client, at)
            send = at.url(ROOM, tidings="send", sid=sid)
            # "count 1 10": the consumer sends one message and then sleeps 10 s;
            # what comes next fills its inbox (1 MiB).
            response = await send_items(client, send, [msg(1, "count 1 10")], at.origin)
            assert response.json() == {"cack": 1}
            big = "x" * (900 * 1024)
            response = await send_items(client, send, [msg(2, big)], at.origin)
            assert response.json() == {"cack": 2}
            await asyncio.sleep(0.2)
            resident = rss(pid)

            async def post(cseq: int) -> tuple[int, float, str | None]:
                began = time.monotonic()
                answer = await send_items(client, send, [msg(cseq, big)], at.origin)
                return (
                    answer.status_code,
                    time.monotonic() - began,
                    answer.headers.get("retry-after"),
                )

            results = await asyncio.gather(*(post(3) for _ in range(60)))
            statuses = [status for status, _, _ in results]
            assert statuses == [429] * 60
            assert all(after == "1" for status, _, after in results if status == 429)
            # None waited for the consumer's 10 s sleep; 60 bodies of 900 KiB take up to a
            # few seconds on a loaded 2-core machine themselves.
            assert max(took for _, took, _ in results) < 7
            assert rss(pid) - resident < 50 * MiB


# -- L4: a session request for a path without a WebSocket route ---------------------------


async def test_no_route_is_404_without_a_traceback(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings")
    for _ in range(3):
        for action in ("poll", "sse"):
            response = await h.client.get(h.url("/nowhere/", tidings=action))
            assert response.status_code == 404
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            h.ws_url("/nowhere/", tidings="ws"), additional_headers={"Origin": h.origin}
        ):
            pass
    assert refused.value.response.status_code == 404
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not [r for r in caplog.records if r.exc_info]


# -- L1: one client filling max_sessions --------------------------------------------------


async def test_one_client_cannot_fill_the_session_table() -> None:
    """Sessions opened and never used go away in seconds; one address opens few."""
    apps.EVENTS.clear()
    router = apps.make_router(
        max_sessions=40, client_open_burst=20, client_open_rate=2, claim_window=0.5, poll_hold=0.1
    )
    async with (
        serve(router, proxy_headers=True) as running,
        httpx.AsyncClient(timeout=10, headers=CLIENT_HEADERS) as client,
    ):
        at = Endpoint(running.port)
        url = at.url(ROOM, tidings="poll")
        try:
            attacker = {"X-Forwarded-For": "203.0.113.7"}
            answers = [await client.get(url, headers=attacker) for _ in range(60)]
            statuses = [a.status_code for a in answers]
            assert statuses[:20] == [200] * 20 and set(statuses[20:]) <= {200, 429}
            assert statuses.count(200) <= 22
            assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 429)
            # Another client is not affected, and opens at once.
            victim = {"X-Forwarded-For": "198.51.100.9"}
            began = time.monotonic()
            response = await client.get(url, headers=victim)
            assert response.status_code == 200 and time.monotonic() - began < 1
            sid = response.json()[0]["sid"]
            await asyncio.sleep(0.3)
            again = await client.get(at.url(ROOM, tidings="poll", sid=sid), headers=victim)
            assert again.json()[0]["resumed"] is True  # claimed: the resume window applies
            # The attacker's sessions, never used again, are gone after claim_window.
            manager = router._managers
            assert manager is not None
            await until(lambda: len(manager.sessions) == 1, timeout=3)
            assert list(manager.sessions) == [sid.partition(".")[0]]
        finally:
            await router.aclose()


# -- L6: old browsers (no Origin, no fetch metadata) --------------------------------------


async def test_a_cookie_bearing_get_without_origin_needs_the_client_header(h: Harness) -> None:
    async with httpx.AsyncClient(timeout=10) as browser:  # sends neither Origin nor metadata
        victim_cookies = {"Cookie": "sessionid=abc; tidings_bk=" + "k" * 32}
        for action in ("poll", "sse"):
            url = h.url(ROOM, tidings=action)
            async with browser.stream("GET", url, headers=victim_cookies) as response:
                assert response.status_code == 403
        assert apps.EVENTS == [] and h.sessions == 0
        # tidings.js sends X-Tidings (a cross-site page cannot without a preflight).
        response = await browser.get(
            h.url(ROOM, tidings="poll"), headers={**victim_cookies, **CLIENT_HEADERS}
        )
        assert response.status_code == 200
        # Without cookies there is nobody to impersonate: allowed as before.
        assert (await browser.get(h.url(ROOM, tidings="poll"))).status_code == 200
