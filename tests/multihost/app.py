"""The application each simulated host serves: one group, numbered messages, sessions.

Served by ``tidings serve tests.multihost.app:application`` inside a network
namespace (see :mod:`tests.multihost.harness`). Settings come from the
environment the harness passes:

- ``MULTIHOST_REDIS``: one node of the Redis Cluster (``redis://ip:port``);
- ``MULTIHOST_PREFIX``: the layer's key prefix (one per run);
- ``MULTIHOST_GROUP_EXPIRY``: ``group_expiry`` in seconds (short in the tests, so
  a dead host's memberships go away within the test);
- ``MULTIHOST_HOST``: the name of this host, told to clients.

Every WebSocket (a plain one, or a session of the fallback transports opened with
``?tidings=ws``) joins the group ``feed`` and is told ``{"ready": host, "channel":
...}``; every ``feed.message`` event is forwarded as its number, in text. A member
renews its membership every quarter of ``group_expiry``, as a consumer that lives
longer than ``group_expiry`` must: memberships expire after their last
``group_add`` (Channels' rule), and the renewal is what tells a live host's
members from a dead host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import django
from django.conf import settings

__all__ = ["application"]

GROUP = "feed"
GROUP_EXPIRY = float(os.environ.get("MULTIHOST_GROUP_EXPIRY", "8"))
HOST = os.environ.get("MULTIHOST_HOST", "?")

settings.configure(
    DEBUG=False,
    SECRET_KEY="multihost-tests-only-" + os.environ.get("MULTIHOST_PREFIX", ""),
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "tidings.layers.redis.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": os.environ["MULTIHOST_REDIS"], "cluster": True}],
                "prefix": os.environ["MULTIHOST_PREFIX"],
                "group_expiry": GROUP_EXPIRY,
            },
        }
    },
)
django.setup()

from django.urls import path  # noqa: E402

from tidings.exceptions import ChannelLayerUnavailable  # noqa: E402
from tidings.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from tidings.routing import URLRouter  # noqa: E402
from tidings.transports import TransportRouter  # noqa: E402


class Member(AsyncWebsocketConsumer):
    """A member of ``feed`` that forwards each message's number."""

    renewal: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        self.renewal = asyncio.create_task(self.renew())
        await self.send(text_data=json.dumps({"ready": HOST, "channel": self.channel_name}))

    async def renew(self) -> None:
        """Renew the membership while connected (it would expire after ``GROUP_EXPIRY``).

        Every quarter of the expiry, and half a second after a renewal that failed
        (Redis failing over), so that an outage of up to about half the expiry never
        lets the membership lapse.
        """
        wait = GROUP_EXPIRY / 4
        while True:
            await asyncio.sleep(wait)
            try:
                await self.channel_layer.group_add(GROUP, self.channel_name)
                wait = GROUP_EXPIRY / 4
            except ChannelLayerUnavailable:
                wait = 0.5

    async def disconnect(self, code: int) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
        with contextlib.suppress(ChannelLayerUnavailable):
            await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def feed_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=str(event["n"]))


application = TransportRouter(
    {"websocket": URLRouter([path("feed/", Member.as_asgi())])},
    # A resume asks the owner of the session through the layer; a dead owner
    # is given up on after this (then the client gets a new session).
    remote_timeout=2.0,
    resume_window=30.0,
)
