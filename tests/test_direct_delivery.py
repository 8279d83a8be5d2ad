"""Group messages of type ``websocket.send``: straight from the layer to idle members'
sockets, through the handler otherwise. Real server, real sockets, real consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import override_settings
from websockets.asyncio.client import ClientConnection, connect

from tests.server._helpers import Running, serve
from tidings._types import WEBSOCKET_DIRECT, ASGIApp, ASGIReceive, ASGISend, Message, Scope
from tidings.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer
from tidings.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from tidings.transports._request import SessionRequest, session_scope

GUARD = 10.0


class Member(AsyncWebsocketConsumer):
    """Joins "room"; counts how often its own handler forwarded a group message."""

    handled: list[str] = []  # shared on purpose: every instance records here

    async def connect(self) -> None:
        await self.channel_layer.group_add("room", self.channel_name)  # type: ignore[union-attr]
        await self.accept()
        await self.send(text_data="joined")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "slow":
            await asyncio.sleep(0.3)
            await self.send(text_data="after slow work")

    async def websocket_send(self, message: Message) -> None:
        Member.handled.append(message.get("text") or "")
        await super().websocket_send(message)


class SyncMember(WebsocketConsumer):
    def connect(self) -> None:
        from asgiref.sync import async_to_sync

        async_to_sync(self.channel_layer.group_add)("room", self.channel_name)  # type: ignore[union-attr]
        self.accept()
        self.send(text_data="joined")


def wrapping_send(inner: ASGIApp) -> ASGIApp:
    """A middleware that wraps ``send`` (as logging or metrics middleware might)."""

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        async def wrapped(message: Message) -> None:
            await send(message)

        await inner(scope, receive, wrapped)

    return app


@pytest.fixture(autouse=True)
async def fresh_layer() -> AsyncIterator[None]:
    Member.handled = []
    layer = get_channel_layer()
    assert layer is not None
    await layer.flush()
    yield
    await layer.flush()


def last_framed(srv: Running) -> str | bytes | None:
    """The payload the server's per-process frame cache holds."""
    assert srv.server.state is not None
    return srv.server.state.framed_payload


async def join(port: int, n: int, **kwargs: Any) -> list[ClientConnection]:
    clients = [await connect(f"ws://127.0.0.1:{port}/", **kwargs) for _ in range(n)]
    for client in clients:
        assert await asyncio.wait_for(client.recv(), GUARD) == "joined"
    return clients


async def test_idle_members_get_it_without_their_handler_running() -> None:
    layer = get_channel_layer()
    assert layer is not None
    async with serve(Member.as_asgi()) as srv:
        clients = await join(srv.port, 5, compression=None)
        await asyncio.sleep(0.05)  # every consumer is back waiting for its next message
        for n in range(3):
            await layer.group_send("room", {"type": "websocket.send", "text": f"news {n}"})
        for client in clients:
            for n in range(3):
                assert await asyncio.wait_for(client.recv(), GUARD) == f"news {n}"
        await layer.group_send("room", {"type": "websocket.send", "bytes": b"\x00binary"})
        for client in clients:
            assert await asyncio.wait_for(client.recv(), GUARD) == b"\x00binary"
        assert Member.handled == [], "idle members were served by the layer directly"
        # The frame was encoded once and shared: the cache holds the last payload.
        assert last_framed(srv) == b"\x00binary"
        for client in clients:
            await client.close()


async def test_a_busy_member_gets_it_after_its_own_sends() -> None:
    layer = get_channel_layer()
    assert layer is not None
    async with serve(Member.as_asgi()) as srv:
        [client] = await join(srv.port, 1)
        await client.send("slow")
        await asyncio.sleep(0.05)  # the consumer is inside its slow handler
        await layer.group_send("room", {"type": "websocket.send", "text": "broadcast"})
        assert await asyncio.wait_for(client.recv(), GUARD) == "after slow work"
        assert await asyncio.wait_for(client.recv(), GUARD) == "broadcast"
        assert Member.handled == ["broadcast"], "queued, then forwarded by the handler"
        await client.close()


