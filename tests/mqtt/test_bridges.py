"""Bridges between MQTT topics and channel-layer groups, against a real mosquitto."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.mqtt._broker import Mosquitto
from tests.mqtt.conftest import Device, settings_for, wait_for
from tidings.layers import get_channel_layer
from tidings.mqtt import GroupToTopic, MqttConfigError, TopicRouter, TopicToGroup, running


async def test_topic_to_group_from_settings(broker: Mosquitto, device: Device) -> None:
    bridges = [{"FROM_TOPIC": "sensors/+/temp", "TO_GROUP": "telemetry", "QOS": 1}]
    with settings_for(broker.url, bridges=bridges):
        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        await layer.group_add("telemetry", channel)
        async with running(None):
            await asyncio.to_thread(device.publish, "sensors/d1/temp", "21.5", 1, True)
            await asyncio.to_thread(device.publish, "sensors/d1/humidity", "40", 1)
            await asyncio.to_thread(device.publish, "sensors/d2/temp", b"\xff", 0)
            first = await asyncio.wait_for(layer.receive(channel), 10)
            second = await asyncio.wait_for(layer.receive(channel), 10)
    assert first == {
        "type": "mqtt.message",
        "broker": "default",
        "topic": "sensors/d1/temp",
        "payload": b"21.5",
        "text": "21.5",
        "qos": 1,
        "retain": False,  # retain is only set on delivery of a stored message
        "mqtt_origin": True,
    }
    assert (second["topic"], second["payload"], second["text"]) == (
        "sensors/d2/temp",
        b"\xff",
        None,
    )


async def test_group_to_topic_in_code(broker: Mosquitto, device: Device) -> None:
    await asyncio.to_thread(device.subscribe, "devices/+/cmd")
    router = TopicRouter([], bridges=[GroupToTopic("commands", "devices/+/cmd", qos=1)])
    with settings_for(broker.url):
        layer = get_channel_layer()
        assert layer is not None
        async with running(router):
            await layer.group_send(
                "commands",
                {"type": "mqtt.publish", "topic": "devices/d9/cmd", "payload": "reboot"},
            )
            await wait_for(lambda: len(device.received) == 1)
    assert device.received[0][:3] == ("devices/d9/cmd", b"reboot", 1)


async def test_group_to_topic_refuses_topics_outside_the_bridge(
    broker: Mosquitto, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(device.subscribe, "#")
    router = TopicRouter([], bridges=[GroupToTopic("commands", "devices/+/cmd")])
    with settings_for(broker.url), caplog.at_level(logging.WARNING, logger="tidings.mqtt"):
        layer = get_channel_layer()
        assert layer is not None
        async with running(router):
            for bad in ("admin/shutdown", "devices/+/cmd", "devices/a\x00/cmd", 42):
                await layer.group_send(
                    "commands", {"type": "mqtt.publish", "topic": bad, "payload": "x"}
                )
            await layer.group_send(
                "commands", {"type": "mqtt.publish", "topic": "devices/ok/cmd", "payload": "y"}
            )
            await wait_for(lambda: len(device.received) == 1)
    assert [t for t, *_ in device.received] == ["devices/ok/cmd"]
    assert caplog.text.count("dropped a message") == 4


async def test_no_loop_between_a_topic_and_a_group(broker: Mosquitto, device: Device) -> None:
    # Both directions on the same group and topics: what came from MQTT must never
    # be published back, or every message would circle for ever.
    await asyncio.to_thread(device.subscribe, "loop/#")
    router = TopicRouter(
        [],
        bridges=[TopicToGroup("loop/#", "room", qos=1), GroupToTopic("room", "loop/#", qos=1)],
    )
    with settings_for(broker.url):
        layer = get_channel_layer()
        assert layer is not None
        async with running(router):
            await asyncio.to_thread(device.publish, "loop/x", "once", 1)
            await wait_for(lambda: len(device.received) >= 1)
            # A message from MQTT re-typed as a publish request is still refused: the mark.
            await layer.group_send(
                "room",
                {"type": "mqtt.publish", "topic": "loop/y", "payload": "z", "mqtt_origin": True},
            )
            # The bridge's channel is FIFO: once this sentinel is out, all before it is done.
            await layer.group_send(
                "room", {"type": "mqtt.publish", "topic": "loop/sentinel", "payload": "s"}
            )
            await wait_for(lambda: any(t == "loop/sentinel" for t, *_ in device.received))
    topics = [t for t, *_ in device.received]
    assert topics.count("loop/x") == 1
    assert "loop/y" not in topics


def test_bridge_settings_are_checked() -> None:
    from tidings.mqtt._settings import parse_bridges, parse_brokers

    brokers = parse_brokers({"default": {"URL": "mqtt://h"}})
    with pytest.raises(MqttConfigError, match=r"MQTT_BRIDGES\[0\]\['BROKER'\]"):
        parse_bridges([{"FROM_TOPIC": "a", "TO_GROUP": "g", "BROKER": "other"}], brokers)
    with pytest.raises(MqttConfigError, match=r"MQTT_BRIDGES\[0\] must have either"):
        parse_bridges([{"FROM_TOPIC": "a", "TO_TOPIC": "b"}], brokers)
    with pytest.raises(MqttConfigError, match=r"MQTT_BRIDGES\[0\]\['QOS'\]"):
        parse_bridges([{"FROM_TOPIC": "a", "TO_GROUP": "g", "QOS": 3}], brokers)
    with pytest.raises(MqttConfigError, match=r"MQTT_BRIDGES\[1\]: .*'#' must be"):
        parse_bridges(
            [{"FROM_TOPIC": "a", "TO_GROUP": "g"}, {"FROM_TOPIC": "a/#/b", "TO_GROUP": "g"}],
            brokers,
        )
