"""TransportRouter as an ASGI application: lifespan, refusals, shutdown, the consumer hook."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tidings.consumer import TRANSPORT_SESSION_KEY
from tidings.testing import ApplicationCommunicator
from tidings.transports import _manager as manager_module

from . import apps
from ._client import msg, poll, send_items, session_ws, sse, ws_next
from .conftest import Harness, harness
from .test_resume import lifecycle

ROOM = "/ws/echo/lobby/"


async def test_lifespan_is_answered_and_shutdown_ends_sessions(h: Harness) -> None:
    async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
        await stream.next()
        lifespan = ApplicationCommunicator(h.router, {"type": "lifespan"})
        await lifespan.send_input({"type": "lifespan.startup"})
        assert await lifespan.receive_output(5) == {"type": "lifespan.startup.complete"}
        await lifespan.send_input({"type": "lifespan.shutdown"})
        assert await lifespan.receive_output(10) == {"type": "lifespan.shutdown.complete"}
        await lifespan.wait(5)
        assert await stream.next() == {
            "type": "close",
            "code": 1001,
            "reason": "server shutting down",
        }
        assert await stream.ended()
    assert lifecycle() == [("connect", "sse"), ("disconnect", 1001)]
    assert h.sessions == 0


async def test_an_inner_lifespan_application_still_runs() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: object, receive: object, send: object) -> None:
        while True:
            message = await receive()  # type: ignore[operator]
            seen.append(message["type"])
            await send({"type": message["type"] + ".complete"})  # type: ignore[operator]
            if message["type"] == "lifespan.shutdown":
                return

    from tidings.transports import TransportRouter

    router = TransportRouter({"websocket": apps.raw_echo, "lifespan": lifespan_app})
    lifespan = ApplicationCommunicator(router, {"type": "lifespan"})
    await lifespan.send_input({"type": "lifespan.startup"})
    assert await lifespan.receive_output(5) == {"type": "lifespan.startup.complete"}
    await lifespan.send_input({"type": "lifespan.shutdown"})
    assert await lifespan.receive_output(5) == {"type": "lifespan.shutdown.complete"}
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


async def test_refusal_responses_are_passed_on(h: Harness) -> None:
    # Refused by the stack (before any session) and by a session's own application.
    for path in ("/ws/gate/", "/ws/deny/"):
        for action in ("sse", "poll"):
            response = await h.client.get(h.url(path, tidings=action))
            assert response.status_code == 401, (path, action)
            assert response.text == "ticket please"
            assert response.headers["x-why"] == "no ticket"
        with pytest.raises(InvalidStatus) as refused:
            async with session_ws(h.ws_url(path, tidings="ws"), h.origin):
                pass
        assert refused.value.response.status_code == 401
        assert refused.value.response.body == b"ticket please"
    assert h.sessions == 0


async def test_a_consumer_that_never_decides_gets_503(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "DECISION_TIMEOUT", 0.2)
    response = await h.client.get(h.url("/ws/undecided/", tidings="poll"))
    assert response.status_code == 503
    assert h.sessions == 0


async def test_sse_stream_ends_when_the_client_closes_the_session(h: Harness) -> None:
    async with sse(h.client, h.url(ROOM, tidings="sse")) as stream:
        sid = (await stream.next())["sid"]
        close = h.url(ROOM, tidings="close", sid=sid)
        assert (await h.client.post(close, headers={"Origin": h.origin})).status_code == 204
        assert await stream.ended()
    assert lifecycle() == [("connect", "sse"), ("disconnect", 1000)]


async def test_fallback_passes_plain_websockets_through(h: Harness) -> None:
    async with connect(h.ws_url("/ws/raw/"), additional_headers={"Origin": h.origin}) as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), 5) == "raw:x"
    assert h.sessions == 0


async def test_consumer_hook_runs_instances_without_a_handle() -> None:
    app = apps.EchoConsumer.as_asgi()
    scope = {
        "type": "websocket",
        "path": "/",
        "headers": [],
        "url_route": {"args": (), "kwargs": {}},
    }
    assert TRANSPORT_SESSION_KEY not in scope
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "websocket.connect"})
    assert (await communicator.receive_output(5))["type"] == "websocket.accept"
    await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
    await communicator.wait(5)


@pytest.mark.usefixtures("django_db")
async def test_websocket_session_survives_a_server_side_error_in_a_frame() -> None:
    async with harness() as h:
        async with session_ws(h.ws_url(ROOM, tidings="ws"), h.origin) as ws:
            sid = (await ws_next(ws))["sid"]
            await ws.send("not json")
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1007
        url = h.ws_url(ROOM, tidings="ws", sid=sid)
        async with session_ws(url, h.origin) as ws:
            assert (await ws_next(ws))["resumed"] is True
            await ws.send(b"binary")
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1003
        send = h.url(ROOM, tidings="send", sid=sid)
        assert (await send_items(h.client, send, [msg(1, "ok")], h.origin)).json() == {"cack": 1}
        got = await poll(h.client, h.url(ROOM, tidings="poll", sid=sid))
        assert [e.get("text") for e in got[1:]] == ["ok"]
        assert lifecycle() == [("connect", "websocket")]
