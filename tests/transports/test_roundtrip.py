"""One consumer, three transports: a round trip over each, against the real server."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import connect

from . import apps
from ._client import last_seq, messages, msg, poll, send_items, session_ws, sse, texts, ws_next
from .conftest import Harness

ROOM = "/ws/echo/lobby/"


async def test_sse_round_trip(h: Harness) -> None:
    async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
        assert stream.response.status_code == 200
        headers = stream.response.headers
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        first = await stream.event()
        opened = json.loads(first.data)
        assert opened["type"] == "open"
        assert opened["resumed"] is False
        assert opened["transport"] == "sse"
        assert opened["seq"] == 0 and opened["cack"] == 0
        assert first.last_event_id == ""  # the open event has no id
        sid = opened["sid"]
        send = h.url(ROOM, tidings="send", sid=sid)
        response = await send_items(h.client, send, [msg(1, "hello"), msg(2, "world")], h.origin)
        assert response.status_code == 200
        assert response.json() == {"cack": 2}
        one = await stream.event()
        assert json.loads(one.data) == {"seq": 1, "text": "hello"}
        assert one.last_event_id == "1"
        assert await stream.next() == {"seq": 2, "text": "world"}
        assert b"id: 2\ndata: " in stream.raw
    assert [e[0] for e in apps.EVENTS[:3]] == ["connect", "receive", "receive"]


async def test_longpoll_round_trip(h: Harness) -> None:
    first = await poll(h.client, h.url(ROOM, tidings="poll"))
    assert len(first) == 1 and first[0]["type"] == "open"
    assert first[0]["transport"] == "longpoll"
    sid = first[0]["sid"]
    send = h.url(ROOM, tidings="send", sid=sid)
    bytes_item = {"cseq": 2, "bytes": base64.b64encode(b"\x00\xff").decode()}
    response = await send_items(h.client, send, [msg(1, "ping"), bytes_item], h.origin)
    assert response.json() == {"cack": 2}
    got: list[dict[str, Any]] = []
    while len(messages(got)) < 2:
        got += await poll(h.client, h.url(ROOM, tidings="poll", sid=sid, last=last_seq(got)))
    assert messages(got) == [{"seq": 1, "text": "ping"}, {"seq": 2, "bytes": "AP8="}]
    assert all(e["resumed"] for e in got if e.get("type") == "open")


async def test_longpoll_waits_for_a_message(h: Harness) -> None:
    sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    waiting = asyncio.create_task(poll(h.client, h.url(ROOM, tidings="poll", sid=sid, last=0)))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    send = h.url(ROOM, tidings="send", sid=sid)
    await send_items(h.client, send, [msg(1, "later")], h.origin)
    got = await asyncio.wait_for(waiting, 5)
    assert got[0]["type"] == "open" and got[0]["resumed"] is True
    assert texts(got) == ["later"]


async def test_websocket_session_round_trip(h: Harness) -> None:
    async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
        opened = await ws_next(ws)
        assert opened["type"] == "open" and opened["transport"] == "websocket"
        await ws.send(json.dumps(msg(1, "hi")))
        assert await ws_next(ws) == {"seq": 1, "text": "hi"}
        await ws.send(json.dumps({"ack": 1}))
        await ws.send(json.dumps(msg(2, "again")))
        assert await ws_next(ws) == {"seq": 2, "text": "again"}


async def test_plain_websocket_is_unchanged(h: Harness) -> None:
    async with connect(h.ws_url(ROOM), additional_headers={"Origin": h.origin}) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"  # no envelope
    async with connect(h.ws_url("/ws/plain/"), additional_headers={"Origin": h.origin}) as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), 5) == "raw:x"
    assert h.sessions == 0
    assert (await h.client.get(h.url("/anything/"))).text == "hello"


async def test_sync_consumer_and_fallback_wrapped_app(h: Harness) -> None:
    for path, expected in (("/ws/sync/", "sync:a"), ("/ws/raw/", "raw:a")):
        opened = (await poll(h.client, h.url(path, tidings="poll")))[0]
        send = h.url(path, tidings="send", sid=opened["sid"])
        assert (await send_items(h.client, send, [msg(1, "a")], h.origin)).status_code == 200
        got = await poll(h.client, h.url(path, tidings="poll", sid=opened["sid"]))
        assert texts(got) == [expected]
