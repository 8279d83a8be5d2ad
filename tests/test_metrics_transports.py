"""Metrics of the transports, bumped from the app in the server's process.

The real server and a ``TransportRouter`` run in the test's loop (the transports'
harness), with metrics on in this process, as in a worker of ``--metrics-bind``: SSE and
long-poll sessions open, resume and expire, the held requests show as open connections,
and each transport limit hit is counted once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.transports._client import msg, poll, sse
from tests.transports.conftest import harness
from tests.transports.test_resume import until
from tidings import _metrics

ROOM = "/ws/echo/lobby/"


@pytest.fixture
def metrics(django_db: None) -> Iterator[_metrics.Metrics]:
    assert _metrics.ACTIVE is None
    try:
        yield _metrics.enable()
    finally:
        _metrics.disable()


async def test_sessions_opened_resumed_expired_and_held_requests(
    metrics: _metrics.Metrics,
) -> None:
    async with harness(max_sessions=1, resume_window=0.3, poll_hold=0.5, max_post_size=1024) as h:
        async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
            sid = (await stream.next())["sid"]
            assert metrics.open_sse == 1
            assert metrics.sessions == {"opened": 1, "resumed": 0, "expired": 0}
            # A second session is one over max_sessions: 503, counted as that limit.
            refused = await h.client.get(h.url(ROOM, tidings="poll"))
            assert refused.status_code == 503
            assert metrics.limits["max_sessions"] == 1
        await until(lambda: metrics.open_sse == 0)
        # A POST over max_post_size: 413, counted as that limit.
        big = json.dumps([msg(1, "x" * 2000)]).encode()
        send = h.url(ROOM, tidings="send", sid=sid)
        response = await h.client.post(send, content=big, headers={"Origin": h.origin})
        assert response.status_code == 413
        assert metrics.limits["max_post_size"] == 1
        # The client comes back within resume_window: resumed, over long-polling; the
        # poll is held (nothing to send) for poll_hold.
        held = asyncio.ensure_future(poll(h.client, h.url(ROOM, tidings="poll", sid=sid)))
        await until(lambda: metrics.open_longpoll == 1)
        resumed = await held
        assert resumed[0]["resumed"] is True
        assert metrics.sessions["resumed"] == 1
        assert metrics.open_longpoll == 0
        # Then it goes for good: the session expires once.
        await until(lambda: h.sessions == 0)
        assert metrics.sessions == {"opened": 1, "resumed": 1, "expired": 1}
    others = {k: v for k, v in metrics.limits.items() if k not in ("max_sessions", "max_post_size")}
    assert set(others.values()) == {0}
    assert metrics.app_exceptions == {"http": 0, "websocket": 0, "session": 0}
