"""The ASGI app of the soak benchmark (``soak.py``): echo, a group on Redis, fallback sessions.

Routes (``TransportRouter`` in front, so ``/ws/`` is also served over SSE, long-polling
and the session WebSocket):

* ``/echo/`` (WebSocket): every text message is sent back;
* ``/ws/`` (WebSocket or a session over any transport): joins the group ``soak`` on the
  Redis layer (``SOAK_REDIS_URL``), is sent ``ready``, echoes what it receives and
  forwards every ``soak.broadcast`` event;
* ``POST /soak/broadcast/``: one ``group_send`` to ``soak`` carrying a number;
* ``GET /soak/stats/``: this worker's pid, ``len(asyncio.all_tasks())``, the sessions of
  its ``TransportRouter``, its consumers between ``connect()`` and ``disconnect()``, its
  consumer instances still in memory (a ``WeakSet``; ``?gc=1`` collects garbage first)
  and ``sys.getallocatedblocks()``. The soak reads it every 10 s; nothing runs when
  nobody asks;
* ``GET /soak/tracemalloc/`` (only with ``SOAK_TRACEMALLOC=1``, which starts tracing at
  import): the first call keeps a snapshot, later ones answer the 25 biggest growths
  since it, by line, to find a leak.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tracemalloc
import weakref
from typing import Any

import django
from django.conf import settings

__all__ = ["application"]

if os.environ.get("SOAK_TRACEMALLOC") == "1":
    tracemalloc.start(10)

settings.configure(
    DEBUG=False,
    SECRET_KEY="soak-benchmark-only",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "tidings.layers.redis.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ["SOAK_REDIS_URL"]], "prefix": "soak"},
        }
    },
)
django.setup()

from django.urls import path  # noqa: E402

from tidings.generic.http import AsyncHttpConsumer  # noqa: E402
from tidings.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from tidings.routing import URLRouter  # noqa: E402
from tidings.transports import TransportRouter  # noqa: E402

GROUP = "soak"
#: Consumers between connect() and disconnect() in this process, by route.
OPEN = {"echo": 0, "member": 0}
#: Every consumer instance still in memory (after ``?gc=1``: still referenced).
INSTANCES: weakref.WeakSet[AsyncWebsocketConsumer] = weakref.WeakSet()
_baseline: list[tracemalloc.Snapshot] = []


class Counted(AsyncWebsocketConsumer):
    def __init__(self, **initkwargs: Any) -> None:
        super().__init__(**initkwargs)
        INSTANCES.add(self)


class Echo(Counted):
    async def connect(self) -> None:
        OPEN["echo"] += 1
        await self.accept()

    async def disconnect(self, code: int) -> None:
        OPEN["echo"] -= 1

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.send(text_data=text_data)


class Member(Counted):
    groups = [GROUP]

    async def connect(self) -> None:
        OPEN["member"] += 1
        await self.accept()
        await self.send(text_data="ready")

    async def disconnect(self, code: int) -> None:
        OPEN["member"] -= 1

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.send(text_data=text_data)

    async def soak_broadcast(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class Broadcast(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        assert self.channel_layer is not None
        number = self.scope["query_string"].decode().partition("n=")[2] or "0"
        await self.channel_layer.group_send(GROUP, {"type": "soak.broadcast", "text": f"b{number}"})
        await self.send_response(200, b"sent", headers=[(b"content-type", b"text/plain")])


class Stats(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        if b"gc=1" in self.scope["query_string"]:
            gc.collect()
        manager = application._managers
        figures = {
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "sessions": 0 if manager is None else len(manager.sessions),
            "open": dict(OPEN),
            "instances": len(INSTANCES),
            "blocks": sys.getallocatedblocks(),
        }
        await self.send_response(200, json.dumps(figures).encode(), headers=_JSON)


class Tracemalloc(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        if not tracemalloc.is_tracing():
            await self.send_response(404, b"SOAK_TRACEMALLOC is not set", headers=_JSON)
            return
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        if not _baseline:
            _baseline.append(snapshot)
            answer: Any = {"pid": os.getpid(), "baseline": True}
        else:
            diff = sorted(
                snapshot.compare_to(_baseline[0], "traceback"), key=lambda d: -d.size_diff
            )[:25]
            answer = {
                "pid": os.getpid(),
                "growth": [
                    {
                        "kib": round(d.size_diff / 1024, 1),
                        "count": d.count_diff,
                        "where": d.traceback.format()[-6:],
                    }
                    for d in diff
                ],
            }
        await self.send_response(200, json.dumps(answer).encode(), headers=_JSON)


_JSON = [(b"content-type", b"application/json")]

application = TransportRouter(
    {
        "http": URLRouter(
            [
                path("soak/broadcast/", Broadcast.as_asgi()),  # type: ignore[arg-type]
                path("soak/stats/", Stats.as_asgi()),  # type: ignore[arg-type]
                path("soak/tracemalloc/", Tracemalloc.as_asgi()),  # type: ignore[arg-type]
            ]
        ),
        "websocket": URLRouter(
            [
                path("echo/", Echo.as_asgi()),  # type: ignore[arg-type]
                path("ws/", Member.as_asgi()),  # type: ignore[arg-type]
            ]
        ),
    },
    # Every soak client opens sessions from a few loopback addresses: lift the
    # per-address opening limit (10 a second, bursts of 100) meant for real clients.
    client_open_rate=1_000_000,
    client_open_burst=1_000_000,
)