async def test_a_wrapped_send_disables_the_direct_path() -> None:
    layer = get_channel_layer()
    assert layer is not None
    async with serve(wrapping_send(Member.as_asgi())) as srv:
        [client] = await join(srv.port, 1)
        await asyncio.sleep(0.05)
        await layer.group_send("room", {"type": "websocket.send", "text": "via handler"})
        assert await asyncio.wait_for(client.recv(), GUARD) == "via handler"
        assert Member.handled == ["via handler"]
        await client.close()


async def test_sync_consumers_and_compressed_connections() -> None:
    layer = get_channel_layer()
    assert layer is not None
    async with serve(SyncMember.as_asgi()) as srv:
        plain = await join(srv.port, 2, compression=None)
        deflated = await join(srv.port, 2)  # the websockets client offers permessage-deflate
        await asyncio.sleep(0.05)
        text = "compressible " * 50
        await layer.group_send("room", {"type": "websocket.send", "text": text})
        for client in plain + deflated:
            assert await asyncio.wait_for(client.recv(), GUARD) == text
        for client in plain + deflated:
            await client.close()


async def test_members_that_left_get_nothing_and_are_unregistered() -> None:
    layer = get_channel_layer()
    assert layer is not None
    async with serve(Member.as_asgi()) as srv:
        staying, leaving = await join(srv.port, 2)
        await leaving.close()
        await asyncio.sleep(0.1)
        assert len(layer._mailboxes.direct) == 1  # type: ignore[attr-defined]
        await layer.group_send("room", {"type": "websocket.send", "text": "still here"})
        assert await asyncio.wait_for(staying.recv(), GUARD) == "still here"
        await staying.close()
        for _ in range(100):
            if not layer._mailboxes.direct:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        assert layer._mailboxes.direct == {}  # type: ignore[attr-defined]


async def test_send_nowait_refuses_what_only_send_may_handle() -> None:
    results: list[bool] = []
    done = asyncio.Event()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        send_now = scope["extensions"][WEBSOCKET_DIRECT]["send_nowait"]
        await receive()
        results.append(send_now({"type": "websocket.send", "text": "early"}))  # not accepted
        await send({"type": "websocket.accept"})
        results.append(send_now({"type": "websocket.send", "text": "now"}))
        results.append(send_now({"type": "websocket.send", "bytes": b"raw"}))
        results.append(send_now({"type": "websocket.send"}))  # nothing to send
        results.append(send_now({"type": "websocket.send", "text": 5}))  # not a str
        results.append(send_now({"type": "websocket.send", "text": "\ud800"}))  # lone surrogate
        await send({"type": "websocket.close", "code": 1000})
        results.append(send_now({"type": "websocket.send", "text": "after close"}))
        done.set()
        await receive()

    async with serve(app) as srv, connect(f"ws://127.0.0.1:{srv.port}/") as client:
        assert await asyncio.wait_for(client.recv(), GUARD) == "now"
        assert await asyncio.wait_for(client.recv(), GUARD) == b"raw"
        await asyncio.wait_for(done.wait(), GUARD)
    assert results == [False, True, True, False, False, False, False]


