"""Fixtures of the MQTT tests: a private mosquitto, settings, and MQTT devices.

The "device" side is a paho-mqtt client run by paho's own threaded loop, not
by the asyncio adapter under test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from tests.mqtt._broker import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def settings_for(url: str, **entry: Any) -> Any:
    """``override_settings`` with one ``MQTT_BROKERS['default']`` entry."""
    bridges = entry.pop("bridges", None)
    return override_settings(
        MQTT_BROKERS={"default": {"URL": url, "RECONNECT_DELAY": 0.05, **entry}},
        MQTT_BRIDGES=bridges,
    )


class Device:
    """A device on the broker, with paho's own threaded loop (not Tidings' adapter)."""

    def __init__(self, port: int, client_id: str = "", *, version: int = 5) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: list[tuple[str, bytes, int, bool]] = []
        self._subacks: set[int] = set()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version
        )
        self.client.on_message = lambda c, u, m: self.received.append(
            (m.topic, bytes(m.payload), m.qos, bool(m.retain))
        )
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.on_subscribe = lambda c, u, mid, *rest: self._subacks.add(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10), "device could not connect"

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        _, mid = self.client.subscribe(topic_filter, qos)
        deadline = time.monotonic() + 10
        while mid not in self._subacks:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.005)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(broker: Mosquitto) -> Iterator[Device]:
    one = Device(broker.port)
    try:
        yield one
    finally:
        one.close()


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` is true (polled on the loop); fail after ``timeout``."""
    # What the tests wait for changes in other threads and processes (paho's
    # device loop, mosquitto_pub), so there is no one event to await: poll.
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
