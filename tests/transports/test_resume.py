"""Sessions outlive connections: resume exactly once and in order, expiry, take-over, close."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from . import apps
from ._client import (
    last_seq,
    messages,
    msg,
    poll,
    send_items,
    session_ws,
    sse,
    texts,
    ws_next,
)
from .conftest import Harness, harness

ROOM = "/ws/echo/lobby/"
N = 500


def lifecycle(instance: int | None = None) -> list[tuple[str, Any]]:
    """Connects and disconnects recorded by consumers (of one instance if given)."""
    return [
        (event, detail)
        for event, who, detail in apps.EVENTS
        if event != "receive" and (instance is None or who == instance)
    ]


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds (it watches another task's doing)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the recorder
            await asyncio.sleep(0.01)


async def test_sse_cut_mid_stream_then_resume_gets_everything_once(h: Harness) -> None:
    async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
        sid = (await stream.next())["sid"]
        send = h.url(ROOM, tidings="send", sid=sid)
        response = await send_items(h.client, send, [msg(1, f"count {N} 0.01")], h.origin)
        assert response.is_success
        got = [await stream.next() for _ in range(37)]
        assert h.seq(sid) < N  # the connection is cut while the consumer is still sending
    assert texts(got) == [str(i) for i in range(37)]
    async with sse(h.client, h.url(ROOM, tidings="sse", sid=sid, last=last_seq(got))) as stream:
        opened = await stream.next()
        assert opened["type"] == "open" and opened["resumed"] is True
        assert opened["sid"] == sid and opened["cack"] == 1
        while last_seq(got) < N:
            got.append(await stream.next())
    assert texts(got) == [str(i) for i in range(N)]
    assert [e["seq"] for e in messages(got)] == list(range(1, N + 1))
    assert lifecycle() == [("connect", "sse")]  # no disconnect, no second connect


async def test_websocket_cut_then_resume_over_sse_and_poll(h: Harness) -> None:
    got: list[dict[str, Any]] = []
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        sid = (await ws_next(ws))["sid"]
        await ws.send(json.dumps(msg(1, f"count {N} 0.01")))
        got += [await ws_next(ws) for _ in range(10)]
        assert h.seq(sid) < N
        ws.transport.abort()  # no closing handshake: a dead network
    async with sse(h.client, h.url(ROOM, tidings="sse", sid=sid, last=last_seq(got))) as stream:
        assert (await stream.next())["resumed"] is True
        got += [await stream.next() for _ in range(100)]
    while last_seq(got) < N:
        batch = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid, last=last_seq(got)))
        assert batch[0]["type"] == "open" and batch[0]["resumed"] is True
        got += batch[1:]
    assert texts(got) == [str(i) for i in range(N)]
    assert lifecycle() == [("connect", "websocket")]


async def test_websocket_resume_and_client_message_dedup(h: Harness) -> None:
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        sid = (await ws_next(ws))["sid"]
        await ws.send(json.dumps(msg(1, "a")))
        assert (await ws_next(ws))["text"] == "a"
    # A client that is unsure whether cseq 1 arrived sends it again: dropped.
    url = h.ws_url(ROOM, tidings="ws", sid=sid, last=1)
    async with session_ws(url, h.origin) as ws:
        opened = await ws_next(ws)
        assert opened["resumed"] is True and opened["cack"] == 1 and opened["seq"] == 1
        await ws.send(json.dumps([msg(1, "a"), msg(2, "b")]))
        assert await ws_next(ws) == {"seq": 2, "text": "b"}
    received = [d for e, _, d in apps.EVENTS if e == "receive"]
    assert received == ["a", "b"]


async def test_gap_in_cseq_stops_the_batch(h: Harness) -> None:
    sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    send = h.url(ROOM, tidings="send", sid=sid)
    response = await send_items(h.client, send, [msg(1, "a"), msg(3, "c")], h.origin)
    assert response.json() == {"cack": 1}
    response = await send_items(h.client, send, [msg(2, "b"), msg(3, "c")], h.origin)
    assert response.json() == {"cack": 3}
    await until(lambda: len([e for e in apps.EVENTS if e[0] == "receive"]) == 3)
    assert [d for e, _, d in apps.EVENTS if e == "receive"] == ["a", "b", "c"]


async def test_last_event_id_counts_as_last(h: Harness) -> None:
    sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    send = h.url(ROOM, tidings="send", sid=sid)
    await send_items(h.client, send, [msg(1, "count 5")], h.origin)
    while len(messages(await poll(h.client, h.url(ROOM, tidings="poll", sid=sid)))) < 5:
        pass
    url = h.url(ROOM, tidings="sse", sid=sid)
    async with sse(h.client, url, headers={"Last-Event-ID": "3"}) as stream:
        assert (await stream.next())["type"] == "open"
        assert await stream.next() == {"seq": 4, "text": "3"}
        assert await stream.next() == {"seq": 5, "text": "4"}


async def test_acknowledged_messages_cannot_be_replayed(h: Harness) -> None:
    sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    send = h.url(ROOM, tidings="send", sid=sid)
    await send_items(h.client, send, [msg(1, "count 5")], h.origin)
    while len(messages(await poll(h.client, h.url(ROOM, tidings="poll", sid=sid)))) < 5:
        pass
    assert (await send_items(h.client, send, [{"ack": 5}], h.origin)).json() == {"cack": 1}
    # Asking for messages the client acknowledged means it lost its state.
    fresh = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid, last=2))
    assert fresh[0]["resumed"] is False and fresh[0]["sid"] != sid
    # So does claiming messages that were never sent.
    fresh = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid, last=99))
    assert fresh[0]["resumed"] is False


async def test_newest_connection_wins(h: Harness) -> None:
    async with sse(h.client, h.url(ROOM, tidings="sse")) as first:
        sid = (await first.next())["sid"]
        async with sse(h.client, h.url(ROOM, tidings="sse", sid=sid)) as second:
            assert (await second.next())["resumed"] is True
            assert await first.ended()  # the older stream ends
            async with session_ws(h.ws_url(ROOM, tidings="ws", sid=sid), h.origin) as ws:
                assert (await ws_next(ws))["resumed"] is True
                assert await second.ended()
                url = h.ws_url(ROOM, tidings="ws", sid=sid)
                async with session_ws(url, h.origin) as newer:
                    assert (await ws_next(newer))["resumed"] is True
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws_next(ws)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
                    await newer.send(json.dumps(msg(1, "still here")))
                    assert (await ws_next(newer))["text"] == "still here"
    assert lifecycle() == [("connect", "sse")]


async def test_consumer_close_reaches_a_client_that_comes_back(h: Harness) -> None:
    sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    send = h.url(ROOM, tidings="send", sid=sid)
    await send_items(h.client, send, [msg(1, "count 2"), msg(2, "close 4005")], h.origin)
    await until(lambda: ("disconnect", 4005) in lifecycle())
    async with sse(h.client, h.url(ROOM, tidings="sse", sid=sid)) as stream:
        assert (await stream.next())["resumed"] is True
        assert texts([await stream.next(), await stream.next()]) == ["0", "1"]
        assert await stream.next() == {"type": "close", "code": 4005, "reason": ""}
        assert await stream.ended()
    assert lifecycle() == [("connect", "longpoll"), ("disconnect", 4005)]


async def test_client_close_ends_the_session(h: Harness) -> None:
    sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    close = h.url(ROOM, tidings="close", sid=sid)
    response = await h.client.post(close, headers={"Origin": h.origin})
    assert response.status_code == 204
    await until(lambda: ("disconnect", 1000) in lifecycle())
    send = h.url(ROOM, tidings="send", sid=sid)
    assert (await send_items(h.client, send, [msg(1, "x")], h.origin)).status_code == 404
    assert (await h.client.post(close, headers={"Origin": h.origin})).status_code == 204
    assert h.sessions == 0


async def test_close_item_over_websocket(h: Harness) -> None:
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        await ws_next(ws)
        await ws.send(json.dumps({"type": "close"}))
        with pytest.raises(ConnectionClosed):
            await ws_next(ws)
    await until(lambda: ("disconnect", 1000) in lifecycle())


@pytest.mark.usefixtures("django_db")
async def test_expiry_after_the_resume_window() -> None:
    async with harness(resume_window=0.3, poll_hold=0.1) as h:
        sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
        await until(lambda: ("disconnect", 1006) in lifecycle(), timeout=3)
        assert h.sessions == 0
        fresh = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid))
        assert fresh[0]["resumed"] is False and fresh[0]["sid"] != sid
        send = h.url(ROOM, tidings="send", sid=sid)
        assert (await send_items(h.client, send, [msg(1, "x")], h.origin)).status_code == 404
        # A client that keeps polling keeps its session alive well past the window.
        sid = fresh[0]["sid"]
        for _ in range(6):
            await asyncio.sleep(0.1)
            assert (await poll(h.client, h.url(ROOM, tidings="poll", sid=sid)))[0]["resumed"]
        assert lifecycle() == [
            ("connect", "longpoll"),
            ("disconnect", 1006),
            ("connect", "longpoll"),
        ]