class Forwarder(AsyncWebsocketConsumer):
    """Joins "room" and forwards ``room.message`` events through its handler (Channels style)."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("room", self.channel_name)  # type: ignore[union-attr]
        await self.accept()
        await self.send(text_data="joined")

    async def room_message(self, event: Message) -> None:
        await self.send(text_data=event["text"])


async def test_handlers_forwarding_one_group_message_share_its_frame() -> None:
    layer = get_channel_layer()
    assert layer is not None
    async with serve(Forwarder.as_asgi()) as srv:
        plain = await join(srv.port, 4, compression=None)
        deflated = await join(srv.port, 2)  # permessage-deflate: never the shared frame
        for n in range(3):
            await layer.group_send("room", {"type": "room.message", "text": f"news {n} é"})
        # Equal text in a new object, then other text: each is framed anew.
        await layer.group_send("room", {"type": "room.message", "text": "news 2 é"})
        await layer.group_send("room", {"type": "room.message", "text": "x" * 70_000})
        for client in plain + deflated:
            got = [await asyncio.wait_for(client.recv(), GUARD) for _ in range(5)]
            assert got == ["news 0 é", "news 1 é", "news 2 é", "news 2 é", "x" * 70_000]
        # Every member's handler sent the very same str: it was framed once.
        assert last_framed(srv) == "x" * 70_000
        for client in plain + deflated:
            await client.close()


# -- the extension: where it is offered, and a layer that ignores it ----------------------


async def test_the_extension_stays_out_of_transport_session_scopes() -> None:
    """A session's consumer never owns the request's connection: the session scope has
    extensions of its own, not the server's (over WebSocket or HTTP)."""
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    async with serve(app) as srv, connect(f"ws://127.0.0.1:{srv.port}/?tidings=ws"):
        pass
    [server_scope] = scopes
    server_extensions = server_scope["extensions"]
    assert WEBSOCKET_DIRECT in server_extensions
    http_scope: Scope = {**server_scope, "type": "http", "method": "GET", "scheme": "http"}
    http_scope["extensions"] = {"tidings.shutdown": {}}
    for outer in (server_scope, http_scope):
        before = dict(outer["extensions"])
        request = SessionRequest("ws" if outer is server_scope else "sse", None, 0, b"")
        inner = session_scope(outer, request, object(), "tidings.session")
        assert inner["type"] == "websocket"
        assert inner["extensions"] == {"websocket.http.response": {}}
        assert inner["extensions"] is not outer["extensions"]
        assert not [key for key in inner if key.startswith("tidings.") and key != "tidings.session"]
        assert outer["extensions"] == before  # the server's scope is left as it was


class PlainLayer(BaseChannelLayer):
    """Only Channels' contract (delegated to an in-memory layer): no direct delivery."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.inner = InMemoryChannelLayer(**options)
        self.offered: list[str] = []

    def set_direct(self, channel: str, send_now: Any) -> None:
        self.offered.append(channel)
        super().set_direct(channel, send_now)

    async def send(self, channel: str, message: Message) -> None:
        await self.inner.send(channel, dict(message))

    async def receive(self, channel: str) -> Message:
        return await self.inner.receive(channel)

    async def new_channel(self, prefix: str = "specific") -> str:
        return await self.inner.new_channel(prefix)

    async def group_add(self, group: str, channel: str) -> None:
        await self.inner.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self.inner.group_discard(group, channel)

    async def group_send(self, group: str, message: Message) -> None:
        await self.inner.group_send(group, dict(message))

    async def flush(self) -> None:
        await self.inner.flush()


class PlainMember(Member):
    channel_layer_alias = "plain"


async def test_a_layer_without_direct_delivery_queues_for_the_handler() -> None:
    layers = {
        "default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"},
        "plain": {"BACKEND": "tests.test_direct_delivery.PlainLayer"},
    }
    with override_settings(CHANNEL_LAYERS=layers):
        layer = get_channel_layer("plain")
        assert isinstance(layer, PlainLayer)
        async with serve(PlainMember.as_asgi()) as srv:
            clients = await join(srv.port, 2, compression=None)
            await asyncio.sleep(0.05)
            assert len(layer.offered) == 2  # offered by both consumers, and ignored
            await layer.group_send("room", {"type": "websocket.send", "text": "queued"})
            for client in clients:
                assert await asyncio.wait_for(client.recv(), GUARD) == "queued"
            assert Member.handled == ["queued", "queued"], "every member's handler sent it"
            for client in clients:
                await client.close()
            for _ in range(100):
                if len(layer.offered) == 4:
                    break
                await asyncio.sleep(0.02)
            assert len(layer.offered) == 4  # and withdrawn when each consumer ended
