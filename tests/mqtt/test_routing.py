"""TopicRouter construction, the lifespan hook of ProtocolTypeRouter, instance limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tests.mqtt._broker import Mosquitto
from tests.mqtt.conftest import Device, settings_for, wait_for
from tidings.mqtt import AsyncMqttConsumer, TopicError, TopicRouter, running, topic
from tidings.routing import ProtocolTypeRouter

EVENTS: list[Any] = []


class Tracker(AsyncMqttConsumer):
    async def connect(self) -> None:
        EVENTS.append(("connect", self.scope["topic_route"]["kwargs"]["id"]))

    async def mqtt_message(self, topic, payload, qos, retain, properties):  # type: ignore[no-untyped-def]
        EVENTS.append(("message", topic))

    async def disconnect(self) -> None:
        EVENTS.append(("disconnect", self.scope["topic_route"]["kwargs"]["id"]))


@pytest.fixture(autouse=True)
def _clear() -> None:
    EVENTS.clear()


def test_routes_are_checked_at_construction() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"Tracker.as_asgi\(\) instead"):
        topic("a/<id>", Tracker)
    with pytest.raises(TopicError, match="whole level"):
        topic("a/<id>x", Tracker.as_asgi())
    with pytest.raises(ImproperlyConfigured, match="qos must be 0, 1 or 2"):
        topic("a", Tracker.as_asgi(), qos=3)
    with pytest.raises(ImproperlyConfigured, match=r"route 0 is 'a/#'"):
        TopicRouter(["a/#"])  # type: ignore[list-item]
    with pytest.raises(ImproperlyConfigured, match="TopicToGroup or GroupToTopic"):
        TopicRouter([], bridges=[{"FROM_TOPIC": "a"}])  # type: ignore[list-item]


async def test_a_route_on_an_unknown_broker_fails_start_up() -> None:
    router = TopicRouter([topic("a", Tracker.as_asgi(), broker="elsewhere")])
    with (
        override_settings(MQTT_BROKERS={"default": {"URL": "mqtt://127.0.0.1:1"}}),
        pytest.raises(ImproperlyConfigured, match="broker 'elsewhere'"),
    ):
        async with running(router):
            pass


async def _lifespan(app: Any, *, shutdown: bool = True) -> list[dict[str, Any]]:
    """Drive the lifespan scope of ``app``; return what it sent."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete" and shutdown:
            await inbox.put({"type": "lifespan.shutdown"})

    await asyncio.wait_for(app({"type": "lifespan"}, inbox.get, send), 20)
    return sent


async def test_protocol_type_router_runs_mqtt_on_lifespan(
    broker: Mosquitto, device: Device
) -> None:
    order: list[str] = []

    async def own_lifespan(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        order.append("own startup")
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        order.append("own shutdown")
        await send({"type": "lifespan.shutdown.complete"})

    router = TopicRouter([topic("t/<id>", Tracker.as_asgi())])
    application = ProtocolTypeRouter({"mqtt": router, "lifespan": own_lifespan})
    with settings_for(broker.url):
        sent = await _lifespan(application)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert order == ["own startup", "own shutdown"]


async def test_lifespan_startup_fails_naming_the_setting() -> None:
    application = ProtocolTypeRouter({"mqtt": TopicRouter([])})
    with override_settings(MQTT_BROKERS={"default": {"URL": "tcp://nowhere"}}):
        sent = await _lifespan(application)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "MQTT_BROKERS['default']['URL']" in sent[0]["message"]


async def test_idle_instances_beyond_max_instances_are_ended(
    broker: Mosquitto, device: Device
) -> None:
    router = TopicRouter([topic("t/<id>", Tracker.as_asgi())])
    with settings_for(broker.url, MAX_INSTANCES=3):
        async with running(router) as runtime:
            for n in range(6):
                await asyncio.to_thread(device.publish, f"t/{n}", "x", 1)
                await wait_for(lambda n=n: ("message", f"t/{n}") in EVENTS)
            await wait_for(lambda: sum(e[0] == "disconnect" for e in EVENTS) == 3)
            assert len(runtime.brokers["default"].instances) == 3
    assert [e for e in EVENTS if e[0] == "disconnect"] == [
        ("disconnect", "0"),
        ("disconnect", "1"),
        ("disconnect", "2"),
    ]  # least recently used first


async def test_the_worker_runs_the_mqtt_routes(broker: Mosquitto, device: Device) -> None:
    from tidings.consumer import AsyncConsumer
    from tidings.layers import get_channel_layer
    from tidings.routing import ChannelNameRouter
    from tidings.worker import Worker

    # Retained: delivered whenever the worker's subscription is made.
    await asyncio.to_thread(device.publish, "t/w", "for the worker", 1, True)
    application = ProtocolTypeRouter(
        {
            "channel": ChannelNameRouter({"jobs": AsyncConsumer.as_asgi()}),
            "mqtt": TopicRouter([topic("t/<id>", Tracker.as_asgi())]),
        }
    )
    with settings_for(broker.url):
        layer = get_channel_layer()
        assert layer is not None
        worker = Worker(application, ["jobs"], layer)
        task = asyncio.create_task(worker.arun())
        try:
            await wait_for(lambda: ("message", "t/w") in EVENTS)
        finally:
            worker.stop()
            await task
