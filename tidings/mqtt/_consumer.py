"""MQTT consumers: ``mqtt_message`` handlers, ``publish``, groups, JSON variants.

Theory of operation
-------------------
The MQTT runtime runs one instance per route and set of captures (see
``_routing.py``). It receives, in order:

=============================  ===============================================
ASGI message                   method
=============================  ===============================================
``mqtt.connect``               join ``groups``, then ``connect()``
``mqtt.receive``               ``mqtt_message(topic, payload, qos, retain, properties)``
``mqtt.disconnect``            leave ``groups``, ``disconnect()``, then stop
``publish()``                  sends ``mqtt.publish`` to the runtime
=============================  ===============================================

A message is acknowledged to the broker when ``mqtt_message`` returns (the
consumer then asks for the next message). Layer messages (group messages)
dispatch by type as in every consumer. The JSON variants decode the payload
and call ``mqtt_message_json(topic, content, qos, retain, properties)``; a
payload that is not JSON is logged (topic and size, never the bytes) and
acknowledged: retrying it would fail the same way for ever.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from asgiref.sync import async_to_sync

from tidings._types import Message
from tidings.consumer import AsyncConsumer, SyncConsumer
from tidings.exceptions import StopConsumer

__all__ = ["AsyncJsonMqttConsumer", "AsyncMqttConsumer", "JsonMqttConsumer", "MqttConsumer"]

logger = logging.getLogger("tidings.mqtt")

Properties = dict[str, Any] | None


def _publish_message(
    topic: str,
    payload: bytes | str,
    qos: int,
    retain: bool,
    properties: Properties,
    broker: str | None,
) -> Message:
    message: Message = {
        "type": "mqtt.publish",
        "topic": topic,
        "payload": payload,
        "qos": qos,
        "retain": retain,
        "properties": properties,
    }
    if broker is not None:
        message["broker"] = broker
    return message


def _decode_json(consumer: object, topic: str, payload: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(payload)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        logger.warning(
            "%s dropped a message on %r: its %d-byte payload is not JSON (acknowledged)",
            type(consumer).__name__,
            topic,
            len(payload),
        )
        return False, None


class AsyncMqttConsumer(AsyncConsumer):
    """Consumer of MQTT messages; handlers are ``async def``.

    Attributes:
        groups: channel-layer groups the instance joins when it starts.
    """

    groups: list[str] = []

    async def mqtt_connect(self, message: Message) -> None:
        for group in self.groups:
            await self.join_group(group)
        await self.connect()

    async def connect(self) -> None:
        """Called once when the instance starts, before its first message."""

    async def mqtt_receive(self, message: Message) -> None:
        await self.mqtt_message(
            message["topic"],
            message["payload"],
            message["qos"],
            message["retain"],
            message.get("properties"),
        )

    async def mqtt_message(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties
    ) -> None:
        """Handle one message; it is acknowledged when this returns. Override it."""

    async def mqtt_disconnect(self, message: Message) -> None:
        await self.disconnect()
        raise StopConsumer

    async def disconnect(self) -> None:
        """Called when the runtime ends an idle instance (``MAX_INSTANCES``)."""

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = None,
        broker: str | None = None,
    ) -> None:
        """Publish a message (on this route's broker unless ``broker`` names another).

        Raises:
            TopicError: ``topic`` breaks the MQTT rules.
            NotConnected, PublishQueueFull: the broker is down (see ``PUBLISH_QUEUE``).
        """
        await self.send(_publish_message(topic, payload, qos, retain, properties, broker))


class AsyncJsonMqttConsumer(AsyncMqttConsumer):
    """:class:`AsyncMqttConsumer` whose payloads are JSON."""

    async def mqtt_message(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties
    ) -> None:
        ok, content = _decode_json(self, topic, payload)
        if ok:
            await self.mqtt_message_json(topic, content, qos, retain, properties)

    async def mqtt_message_json(
        self, topic: str, content: Any, qos: int, retain: bool, properties: Properties
    ) -> None:
        """Handle one decoded message. Override it."""

    async def publish_json(self, topic: str, content: Any, **kwargs: Any) -> None:
        """Publish ``content`` encoded as JSON (keyword arguments as :meth:`publish`)."""
        await self.publish(topic, json.dumps(content), **kwargs)


class MqttConsumer(SyncConsumer):
    """Consumer of MQTT messages; handlers are plain ``def``, run in the worker thread."""

    groups: list[str] = []

    def mqtt_connect(self, message: Message) -> None:
        for group in self.groups:
            async_to_sync(self.join_group)(group)
        self.connect()

    def connect(self) -> None:
        """Called once when the instance starts, before its first message."""

    def mqtt_receive(self, message: Message) -> None:
        self.mqtt_message(
            message["topic"],
            message["payload"],
            message["qos"],
            message["retain"],
            message.get("properties"),
        )

    def mqtt_message(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties
    ) -> None:
        """Handle one message; it is acknowledged when this returns. Override it."""

    def mqtt_disconnect(self, message: Message) -> None:
        self.disconnect()
        raise StopConsumer

    def disconnect(self) -> None:
        """Called when the runtime ends an idle instance (``MAX_INSTANCES``)."""

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = None,
        broker: str | None = None,
    ) -> None:
        """Publish a message; see :meth:`AsyncMqttConsumer.publish`."""
        self.send(_publish_message(topic, payload, qos, retain, properties, broker))


class JsonMqttConsumer(MqttConsumer):
    """:class:`MqttConsumer` whose payloads are JSON."""

    def mqtt_message(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties
    ) -> None:
        ok, content = _decode_json(self, topic, payload)
        if ok:
            self.mqtt_message_json(topic, content, qos, retain, properties)

    def mqtt_message_json(
        self, topic: str, content: Any, qos: int, retain: bool, properties: Properties
    ) -> None:
        """Handle one decoded message. Override it."""

    def publish_json(self, topic: str, content: Any, **kwargs: Any) -> None:
        """Publish ``content`` encoded as JSON (keyword arguments as :meth:`publish`)."""
        self.publish(topic, json.dumps(content), **kwargs)
