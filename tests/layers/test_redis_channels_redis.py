"""channels_redis 4.3 settings and calls that the Redis layer takes, on the run's redis-server.

Backend paths, CONFIG options (honoured or refused by name), ``close_pools()``,
``serialize``/``deserialize`` and custom ``serializer_format``s registered in
:mod:`tidings.layers.serializers`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgpack
import pytest
from django.test import override_settings
from redis.asyncio import Redis

from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import channel_layers, get_channel_layer
from tidings.layers._redis_scripts import ENTRY_HEAD, Keys
from tidings.layers.redis import RedisChannelLayer
from tidings.layers.serializers import JSONSerializer, registry

GUARD = 5.0
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
CORE = "channels_redis.core.RedisChannelLayer"


@pytest.fixture
async def make_layer(redis_url: str) -> AsyncIterator[Callable[..., RedisChannelLayer]]:
    """Build layers on the run's redis-server under one fresh key prefix."""
    prefix = f"t{secrets.token_hex(5)}"
    made: list[RedisChannelLayer] = []

    def make(**options: Any) -> RedisChannelLayer:
        layer = RedisChannelLayer([redis_url], prefix=prefix, **options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.flush()
        await layer.close()


@pytest.fixture
def format_name() -> Iterator[str]:
    """A fresh serializer format name, unregistered again after the test."""
    name = f"fmt-{secrets.token_hex(4)}"
    yield name
    registry._registry.pop(name, None)


async def receive(layer: RedisChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), GUARD)


def build(backend: str, config: dict[str, Any]) -> Any:
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": backend, "CONFIG": config}}):
        return channel_layers.make_backend("default")


def build_error(backend: str, config: dict[str, Any]) -> str:
    with pytest.raises(InvalidChannelLayerError) as info:
        build(backend, config)
    return str(info.value)


# -- backend paths and CONFIG options ---------------------------------------------------


def test_every_core_option_is_honoured(redis_url: str) -> None:
    pattern = re.compile(r"^websocket\.send!.+")
    layer = build(
        CORE,
        {
            "hosts": [redis_url],
            "prefix": "core-options",
            "expiry": 30,
            "group_expiry": 600,
            "capacity": 50,
            "channel_capacity": {"http.request": 200, pattern: 20},
            "symmetric_encryption_keys": ["secret"],
            "random_prefix_length": 16,
            "serializer_format": "json",
        },
    )
    assert isinstance(layer, RedisChannelLayer)
    assert (layer.prefix, layer.expiry, layer.group_expiry, layer.capacity) == (
        "core-options",
        30,
        600,
        50,
    )
    assert layer.get_capacity("http.request") == 200
    assert layer.get_capacity("websocket.send!abc") == 20
    assert layer._codec.encrypted and layer._codec.format == "json"
    assert len(layer.node) == 16


def test_pubsub_backend_path_is_the_redis_layer(redis_url: str) -> None:
    layer = build(
        PUBSUB,
        {
            "hosts": [redis_url],
            "prefix": "pubsub",
            "symmetric_encryption_keys": ["secret"],
            "serializer_format": "json",
        },
    )
    assert isinstance(layer, RedisChannelLayer)
    assert layer.prefix == "pubsub" and layer._codec.encrypted and layer._codec.format == "json"


@pytest.mark.parametrize("option", ["on_disconnect", "on_reconnect"])
def test_pubsub_callbacks_are_refused_by_name(redis_url: str, option: str) -> None:
    message = build_error(PUBSUB, {"hosts": [redis_url], option: "redis.disconnect"})
    assert message.startswith(
        f"CHANNEL_LAYERS['default']['CONFIG'] has option {option!r}, which Tidings does not "
        f"take for BACKEND {PUBSUB!r}: channels_redis 4.3 accepts it but never sends"
    )


def test_options_the_layer_does_not_take_are_named(redis_url: str) -> None:
    for backend in (CORE, PUBSUB):
        message = build_error(backend, {"hosts": [redis_url], "brpop_timeout": 5})
        assert "has option(s) 'brpop_timeout' that tidings.layers.redis.RedisChannelLayer" in (
            message
        )
    message = build_error(CORE, {"hosts": [redis_url], "on_disconnect": "redis.disconnect"})
    assert "has option(s) 'on_disconnect'" in message


def test_other_channels_redis_paths_are_refused_by_name() -> None:
    message = build_error("channels_redis.core.RedisPubSubChannelLayer", {})
    assert message.startswith(
        "CHANNEL_LAYERS['default']['BACKEND'] = "
        "'channels_redis.core.RedisPubSubChannelLayer' cannot be imported"
    )


def test_unregistered_serializer_format_is_named(redis_url: str) -> None:
    message = build_error(CORE, {"hosts": [redis_url], "serializer_format": "yaml"})
    assert message == (
        "CHANNEL_LAYERS['default']['CONFIG'] is not valid: serializer_format 'yaml' is not "
        "registered (registered: 'json', 'msgpack'; see tidings.layers.serializers.registry)"
    )


