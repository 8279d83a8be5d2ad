"""The ASGI app of the transports benchmark: one group, a broadcast endpoint, TransportRouter.

Every client of ``/ws/`` (a plain WebSocket, or a session over any transport) joins the
group ``bench`` and is sent ``ready``. ``POST /broadcast/?count=N&gap=S`` makes ``N``
``group_send`` calls ``S`` seconds apart, each carrying its number and the send time
(``time.time_ns()``), and answers when done. One process, the in-memory layer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={
        "default": {"BACKEND": "tidings.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 10000}}
    },
)
django.setup()

from django.urls import path  # noqa: E402

from tidings.generic.http import AsyncHttpConsumer  # noqa: E402
from tidings.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from tidings.routing import URLRouter  # noqa: E402
from tidings.transports import TransportRouter  # noqa: E402

GROUP = "bench"


class Member(AsyncWebsocketConsumer):
    groups = [GROUP]

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data="ready")

    async def bench_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class Broadcast(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        query = parse_qs(self.scope["query_string"].decode())
        count, gap = int(query["count"][0]), float(query["gap"][0])
        assert self.channel_layer is not None
        for i in range(count):
            text = f"{i} {time.time_ns()}"
            await self.channel_layer.group_send(GROUP, {"type": "bench.message", "text": text})
            await asyncio.sleep(gap)
        await self.send_response(200, b"done", headers=[(b"content-type", b"text/plain")])


application = TransportRouter(
    {
        "http": URLRouter([path("broadcast/", Broadcast.as_asgi())]),  # type: ignore[arg-type]
        "websocket": URLRouter([path("ws/", Member.as_asgi())]),  # type: ignore[arg-type]
    },
    # Every benchmark client comes from 127.0.0.1: lift the per-address opening limit
    # (10 a second, bursts of 100) that would otherwise refuse most of them with 429.
    client_open_rate=1_000_000,
    client_open_burst=1_000_000,
)
