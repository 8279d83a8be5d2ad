"""The cross-process paths in one process: two routers, two servers, one in-memory layer.

Each ``TransportRouter`` has its own session manager and port, so a session of one
is "remote" for the other and every request goes through the channel layer, as
between workers. The subprocess tests (``test_workers.py``) do the same with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tidings.transports import _remote as remote

from . import apps
from ._client import last_seq, msg, poll, send_items, sse, texts
from .conftest import Harness, harness
from .test_resume import lifecycle, until

ROOM = "/ws/echo/lobby/"

pytestmark = pytest.mark.usefixtures("django_db")


@contextlib.asynccontextmanager
async def two(**settings: float) -> AsyncIterator[tuple[Harness, Harness]]:
    async with harness(**settings) as a:
        events = list(apps.EVENTS)
        async with harness(**settings) as b:
            apps.EVENTS[:0] = events  # harness() clears the shared record
            b.client.cookies.jar = a.client.cookies.jar  # one browser, two processes
            yield a, b


async def test_requests_through_another_router_reach_the_session() -> None:
    async with two(poll_hold=0.2) as (a, b):
        async with sse(a.client, a.url(ROOM, tidings="sse")) as stream:
            sid = (await stream.next())["sid"]
            send = b.url(ROOM, tidings="send", sid=sid)
            response = await send_items(b.client, send, [msg(1, "via b")], b.origin)
            assert response.json() == {"cack": 1}
            assert (await stream.next())["text"] == "via b"
        # Resumed on B: the owner streams to B, B writes to the client.
        got = []
        url = b.url(ROOM, tidings="sse", sid=sid, last=1)
        async with sse(b.client, url) as stream:
            opened = await stream.next()
            assert opened["resumed"] is True and opened["cack"] == 1
            await send_items(b.client, send, [msg(2, "count 120")], b.origin)
            got = [await stream.next() for _ in range(120)]
        assert texts(got) == [str(i) for i in range(120)]
        batch = await poll(b.client, b.url(ROOM, tidings="poll", sid=sid, last=last_seq(got)))
        assert batch == [{**opened, "seq": 121, "cack": 2, "transport": "longpoll"}]
        assert b.sessions == 0 and a.sessions == 1
        close = b.url(ROOM, tidings="close", sid=sid)
        assert (await b.client.post(close, headers={"Origin": b.origin})).status_code == 204
        await until(lambda: ("disconnect", 1000) in lifecycle())
        assert a.sessions == 0


async def test_a_relaying_process_that_dies_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "KEEPALIVE", 0.1)
    async with two(resume_window=0.3) as (a, b):
        sid = (await poll(a.client, a.url(ROOM, tidings="poll")))[0]["sid"]
        async with sse(b.client, b.url(ROOM, tidings="sse", sid=sid)) as stream:
            assert (await stream.next())["resumed"] is True
            # B's session manager stops answering (its process "died").
            manager = b.router._managers
            assert manager is not None and manager._hub is not None
            await manager._hub.aclose()
            # A notices the silence, detaches, and the resume window runs out.
            await until(lambda: ("disconnect", 1006) in lifecycle(), timeout=5)
        assert a.sessions == 0


async def test_a_stream_relayed_from_an_owner_that_dies_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote, "KEEPALIVE", 0.1)
    async with two() as (a, b):
        sid = (await poll(a.client, a.url(ROOM, tidings="poll")))[0]["sid"]
        send = b.url(ROOM, tidings="send", sid=sid)
        async with sse(b.client, b.url(ROOM, tidings="sse", sid=sid)) as stream:
            assert (await stream.next())["resumed"] is True
            # Quiet for five keep-alive periods: the owner's keep-alives hold the stream.
            await asyncio.sleep(0.5)
            await send_items(b.client, send, [msg(1, "still there")], b.origin)
            assert (await stream.next())["text"] == "still there"
            # A, the owner, stops answering: its process died, and the session with it.
            manager = a.router._managers
            assert manager is not None and manager._hub is not None
            await manager._hub.aclose()
            # B ends the stream instead of holding the client on it for ever; the
            # client's resume then finds no owner and gets a new session.
            assert await stream.ended(timeout=5)


async def test_a_detach_before_the_owner_starts_forwarding_still_detaches() -> None:
    # The requester's "detach" can arrive between the owner's reply to "attach" and the
    # first step of the task that forwards the session's batches (its attach timed out,
    # say). The session must still be detached, so that its resume window runs out.
    async with harness(resume_window=0.2) as a:
        sid = (await poll(a.client, a.url(ROOM, tidings="poll")))[0]["sid"]
        manager = a.router._managers
        assert manager is not None and manager._hub is not None
        hub = manager._hub
        (session,) = manager.sessions.values()
        await until(lambda: session._attachment is None)  # the poll has detached
        attachment = session.attach(0)
        assert attachment is not None
        served = remote._Served(hub, attachment, "reply.elsewhere", "aid-1")
        hub._served["aid-1"] = served
        served.start()
        hub._dispatch({"type": remote.MESSAGE_TYPE, "op": "detach", "aid": "aid-1"})
        assert "aid-1" not in hub._served
        # The resume window runs out and the session goes, with its consumer.
        await until(lambda: a.sessions == 0, timeout=5)
        assert sid not in str(list(manager.sessions))