# -- close_pools ------------------------------------------------------------------------


async def test_close_pools_closes_connections_and_the_layer_goes_on(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    async def clients() -> int:
        connected: int = (await raw.info("clients"))["connected_clients"]
        return connected

    before = await clients()
    owner, sender = make_layer(), make_layer()
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.group_send("room", {"type": "room.message", "n": 1})
    assert await receive(owner, channel) == {"type": "room.message", "n": 1}
    waiting = asyncio.create_task(owner.receive(channel))
    await sender.close_pools()
    await owner.close_pools()
    deadline = asyncio.get_running_loop().time() + GUARD
    while await clients() != before:  # every connection of both layers is closed
        assert asyncio.get_running_loop().time() < deadline, "connections stay open"
        await asyncio.sleep(0.01)
    # A receive that waited through close_pools still gets what is sent afterwards.
    await sender.group_send("room", {"type": "room.message", "n": 2})
    assert await asyncio.wait_for(waiting, GUARD) == {"type": "room.message", "n": 2}
    await sender.send("jobs", {"type": "job"})
    assert await receive(owner, "jobs") == {"type": "job"}


# -- serializers --------------------------------------------------------------------------


class Reversed:
    """A custom format of the second kind: serialize/deserialize and any keyword arguments."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def serialize(self, message: Any) -> bytes:
        data: bytes = msgpack.packb(message, use_bin_type=True)
        return b"R" + data[::-1]

    def deserialize(self, message: bytes) -> Any:
        return msgpack.unpackb(message[1:][::-1], raw=False)


class Tagged(JSONSerializer):
    """A custom format of the first kind: the base class adds encryption."""

    def as_bytes(self, message: Any) -> bytes:
        return b"T" + super().as_bytes(message)

    def from_bytes(self, message: bytes) -> Any:
        assert message[:1] == b"T"
        return super().from_bytes(message[1:])


async def shared_entries(raw: Redis, layer: RedisChannelLayer, channel: str) -> list[bytes]:
    key = Keys(layer.prefix, 0).channel(channel)
    entries: list[bytes] = await raw.lrange(key, 0, -1)  # type: ignore[assignment]
    return [entry[ENTRY_HEAD:] for entry in entries]


async def test_a_registered_serializer_class_carries_the_messages(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis, format_name: str
) -> None:
    registry.register_serializer(format_name, Reversed)
    sender, owner = (make_layer(serializer_format=format_name) for _ in range(2))
    assert sender._codec.serializer.options == {
        "symmetric_encryption_keys": None,
        "random_prefix_length": 0,
        "expiry": 60,
    }
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.send(channel, {"type": "direct", "b": b"\x01"})
    await sender.group_send("room", {"type": "room.message"})
    assert await receive(owner, channel) == {"type": "direct", "b": b"\x01"}
    assert await receive(owner, channel) == {"type": "room.message"}
    await sender.send("jobs", {"type": "job"})
    assert await shared_entries(raw, sender, "jobs") == [Reversed().serialize({"type": "job"})]
    assert await receive(owner, "jobs") == {"type": "job"}
    assert sender.serialize({"type": "x"}) == Reversed().serialize({"type": "x"})
    assert sender.deserialize(sender.serialize({"type": "x"})) == {"type": "x"}


async def test_a_base_message_serializer_subclass_gets_encryption(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis, format_name: str
) -> None:
    registry.register_serializer(format_name, Tagged)
    sender, owner = (
        make_layer(serializer_format=format_name, symmetric_encryption_keys=["k"]) for _ in range(2)
    )
    await sender.send("jobs", {"type": "job", "text": "secret"})
    (stored,) = await shared_entries(raw, sender, "jobs")
    assert b"secret" not in stored
    assert Tagged(symmetric_encryption_keys=["k"]).deserialize(stored) == {
        "type": "job",
        "text": "secret",
    }
    assert await receive(owner, "jobs") == {"type": "job", "text": "secret"}
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}


def test_a_serializer_class_must_take_the_serializer_arguments(format_name: str) -> None:
    class NoArguments:
        def serialize(self, message: Any) -> bytes:
            return b""

        def deserialize(self, message: bytes) -> Any:
            return {}

    registry.register_serializer(format_name, NoArguments)
    with pytest.raises(ValueError, match="must take the keyword arguments") as info:
        RedisChannelLayer(serializer_format=format_name)
    assert not isinstance(info.value, KeyError)


def test_get_channel_layer_with_a_registered_format(redis_url: str, format_name: str) -> None:
    registry.register_serializer(format_name, Reversed)
    config = {"hosts": [redis_url], "serializer_format": format_name}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": CORE, "CONFIG": config}}):
        layer = get_channel_layer()
        assert isinstance(layer, RedisChannelLayer)
        assert isinstance(layer._codec.serializer, Reversed)
