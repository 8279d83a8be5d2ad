"""MQTT for Tidings: broker connections, topic routing, MQTT consumers and bridges.

Needs the ``mqtt`` extra (``pip install "tidings[mqtt]"``, which brings
paho-mqtt). See ``docs/mqtt.md``.
"""

from __future__ import annotations

try:
    import paho.mqtt.client  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        'tidings.mqtt needs paho-mqtt: install the extra with pip install "tidings[mqtt]".'
    ) from exc

from tidings.mqtt._consumer import (
    AsyncJsonMqttConsumer,
    AsyncMqttConsumer,
    JsonMqttConsumer,
    MqttConsumer,
)
from tidings.mqtt._errors import (
    MqttConfigError,
    MqttConnectError,
    MqttError,
    NotConnected,
    PublishError,
    PublishQueueFull,
    TopicError,
)
from tidings.mqtt._lifespan import MqttLifespan
from tidings.mqtt._routing import TopicRoute, TopicRouter, topic
from tidings.mqtt._runtime import MqttRuntime, running
from tidings.mqtt._settings import GroupToTopic, TopicToGroup
from tidings.mqtt._topics import MAX_TOPIC_BYTES, check_filter, check_topic

__all__ = [
    "MAX_TOPIC_BYTES",
    "AsyncJsonMqttConsumer",
    "AsyncMqttConsumer",
    "GroupToTopic",
    "JsonMqttConsumer",
    "MqttConfigError",
    "MqttConnectError",
    "MqttConsumer",
    "MqttError",
    "MqttLifespan",
    "MqttRuntime",
    "NotConnected",
    "PublishError",
    "PublishQueueFull",
    "TopicError",
    "TopicRoute",
    "TopicRouter",
    "TopicToGroup",
    "check_filter",
    "check_topic",
    "running",
    "topic",
]
