"""Who may use a session: origins, users, refusals, malformed requests; what the scope holds."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from . import apps
from ._client import msg, poll, send_items, session_ws, sse, texts, ws_next
from .conftest import Harness, LoggedIn
from .test_resume import lifecycle

ROOM = "/ws/echo/lobby/"


# -- origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),  # same-origin EventSource/fetch GET: no Origin, no fetch metadata (old browser)
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "none"}, 403),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://127.0.0.1:1"}, 200),  # the validator allows the host, any port
    ],
)
async def test_origin_rules_for_gets(h: Harness, headers: dict[str, str], status: int) -> None:
    for action in ("poll", "sse"):
        url = h.url(ROOM, tidings=action)
        async with h.client.stream("GET", url, headers=headers) as response:
            assert response.status_code == status, (action, headers)
    if status == 403:
        assert apps.EVENTS == []  # refused before any consumer ran
        assert h.sessions == 0


async def test_posts_need_an_allowed_origin(h: Harness) -> None:
    sid = (await poll(h.client, h.url(ROOM, tidings="poll")))[0]["sid"]
    send = h.url(ROOM, tidings="send", sid=sid)
    body = json.dumps([msg(1, "x")])
    assert (await h.client.post(send, content=body)).status_code == 403  # no Origin on a POST
    evil = {"Origin": "http://evil.example"}
    assert (await h.client.post(send, content=body, headers=evil)).status_code == 403
    close = h.url(ROOM, tidings="close", sid=sid)
    assert (await h.client.post(close, headers=evil)).status_code == 403
    assert (await send_items(h.client, send, [msg(1, "x")], h.origin)).status_code == 200


async def test_websocket_session_with_a_foreign_origin_is_refused(h: Harness) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with session_ws(h.ws_url(ROOM, tidings="ws"), "http://evil.example"):
            pass
    assert refused.value.response.status_code == 403


# -- users --------------------------------------------------------------------------------


async def test_sessions_are_bound_to_their_user(h: Harness, logged_in: LoggedIn) -> None:
    alice, bob = await logged_in(), await logged_in()
    opened = (await poll(h.client, h.url(ROOM, tidings="poll"), headers=alice.headers))[0]
    sid = opened["sid"]
    send = h.url(ROOM, tidings="send", sid=sid)
    as_alice = {**alice.headers, "Origin": h.origin}
    assert (await h.client.post(send, content="[]", headers=as_alice)).json() == {"cack": 0}
    for intruder in ({**bob.headers, "Origin": h.origin}, {"Origin": h.origin}):
        # Another user (or nobody) with Alice's session id: never Alice's session.
        response = await h.client.post(send, content=json.dumps([msg(1, "x")]), headers=intruder)
        assert response.status_code == 404
        got = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid), headers=intruder)
        assert got[0]["resumed"] is False and got[0]["sid"] != sid
        url = h.ws_url(ROOM, tidings="ws", sid=sid)
        async with connect(url, additional_headers=intruder) as ws:
            fresh = await ws_next(ws)
            assert fresh["resumed"] is False and fresh["sid"] != sid
    assert [d for e, _, d in apps.EVENTS if e == "receive"] == []
    # Alice still has hers.
    response = await send_items(h.client, send, [msg(1, "mine")], h.origin, alice.headers)
    assert response.json() == {"cack": 1}


async def test_scope_of_the_consumer(h: Harness, logged_in: LoggedIn) -> None:
    alice = await logged_in()
    path = "/ws/echo/kitchen/"
    summaries: dict[str, dict[str, Any]] = {}
    url = h.url(path, tidings="sse", mode="dark")
    async with sse(h.client, url, headers=alice.headers) as stream:
        sid = (await stream.next())["sid"]
        send = h.url(path, tidings="send", sid=sid, mode="dark")
        await send_items(h.client, send, [msg(1, "scope")], h.origin, alice.headers)
        summaries["sse"] = json.loads((await stream.next())["text"])
    opened = (await poll(h.client, h.url(path, tidings="poll")))[0]
    send = h.url(path, tidings="send", sid=opened["sid"])
    await send_items(h.client, send, [msg(1, "scope")], h.origin)
    got = await poll(h.client, h.url(path, tidings="poll", sid=opened["sid"]))
    summaries["longpoll"] = json.loads(texts(got)[0])
    async with session_ws(h.ws_url(path, a="b c", tidings="ws", z=""), h.origin) as ws:
        await ws_next(ws)
        await ws.send(json.dumps(msg(1, "scope")))
        summaries["websocket"] = json.loads((await ws_next(ws))["text"])
    sse_scope = summaries["sse"]
    assert sse_scope["transport"] == "sse"
    assert sse_scope["query_string"] == "mode=dark"
    assert sse_scope["user"] == alice.pk and sse_scope["authenticated"] is True
    assert sse_scope["origin"] == h.origin  # synthesized from Host
    assert summaries["longpoll"]["user"] is None
    assert summaries["longpoll"]["query_string"] == ""
    assert summaries["websocket"]["query_string"] == "a=b+c&z="
    for transport, scope in summaries.items():
        assert scope["transport"] == transport
        assert scope["type"] == "websocket"
        assert scope["path"] == path
        assert scope["subprotocols"] == []
        assert scope["url_route"] == {"args": [], "kwargs": {"room": "kitchen"}}
        assert scope["session"] is True
        assert scope["handle"] is False  # the session handle is not the consumer's business


# -- refusals and errors ------------------------------------------------------------------


async def test_a_refusing_consumer_gets_403_everywhere(h: Harness) -> None:
    for action in ("sse", "poll"):
        response = await h.client.get(h.url("/ws/refuse/", tidings=action))
        assert response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with session_ws(h.ws_url("/ws/refuse/", tidings="ws"), h.origin):
            pass
    assert refused.value.response.status_code == 403
    assert [e[0] for e in apps.EVENTS] == ["refuse"] * 3
    assert h.sessions == 0


async def test_consumer_errors_are_500_without_details(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "tidings.transports")
    response = await h.client.get(h.url("/ws/fail/", tidings="poll"))
    assert response.status_code == 500
    assert "consumer bug" not in response.text and "Traceback" not in response.text
    assert "failed before accepting" in caplog.text
    with pytest.raises(InvalidStatus) as failed:
        async with session_ws(h.ws_url("/ws/fail/", tidings="ws"), h.origin):
            pass
    assert failed.value.response.status_code == 500


async def test_an_application_without_session_support_gets_501(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    response = await h.client.get(h.url("/ws/plain/", tidings="poll"))
    assert response.status_code == 501
    assert "fallback()" in caplog.text


@pytest.mark.parametrize(
    ("method", "query", "status"),
    [
        ("GET", "tidings=nope", 400),
        ("GET", "tidings=ws", 400),
        ("POST", "tidings=sse", 405),
        ("GET", "tidings=send&sid=x", 405),
        ("PUT", "tidings=close&sid=x", 405),
        ("GET", "tidings=poll&last=-1", 400),
        ("GET", "tidings=poll&last=abc", 400),
        ("GET", "tidings=poll&tidings=sse", 400),
        ("POST", "tidings=send", 400),
        ("POST", "tidings=close", 400),
    ],
)
async def test_malformed_session_requests(h: Harness, method: str, query: str, status: int) -> None:
    response = await h.client.request(
        method, f"{h.origin}{ROOM}?{query}", headers={"Origin": h.origin}
    )
    assert response.status_code == status
    assert apps.EVENTS == []


async def test_other_query_parameters_leave_requests_alone(h: Harness) -> None:
    assert (await h.client.get(h.url(ROOM, nottidings="sse"))).text == "hello"
    assert lifecycle() == []
