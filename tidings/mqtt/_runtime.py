"""The MQTT runtime: broker connections, consumer instances and bridges of one process.

Theory of operation
-------------------
:func:`running` starts, for every ``MQTT_BROKERS`` entry, a
:class:`~tidings.mqtt._client.BrokerConnection` subscribed to the filters of
the ``TopicRouter`` routes and ``TopicToGroup`` bridges on it, and one reader
per ``GroupToTopic`` bridge. ``tidings serve`` enters it on lifespan startup
(``ProtocolTypeRouter`` with an ``"mqtt"`` key does it), the worker when it
starts.

A received message becomes a :class:`_Delivery` that every matching bridge and
the first matching route handle. It is acknowledged (QoS 1 PUBACK, QoS 2
PUBCOMP) when the last of them is done:

* a route hands it to the consumer instance of its (route, captures) key; the
  instance gets ``{"type": "mqtt.connect"}`` first, then one
  ``{"type": "mqtt.receive", ...}`` per message, and a message is done when
  the instance asks for the next one (its handler returned) or ends;
* a handler that raises ends its instance: the error is logged, the message
  acknowledged (it would fail again), and the key's next message starts a new
  instance. A process that dies mid-handler acknowledges nothing: the broker
  redelivers QoS 1 messages to the session when it reconnects;
* a ``TopicToGroup`` bridge is done when its ``group_send`` returns.

Bounds: the deliveries held by one broker (queued or in a handler) are at most
``MAX_PENDING``; at the bound the connection stops reading. Idle instances
beyond ``MAX_INSTANCES`` are ended, least recently used first (``mqtt.disconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Final

from django.conf import settings

from tidings._types import Message, Scope
from tidings.layers import get_channel_layer
from tidings.layers.base import BaseChannelLayer
from tidings.mqtt._client import BrokerConnection, Inbound
from tidings.mqtt._errors import MqttConfigError, MqttError
from tidings.mqtt._routing import TopicRouter
from tidings.mqtt._settings import (
    BrokerSettings,
    GroupToTopic,
    TopicToGroup,
    check_publish_topic,
    parse_bridges,
    parse_brokers,
)
from tidings.mqtt._topics import filter_matches, minimal_filters

__all__ = ["MqttRuntime", "running"]

logger = logging.getLogger("tidings.mqtt")

#: Seconds between two ``group_add`` of a GroupToTopic bridge's channel, so that a
#: layer's group expiry (in-memory: a day) never drops the bridge.
BRIDGE_REJOIN_INTERVAL: Final = 600.0


#: An instance's identity: its route's index and its captures.
_Key = tuple[int, tuple[tuple[str, str], ...]]


class _Delivery:
    """One received message and how many handlers still hold it."""

    __slots__ = ("broker", "inbound", "remaining")

    def __init__(self, broker: _Broker, inbound: Inbound, handlers: int) -> None:
        self.broker = broker
        self.inbound = inbound
        self.remaining = handlers

    def done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.broker.settle(self)


class _Instance:
    """One consumer instance of a (route, captures) key and its queue of messages."""

    def __init__(self, broker: _Broker, key: _Key, scope: Scope) -> None:
        self.broker = broker
        self.key = key
        self.scope = scope
        self.queue: deque[_Delivery] = deque()
        self.in_hand: _Delivery | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.connected = False
        self.evicted = False
        self.task = asyncio.create_task(self._run(), name=f"tidings-mqtt-{scope['topic_pattern']}")

    @property
    def idle(self) -> bool:
        return self.waiter is not None and not self.queue and self.in_hand is None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def put(self, delivery: _Delivery) -> None:
        self.queue.append(delivery)
        self.wake()

    def evict(self) -> None:
        self.evicted = True
        self.wake()

    async def receive(self) -> Message:
        if not self.connected:
            self.connected = True
            return {"type": "mqtt.connect"}
        if self.in_hand is not None:
            delivery, self.in_hand = self.in_hand, None
            delivery.done()  # the handler returned
        while not self.queue:
            if self.evicted:
                return {"type": "mqtt.disconnect"}
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.in_hand = self.queue.popleft()
        message = self.in_hand.inbound
        return {
            "type": "mqtt.receive",
            "topic": message.topic,
            "payload": message.payload,
            "qos": message.qos,
            "retain": message.retain,
            "dup": message.dup,
            "properties": message.properties,
        }

    async def send(self, message: Message) -> None:
        if message.get("type") != "mqtt.publish":
            raise ValueError(
                "An MQTT consumer can only send 'mqtt.publish' messages, "
                f"not {message.get('type')!r}."
            )
        self.broker.runtime.publish({"broker": self.broker.alias, **message})

    async def _run(self) -> None:
        try:
            router = self.broker.runtime.router
            assert router is not None  # instances exist only for routes
            await router(dict(self.scope), self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except Exception:
            held = self.in_hand
            logger.exception(
                "MQTT consumer for %r failed handling %s; the message is acknowledged and "
                "the next one starts a new instance",
                self.scope["topic_pattern"],
                f"a message on {held.inbound.topic!r}" if held else "its connection",
            )
        finally:
            self.broker.instance_ended(self)


class _Broker:
    """The runtime of one broker alias: its connection, instances and TopicToGroup bridges."""

    def __init__(self, runtime: MqttRuntime, settings: BrokerSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.alias = settings.alias
        self.pending = 0
        self.instances: OrderedDict[_Key, _Instance] = OrderedDict()
        self.to_groups = [
            b for b in runtime.bridges if isinstance(b, TopicToGroup) and b.broker == self.alias
        ]
        self.bridge_queue: deque[tuple[TopicToGroup, _Delivery]] = deque()
        self.bridge_wake = asyncio.Event()
        self.connection = BrokerConnection(settings, self.received)
        subscriptions = dict(runtime.router.subscriptions(self.alias)) if runtime.router else {}
        for bridge in self.to_groups:
            subscriptions[bridge.topic_filter] = max(
                bridge.qos, subscriptions.get(bridge.topic_filter, 0)
            )
        self.connection.subscriptions = list(minimal_filters(subscriptions).items())
        self.bridge_task: asyncio.Task[None] | None = None

    def received(self, inbound: Inbound) -> None:
        bridges = [b for b in self.to_groups if filter_matches(b.topic_filter, inbound.topic)]
        router = self.runtime.router
        match = router.match(self.alias, inbound.topic) if router is not None else None
        delivery = _Delivery(self, inbound, len(bridges) + (match is not None))
        if delivery.remaining == 0:
            # Nothing routes it (a subscription overlapping another broker's route).
            self.connection.ack(inbound)
            return
        self.pending += 1
        if self.pending >= self.settings.max_pending:
            self.connection.pause_reading()
        for bridge in bridges:
            self.bridge_queue.append((bridge, delivery))
            self.bridge_wake.set()
        if match is not None:
            self._instance_for(*match).put(delivery)

    def settle(self, delivery: _Delivery) -> None:
        self.connection.ack(delivery.inbound)
        self.pending -= 1
        if self.pending <= self.settings.max_pending // 2:
            self.connection.resume_reading()

    def _instance_for(self, index: int, captures: dict[str, str]) -> _Instance:
        key = (index, tuple(sorted(captures.items())))
        instance = self.instances.get(key)
        if instance is not None:
            self.instances.move_to_end(key)
            return instance
        if len(self.instances) >= self.settings.max_instances:
            for old_key, old in self.instances.items():
                if old.idle:
                    del self.instances[old_key]
                    old.evict()
                    break
        route = self.runtime.router.routes[index]  # type: ignore[union-attr]
        scope: Scope = {
            "type": "mqtt",
            "broker": self.alias,
            "topic_pattern": route.pattern.source,
            "topic_filter": route.pattern.topic_filter,
            "topic_route_index": index,
            "topic_route": {"args": (), "kwargs": dict(captures)},
        }
        instance = self.instances[key] = _Instance(self, key, scope)
        return instance

    def instance_ended(self, instance: _Instance) -> None:
        if self.instances.get(instance.key) is instance:
            del self.instances[instance.key]
        if self.runtime.stopping:
            return
        if instance.in_hand is not None:
            delivery, instance.in_hand = instance.in_hand, None
            delivery.done()
        if instance.queue:
            # Its messages go to a new instance of the same key, in order.
            successor = self._instance_for(*self._key_args(instance))
            successor.queue.extend(instance.queue)
            successor.wake()
        instance.queue.clear()

    @staticmethod
    def _key_args(instance: _Instance) -> tuple[int, dict[str, str]]:
        index, captures = instance.key
        return index, dict(captures)

    async def run_bridges(self, layer: BaseChannelLayer | None) -> None:
        while True:
            while not self.bridge_queue:
                self.bridge_wake.clear()
                await self.bridge_wake.wait()
            bridge, delivery = self.bridge_queue[0]
            message = delivery.inbound
            try:
                text: str | None = message.payload.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            try:
                assert layer is not None
                await layer.group_send(
                    bridge.group,
                    {
                        "type": "mqtt.message",
                        "broker": self.alias,
                        "topic": message.topic,
                        "payload": message.payload,
                        "text": text,
                        "qos": message.qos,
                        "retain": message.retain,
                        "mqtt_origin": True,
                    },
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception(
                    "MQTT bridge %r -> group %r failed", bridge.topic_filter, bridge.group
                )
            self.bridge_queue.popleft()
            delivery.done()


class MqttRuntime:
    """Everything MQTT in one process; see the module docstring.

    Args:
        router: the ``"mqtt"`` entry of ``ProtocolTypeRouter`` (or ``None``: bridges only).
        brokers: checked ``MQTT_BROKERS``.
        bridges: checked bridges (``MQTT_BRIDGES`` and the router's).
    """

    def __init__(
        self,
        router: TopicRouter | None,
        brokers: dict[str, BrokerSettings],
        bridges: list[TopicToGroup | GroupToTopic],
    ) -> None:
        self.router = router
        self.brokers_settings = brokers
        self.bridges = bridges
        self.stopping = False
        self.brokers: dict[str, _Broker] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.layer: BaseChannelLayer | None = None

    @classmethod
    def from_settings(cls, router: TopicRouter | None) -> MqttRuntime:
        """Build the runtime from Django settings.

        Raises:
            MqttConfigError: a setting is wrong, or a route or bridge names a broker
                alias that ``MQTT_BROKERS`` lacks.
        """
        brokers = parse_brokers(getattr(settings, "MQTT_BROKERS", None))
        bridges = parse_bridges(getattr(settings, "MQTT_BRIDGES", None), brokers)
        if router is not None:
            for index, route in enumerate(router.routes):
                if route.broker not in brokers:
                    raise MqttConfigError(
                        f"TopicRouter route {index} ({route.pattern.source!r}) uses broker "
                        f"{route.broker!r}, which is not in MQTT_BROKERS."
                    )
            for bridge in router.bridges:
                if bridge.broker not in brokers:
                    raise MqttConfigError(
                        f"TopicRouter bridge {bridge!r} uses broker {bridge.broker!r}, "
                        "which is not in MQTT_BROKERS."
                    )
            bridges = bridges + router.bridges
        return cls(router, brokers, bridges)

    async def start(self) -> None:
        """Connect every broker and start the bridges.

        Raises:
            MqttConfigError: bridges are declared but no channel layer is configured.
            MqttConnectError: a broker refused the connection.
        """
        if self.bridges:
            self.layer = get_channel_layer()
            if self.layer is None:
                raise MqttConfigError(
                    "MQTT_BRIDGES needs a channel layer: CHANNEL_LAYERS has no 'default' entry."
                )
        try:
            for alias, broker_settings in self.brokers_settings.items():
                broker = self.brokers[alias] = _Broker(self, broker_settings)
                await broker.connection.start()
                self._tasks.append(asyncio.create_task(broker.run_bridges(self.layer)))
            for index, bridge in enumerate(self.bridges):
                if isinstance(bridge, GroupToTopic):
                    # A named channel (no "!"): with the Redis layer and several
                    # processes, each group message is received by exactly one of them.
                    channel = f"tidings-mqtt-bridge.{index}"
                    assert self.layer is not None
                    await self.layer.group_add(bridge.group, channel)  # joined before start-up ends
                    self._tasks.append(asyncio.create_task(self._group_to_topic(channel, bridge)))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the instances (unacknowledged messages stay with the broker) and disconnect."""
        self.stopping = True
        tasks = list(self._tasks)
        for broker in self.brokers.values():
            tasks.extend(instance.task for instance in broker.instances.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for broker in self.brokers.values():
            await broker.connection.stop()

    def publish(self, message: Message) -> None:
        """Publish an ``mqtt.publish`` message on its ``broker`` (default ``"default"``).

        Raises:
            MqttConfigError: the broker alias is unknown.
            TopicError, PublishError: see :meth:`BrokerConnection.publish`.
        """
        alias = message.get("broker", "default")
        broker = self.brokers.get(alias)
        if broker is None:
            raise MqttConfigError(f"Cannot publish on MQTT broker {alias!r}: not in MQTT_BROKERS.")
        broker.connection.publish(
            message["topic"],
            message.get("payload", b""),
            qos=message.get("qos", 0),
            retain=bool(message.get("retain", False)),
            properties=message.get("properties"),
        )

    async def _group_to_topic(self, channel: str, bridge: GroupToTopic) -> None:
        layer = self.layer
        assert layer is not None
        connection = self.brokers[bridge.broker].connection
        loop = asyncio.get_running_loop()
        joined_at = loop.time()
        while True:
            if loop.time() - joined_at >= BRIDGE_REJOIN_INTERVAL:
                await layer.group_add(bridge.group, channel)
                joined_at = loop.time()
            try:
                async with asyncio.timeout(BRIDGE_REJOIN_INTERVAL):
                    message = await layer.receive(channel)
            except TimeoutError:
                continue
            if message.get("type") != "mqtt.publish" or message.get("mqtt_origin"):
                continue  # only publish requests, never a message that came from MQTT
            try:
                connection.publish(
                    check_publish_topic(bridge, message.get("topic")),
                    message.get("payload", b""),
                    qos=bridge.qos,
                    retain=bridge.retain,
                )
            except MqttError as exc:
                logger.warning(
                    "MQTT bridge group %r -> %r dropped a message: %s",
                    bridge.group,
                    bridge.topic,
                    exc,
                )


@contextlib.asynccontextmanager
async def running(router: TopicRouter | None) -> AsyncIterator[MqttRuntime]:
    """Run the MQTT runtime of ``router`` (built from settings) for the ``async with`` body.

    Raises:
        MqttConfigError, MqttConnectError: at start, see :meth:`MqttRuntime.start`.
    """
    if router is not None and not isinstance(router, TopicRouter):
        raise MqttConfigError(
            f"ProtocolTypeRouter['mqtt'] must be a tidings.mqtt.TopicRouter, not {router!r}."
        )
    runtime = MqttRuntime.from_settings(router)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
