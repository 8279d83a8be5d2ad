"""MQTT consumers against a real mosquitto: QoS 0/1/2, retained, captures, publish, JSON."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from tests.mqtt._broker import Mosquitto
from tests.mqtt.conftest import Device, settings_for, wait_for
from tidings.mqtt import (
    AsyncJsonMqttConsumer,
    AsyncMqttConsumer,
    MqttConsumer,
    TopicError,
    TopicRouter,
    running,
    topic,
)

SEEN: list[dict[str, Any]] = []


class Recorder(AsyncMqttConsumer):
    async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        SEEN.append(
            {
                "topic": topic,
                "payload": payload,
                "qos": qos,
                "retain": retain,
                "route": self.scope["topic_route"],
                "instance": id(self),
            }
        )


class Echo(AsyncMqttConsumer):
    async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        device = self.scope["topic_route"]["kwargs"]["device"]
        await self.publish(f"devices/{device}/ack", b"ack:" + payload, qos=1)


class SyncEcho(MqttConsumer):
    def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        self.publish("sync/out", payload.upper(), qos=1)


class Json(AsyncJsonMqttConsumer):
    async def mqtt_message_json(self, topic, content, qos, retain, properties):  # type: ignore[no-untyped-def]
        SEEN.append({"topic": topic, "content": content})


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_each_qos_reaches_the_consumer(
    broker: Mosquitto, device: Device, qos: int, protocol: str
) -> None:
    router = TopicRouter([topic("sensors/<device>/temp", Recorder.as_asgi(), qos=2)])
    with settings_for(broker.url, PROTOCOL=protocol):
        async with running(router):
            for n in range(3):
                await asyncio.to_thread(device.publish, "sensors/d1/temp", f"{n}", qos)
            await wait_for(lambda: len(SEEN) == 3)
    assert [m["payload"] for m in SEEN] == [b"0", b"1", b"2"]  # in order
    assert {m["qos"] for m in SEEN} == {qos}
    assert SEEN[0]["route"] == {"args": (), "kwargs": {"device": "d1"}}


async def test_one_instance_per_capture_and_first_route_wins(
    broker: Mosquitto, device: Device
) -> None:
    router = TopicRouter(
        [
            topic("sensors/<device>/temp", Recorder.as_asgi()),
            topic("sensors/#", Json.as_asgi()),
        ]
    )
    with settings_for(broker.url):
        async with running(router):
            for name in ("a", "b", "a"):
                await asyncio.to_thread(device.publish, f"sensors/{name}/temp", name, 1)
            await asyncio.to_thread(device.publish, "sensors/a/humidity", '{"h": 3}', 1)
            await wait_for(lambda: len(SEEN) >= 4, timeout=3)
    temps = [m for m in SEEN if "instance" in m]
    # Each capture has its instance, and instances run side by side: the order holds per
    # instance (docs/mqtt.md), not across them.
    by_device: dict[str, set[int]] = {}
    for m in temps:
        by_device.setdefault(m["route"]["kwargs"]["device"], set()).add(m["instance"])
    assert sorted(m["route"]["kwargs"]["device"] for m in temps) == ["a", "a", "b"]
    assert len(by_device["a"]) == len(by_device["b"]) == 1
    assert by_device["a"] != by_device["b"]
    assert {"topic": "sensors/a/humidity", "content": {"h": 3}} in SEEN


async def test_retained_message_arrives_with_its_flag(broker: Mosquitto, device: Device) -> None:
    await asyncio.to_thread(device.publish, "config/site", "v1", 1, True)
    router = TopicRouter([topic("config/+", Recorder.as_asgi())])
    with settings_for(broker.url):
        async with running(router):
            await wait_for(lambda: len(SEEN) == 1)
            await asyncio.to_thread(device.publish, "config/site", "v2", 1, False)
            await wait_for(lambda: len(SEEN) == 2)
    assert [(m["payload"], m["retain"]) for m in SEEN] == [(b"v1", True), (b"v2", False)]


@pytest.mark.parametrize("consumer", [Echo, SyncEcho])
async def test_consumer_publishes(broker: Mosquitto, device: Device, consumer: type) -> None:
    await asyncio.to_thread(device.subscribe, "devices/+/ack")
    await asyncio.to_thread(device.subscribe, "sync/out")
    router = TopicRouter([topic("devices/<device>/cmd", consumer.as_asgi())])
    with settings_for(broker.url):
        async with running(router):
            await asyncio.to_thread(device.publish, "devices/d7/cmd", "go", 1)
            await wait_for(lambda: len(device.received) == 1)
    expected = ("devices/d7/ack", b"ack:go") if consumer is Echo else ("sync/out", b"GO")
    assert device.received[0][:2] == expected


async def test_json_consumer_drops_undecodable_payload_and_acknowledges_it(
    broker: Mosquitto, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    router = TopicRouter([topic("j/<id>", Json.as_asgi(), qos=1)])
    settings = settings_for(broker.url, CLIENT_ID="json-test", CLEAN_START=False)
    with settings, caplog.at_level(logging.WARNING, logger="tidings.mqtt"):
        async with running(router):
            await asyncio.to_thread(device.publish, "j/1", b"\xff not json", 1)
            await asyncio.to_thread(device.publish, "j/1", '{"ok": 1}', 1)
            await wait_for(lambda: len(SEEN) == 1)
    assert SEEN == [{"topic": "j/1", "content": {"ok": 1}}]
    assert "is not JSON (acknowledged)" in caplog.text
    assert "\\xff" not in caplog.text  # the payload itself is never logged
    # Same persistent session again: had the bad message not been acknowledged,
    # the broker would redeliver it now.
    SEEN.clear()
    caplog.clear()
    with settings, caplog.at_level(logging.WARNING, logger="tidings.mqtt"):
        async with running(router):
            await asyncio.to_thread(device.publish, "j/2", '{"ok": 2}', 1)
            await wait_for(lambda: len(SEEN) == 1)
    assert SEEN == [{"topic": "j/2", "content": {"ok": 2}}]
    assert "not JSON" not in caplog.text


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("a/+/b", "wildcards"),
        ("a/#", "wildcards"),
        ("a\x00b", "U+0000"),
        ("", "empty"),
        ("x" * 65_536, "at most 65535 bytes"),
        ("é" * 32_768, "at most 65535 bytes"),  # 65,536 bytes of UTF-8
        ("\ud800", "valid UTF-8"),
    ],
)
async def test_publish_refuses_a_bad_topic(broker: Mosquitto, bad: str, why: str) -> None:
    with settings_for(broker.url):
        async with running(None) as runtime:
            with pytest.raises(TopicError, match=re.escape(why)):
                runtime.publish({"type": "mqtt.publish", "topic": bad, "payload": b"x"})
            # The longest legal topic goes through.
            runtime.publish({"type": "mqtt.publish", "topic": "é" * 32_767, "payload": b"x"})


async def test_a_handler_error_is_logged_and_the_next_message_gets_a_new_instance(
    broker: Mosquitto, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(AsyncMqttConsumer):
        async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
            if payload == b"boom":
                raise RuntimeError("handler bug")
            SEEN.append({"payload": payload, "instance": id(self)})

    router = TopicRouter([topic("f/x", Flaky.as_asgi())])
    with settings_for(broker.url), caplog.at_level(logging.ERROR, logger="tidings.mqtt"):
        async with running(router):
            for payload in ("1", "boom", "2"):
                await asyncio.to_thread(device.publish, "f/x", payload, 1)
            await wait_for(lambda: len(SEEN) == 2)
    assert [m["payload"] for m in SEEN] == [b"1", b"2"]
    assert SEEN[0]["instance"] != SEEN[1]["instance"]
    assert "failed handling a message on 'f/x'" in caplog.text


class Thermostat(AsyncMqttConsumer):
    groups = ["thermostats"]

    async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        SEEN.append({"topic": topic})

    async def set_target(self, event: dict[str, Any]) -> None:
        device = self.scope["topic_route"]["kwargs"]["device"]
        await self.publish(f"devices/{device}/target", str(event["value"]), qos=1)


async def test_group_messages_reach_an_mqtt_consumer(broker: Mosquitto, device: Device) -> None:
    from tidings.layers import get_channel_layer

    await asyncio.to_thread(device.subscribe, "devices/+/target")
    router = TopicRouter([topic("devices/<device>/temp", Thermostat.as_asgi())])
    with settings_for(broker.url):
        layer = get_channel_layer()
        assert layer is not None
        async with running(router):
            # The instance (and its group membership) starts with its first message.
            await asyncio.to_thread(device.publish, "devices/t1/temp", "19", 1)
            await wait_for(lambda: len(SEEN) == 1)
            await layer.group_send("thermostats", {"type": "set.target", "value": 21})
            await wait_for(lambda: len(device.received) == 1)
    assert device.received[0][:2] == ("devices/t1/target", b"21")
