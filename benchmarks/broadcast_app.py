"""The Django/ASGI app of the end-to-end broadcast benchmark, for Tidings and Channels alike.

``BENCH_PREFIX`` picks the package (``tidings`` or ``channels``; the import prefix is the
only difference, as the migration guide promises) and ``BENCH_REDIS_URL`` the Redis
server of the channel layer (Tidings' ``RedisChannelLayer`` or channels_redis'). Every
WebSocket client joins the group ``bench`` and is told ``ready`` once it is a member;
``bench.message`` events sent to the group are forwarded to the client as text.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import django
from django.conf import settings

PREFIX = os.environ.get("BENCH_PREFIX", "tidings")
REDIS_URL = os.environ["BENCH_REDIS_URL"]
GROUP = "bench"

if PREFIX == "tidings":
    LAYER: dict[str, Any] = {
        "BACKEND": "tidings.layers.redis.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "bench"},
    }
else:
    LAYER = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "bench"},
    }

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={"default": LAYER},
)
django.setup()

_generic = importlib.import_module(f"{PREFIX}.generic.websocket")
_routing = importlib.import_module(f"{PREFIX}.routing")


class Member(_generic.AsyncWebsocketConsumer):  # type: ignore[misc,name-defined]
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send(text_data="ready")

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = _routing.ProtocolTypeRouter({"websocket": Member.as_asgi()})
