"""Presence over the fallback transports: one user on SSE, one on long-polling, a real server.

The same presence consumer runs for each session (``TransportRouter``); the clients
read its ``presence.state`` and ``presence.diff`` messages as tidings.js does, and a
session that ends (``tidings=close``) is untracked like a closed WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from django.test import override_settings

from tests.server._helpers import serve
from tests.transports._client import SSE, Endpoint, last_seq, messages, poll, sse
from tidings import presence
from tidings.generic.websocket import AsyncWebsocketConsumer
from tidings.transports import TransportRouter

FAST = {"HEARTBEAT_INTERVAL": 0.05, "TIMEOUT": 0.25, "BATCH_WINDOW": 0.02, "SYNC_WAIT": 0.1}
HEADERS = {"X-Tidings": "1"}  # what tidings.js sends on every request


class Lobby(presence.AsyncPresenceMixin, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        name = self.scope["path"].strip("/").rpartition("/")[2]
        await self.presence_subscribe("lobby")
        await self.presence_track("lobby", key=name, meta={"name": name})


@pytest.fixture
def inmemory() -> Iterator[None]:
    backend = {"BACKEND": "tidings.layers.InMemoryChannelLayer"}
    with override_settings(CHANNEL_LAYERS={"default": backend}, TIDINGS_PRESENCE=FAST):
        yield


@pytest.fixture
async def server(inmemory: None, django_db: None) -> AsyncIterator[Endpoint]:
    router = TransportRouter({"websocket": Lobby.as_asgi()})
    async with serve(router) as running:
        try:
            yield Endpoint(running.port)
        finally:
            await router.aclose()
            await presence.aclose()


async def next_presence(stream: SSE) -> dict[str, Any]:
    while True:
        envelope = await stream.next()
        if "text" in envelope:
            parsed: dict[str, Any] = json.loads(envelope["text"])
            return parsed


async def test_sse_and_longpoll_users_see_each_other_join_and_leave(server: Endpoint) -> None:
    async with (
        httpx.AsyncClient(timeout=10, headers=HEADERS) as ann_client,
        httpx.AsyncClient(timeout=10, headers=HEADERS) as bob_client,
        sse(ann_client, server.url("/lobby/ann/", tidings="sse")) as ann,
    ):
        assert (await ann.next())["type"] == "open"
        assert await next_presence(ann) == {"type": "presence.state", "topic": "lobby", "state": {}}
        assert list((await next_presence(ann))["joins"]) == ["ann"]

        envelopes = await poll(bob_client, server.url("/lobby/bob/", tidings="poll"))
        sid = envelopes[0]["sid"]
        while len(messages(envelopes)) < 1:
            last = last_seq(envelopes)
            envelopes += await poll(
                bob_client, server.url("/lobby/bob/", tidings="poll", sid=sid, last=last)
            )
        state = json.loads(messages(envelopes)[0]["text"])
        assert state["type"] == "presence.state" and list(state["state"]) == ["ann"]

        joined = await next_presence(ann)
        assert list(joined["joins"]) == ["bob"]
        assert joined["joins"]["bob"]["metas"][0]["name"] == "bob"

        close = server.url("/lobby/bob/", tidings="close", sid=sid)
        assert (await bob_client.post(close, headers={"Origin": server.origin})).is_success
        left = await next_presence(ann)
        assert left["joins"] == {} and list(left["leaves"]) == ["bob"]
        assert list(await presence.list("lobby")) == ["ann"]
