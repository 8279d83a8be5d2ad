"""The app of the MQTT benchmark, for Tidings and for mqttasgi + Channels alike.

``BENCH_PREFIX`` picks the package (``tidings`` or ``channels``), ``BENCH_REDIS_URL``
the Redis server of the channel layer (empty: Tidings' in-memory layer, one process),
``BENCH_MQTT_PORT`` the broker and ``BENCH_BRIDGE=1`` Tidings' settings bridge instead
of the MQTT consumer. The consumer code is the same in both: an MQTT message on
``bench/<n>`` is sent to the group ``browsers`` as ``{"type": "reading", "text": ...}``,
and each WebSocket client of the group gets the text. Only the MQTT consumer's base
class differs, since each package has its own (``mqtt_message`` in Tidings,
``receive`` in mqttasgi, which also subscribes in ``connect``).
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings

PREFIX = os.environ.get("BENCH_PREFIX", "tidings")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "")
MQTT_PORT = int(os.environ.get("BENCH_MQTT_PORT", "1883"))
BRIDGE = os.environ.get("BENCH_BRIDGE") == "1"
QOS = int(os.environ.get("BENCH_QOS", "1"))
GROUP = "browsers"

if not REDIS_URL:
    LAYER: dict[str, Any] = {"BACKEND": "tidings.layers.InMemoryChannelLayer"}
elif PREFIX == "tidings":
    LAYER = {
        "BACKEND": "tidings.layers.redis.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "mqttbench"},
    }
else:
    # redis-py 8 reads with a default socket timeout shorter than channels_redis'
    # 5 s BZPOPMIN, which then fails on an idle channel: no read timeout, as before.
    LAYER = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": "mqttbench",
        },
    }

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={"default": LAYER},
    MQTT_BROKERS={"default": {"URL": f"mqtt://127.0.0.1:{MQTT_PORT}", "MAX_PENDING": 5000}},
    MQTT_BRIDGES=([{"FROM_TOPIC": "bench/+", "TO_GROUP": GROUP, "QOS": QOS}] if BRIDGE else None),
)
django.setup()


async def forward(layer: Any, payload: bytes) -> None:
    """What the MQTT consumer does with a message, in both packages."""
    await layer.group_send(GROUP, {"type": "reading", "text": payload.decode()})


if PREFIX == "tidings":
    from tidings.generic.websocket import AsyncWebsocketConsumer
    from tidings.mqtt import AsyncMqttConsumer, TopicRouter, topic
    from tidings.routing import ProtocolTypeRouter

    class MqttBench(AsyncMqttConsumer):
        async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
            await forward(self.channel_layer, payload)

    routes = [] if BRIDGE else [topic("bench/+", MqttBench.as_asgi(), qos=QOS)]
    MQTT_APP: Any = TopicRouter(routes)
else:
    from channels.generic.websocket import AsyncWebsocketConsumer  # type: ignore[no-redef]
    from channels.routing import ProtocolTypeRouter  # type: ignore[no-redef]
    from mqttasgi.consumers import MqttConsumer

    class MqttBench(MqttConsumer):  # type: ignore[no-redef]
        async def connect(self) -> None:
            await self.subscribe("bench/+", QOS)

        async def receive(self, mqtt_message: dict[str, Any]) -> None:
            await forward(self.channel_layer, mqtt_message["payload"])

    MQTT_APP = MqttBench.as_asgi()


class Browser(AsyncWebsocketConsumer):
    groups = [GROUP]

    async def reading(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def mqtt_message(self, event: dict[str, Any]) -> None:  # the settings bridge
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter({"websocket": Browser.as_asgi(), "mqtt": MQTT_APP})
