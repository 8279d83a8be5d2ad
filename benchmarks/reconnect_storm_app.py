"""The app of the reconnect-storm benchmark: sessions on TransportRouter, ticks by group.

Every session (``/ws/`` over tidings.js's transports) is one ``Member`` consumer in the
group ``storm``; on connect it sends ``hello <pid>`` (so the client knows which process
owns its session), and each group tick ``{"n": ..., "t": ...}`` is sent on as
``tick <n> <t>``, ``t`` being the publisher's ``time.monotonic()`` (one clock for every
process of the machine). The channel layer is Tidings' Redis layer at
``$STORM_REDIS_URL``: a session lives in the process that opened it, and a request that
lands on another worker reaches it through the layer.

``python reconnect_storm_app.py publish GAP`` is the publisher: one ``group_send`` every
``GAP`` seconds, until its standard input closes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import django
from django.conf import settings

REDIS_URL = os.environ.get("STORM_REDIS_URL", "redis://127.0.0.1:6379/0")
GROUP = "storm"

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only-reconnect-storm",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "tidings.layers.redis.RedisChannelLayer",
            # Consumer channels hold a few ticks; the session managers' channels carry
            # the relayed streams of thousands of sessions during the storm.
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": "storm",
                "capacity": 1000,
                "channel_capacity": {"tidings-sessions.*": 100_000},
            },
        }
    },
)
django.setup()

from django.urls import path  # noqa: E402

from tidings.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from tidings.routing import URLRouter  # noqa: E402
from tidings.transports import TransportRouter  # noqa: E402


class Member(AsyncWebsocketConsumer):
    groups = [GROUP]

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data=f"hello {os.getpid()}")

    async def storm_tick(self, event: dict[str, Any]) -> None:
        await self.send(text_data=f"tick {event['n']} {event['t']}")


application = TransportRouter(
    {"websocket": URLRouter([path("ws/", Member.as_asgi())])},  # type: ignore[arg-type]
    # Every benchmark client is anonymous: lift the limits a real site keeps per user and
    # per address (the load comes from few machines' worth of addresses).
    client_open_rate=1_000_000,
    client_open_burst=1_000_000,
    max_sessions_per_user=1_000_000,
    buffer_messages=1000,
    # A resume of a session whose process died waits this long for that process before
    # opening a new session: it must be well under tidings.js's 5 s open timeout, which
    # counts from the connect, or the answer always comes after the client gave up (the
    # default, 5 s, is exactly that: see the report of issue 18, part 4).
    remote_timeout=2.0,
)


async def _publish(gap: float) -> None:
    from tidings.layers import get_channel_layer

    layer = get_channel_layer()
    assert layer is not None
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    closed = asyncio.ensure_future(stdin.read())
    n = 0
    while not closed.done():
        n += 1
        await layer.group_send(GROUP, {"type": "storm.tick", "n": n, "t": time.monotonic()})
        await asyncio.wait({closed}, timeout=gap)
    print(n, flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    asyncio.run(_publish(float(sys.argv[2])))
