# iot/consumers.py
"""The dashboard's WebSocket consumer, and the MQTT consumer of device acknowledgements."""

import re
from typing import Any

from tidings.generic.websocket import AsyncJsonWebsocketConsumer
from tidings.mqtt import AsyncJsonMqttConsumer

DEVICE = re.compile(r"s[0-9]{1,3}")
COMMANDS = {"blink", "reset", "ping"}


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """A browser: gets readings and acks, sends commands."""

    groups = ["telemetry"]

    async def mqtt_message(self, event: dict[str, Any]) -> None:
        # A reading from the bridge: sensors/<device>/temp, the payload is the value.
        device = event["topic"].split("/")[1]
        await self.send_json({"kind": "reading", "device": device, "value": event["text"]})

    async def device_ack(self, event: dict[str, Any]) -> None:
        await self.send_json({"kind": "ack", "device": event["device"], "ack": event["ack"]})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        device, command = content.get("device"), content.get("command")
        if not isinstance(device, str) or not DEVICE.fullmatch(device):
            await self.send_json({"kind": "error", "error": "unknown device"})
            return
        if command not in COMMANDS:
            await self.send_json({"kind": "error", "error": "unknown command"})
            return
        await self.channel_layer.group_send(
            "commands",
            {"type": "mqtt.publish", "topic": f"devices/{device}/cmd", "payload": command},
        )


class AckConsumer(AsyncJsonMqttConsumer):
    """One instance per device (the <device> capture): relays its acks to the browsers."""

    async def mqtt_message_json(self, topic, content, qos, retain, properties):  # type: ignore[no-untyped-def]
        device = self.scope["topic_route"]["kwargs"]["device"]
        await self.channel_layer.group_send(
            "telemetry", {"type": "device.ack", "device": device, "ack": content}
        )
