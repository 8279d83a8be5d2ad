"""How the Redis channel layer encodes messages: serializers and encryption, through real Redis.

The layers run on the run's private redis-server (``redis_url``), each test
under key prefixes of its own; a plain client reads what they stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.test import override_settings
from redis.asyncio import Redis

from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import get_channel_layer
from tidings.layers._redis_scripts import ENTRY_HEAD, Keys
from tidings.layers.redis import RedisChannelLayer

GUARD = 5.0
SECRET = "attack-at-dawn-0f3a9"
NOBODY = "specific.nobodyreads!"  # a channel of a made-up node: its inbox stays in Redis


@pytest.fixture
async def make_layer(redis_url: str) -> AsyncIterator[Callable[..., RedisChannelLayer]]:
    """Build layers on the run's redis-server; each ``space`` gets a key prefix of its own."""
    prefixes: dict[str, str] = {}
    made: list[RedisChannelLayer] = []

    def make(keys: list[str] | None = None, space: str = "", **options: Any) -> RedisChannelLayer:
        prefix = prefixes.setdefault(space, f"t{secrets.token_hex(5)}")
        layer = RedisChannelLayer(
            [redis_url], prefix=prefix, symmetric_encryption_keys=keys, **options
        )
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.flush()
        await layer.close()


async def receive(layer: RedisChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), GUARD)


async def wait_for_log(caplog: pytest.LogCaptureFixture, pattern: str, count: int = 1) -> None:
    """Wait until ``count`` log records match ``pattern``."""
    deadline = time.monotonic() + GUARD
    while sum(bool(re.search(pattern, r.getMessage())) for r in caplog.records) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"no log line {pattern!r}: {[r.getMessage() for r in caplog.records]}")
        await asyncio.sleep(0.01)


# -- encryption -----------------------------------------------------------------------------


async def entries(raw: Redis, key: str) -> list[bytes]:
    """The entries of the list ``key``."""
    values = await raw.lrange(key, 0, -1)
    found = [value for value in values if isinstance(value, bytes)]
    assert len(found) == len(values)
    return found


async def stored(layer: RedisChannelLayer, raw: Redis) -> list[bytes]:
    """Send a secret every way that leaves it in Redis; return the payloads Redis holds."""
    await layer.group_add("room", f"{NOBODY}1")
    await layer.send("jobs", {"type": "job", "text": SECRET})
    await layer.send(f"{NOBODY}2", {"type": "direct", "text": SECRET})
    await layer.group_send("room", {"type": "room.message", "text": SECRET})
    keys = Keys(layer.prefix, 0)
    inbox = await entries(raw, keys.inbox("nobodyreads"))
    assert [entry[ENTRY_HEAD : ENTRY_HEAD + 1] for entry in inbox] == [b"J", b"D", b"G"]
    assert b"room" in inbox[2]  # names stay readable: they route the entry
    (job,) = await entries(raw, keys.channel("jobs"))
    # A shared channel's entry is the payload; an inbox entry names where it goes first.
    return [job[ENTRY_HEAD:], *(entry[ENTRY_HEAD:].partition(b" ")[2] for entry in inbox[1:])]


async def test_payloads_are_encrypted_in_redis(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    plain = await stored(make_layer(space="plain"), raw)
    assert len(plain) == 3 and all(SECRET.encode() in payload for payload in plain)
    sealed = await stored(make_layer(["key-one"], space="sealed"), raw)
    assert len(sealed) == 3
    for payload in sealed:
        assert SECRET.encode() not in payload and b"attack" not in payload
        assert b"direct" not in payload and b"room.message" not in payload
        assert payload.startswith(b"gAAAAA")  # a Fernet token (version 0x80, base64)


@pytest.mark.parametrize("serializer_format", ["msgpack", "json"])
async def test_layers_with_the_same_keys_talk(
    make_layer: Callable[..., RedisChannelLayer], serializer_format: str
) -> None:
    keys = ["key-one", "key-two"]
    sender = make_layer(keys, serializer_format=serializer_format)
    owner = make_layer(keys, serializer_format=serializer_format)
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    body: dict[str, Any] = {"type": "direct", "text": SECRET, "n": [1, 2]}
    if serializer_format == "msgpack":
        body["blob"] = os.urandom(1 << 20)  # 1 MiB, a third bigger once encrypted
    await sender.send(channel, body)
    assert await receive(owner, channel) == body
    await sender.group_send("room", {"type": "room.message", "text": SECRET})
    assert await receive(owner, channel) == {"type": "room.message", "text": SECRET}
    await sender.send("jobs", {"type": "job", "text": SECRET})
    assert await receive(owner, "jobs") == {"type": "job", "text": SECRET}


async def test_key_rotation(
    make_layer: Callable[..., RedisChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tidings.layers.redis")
    old = make_layer(["old-key"])  # not yet rotated
    rotated = make_layer(["new-key", "old-key"])
    new_only = make_layer(["new-key"])  # rotation finished
    old_only = make_layer(["old-key"])
    # Messages of a process that still encrypts with the old key are read.
    channel = await rotated.new_channel()
    await rotated.group_add("room", channel)
    await old.send(channel, {"type": "direct"})
    await old.group_send("room", {"type": "room.message"})
    await old.send("jobs", {"type": "job"})
    assert await receive(rotated, channel) == {"type": "direct"}
    assert await receive(rotated, channel) == {"type": "room.message"}
    assert await receive(rotated, "jobs") == {"type": "job"}
    # The rotated process encrypts with the new key (first in the list).
    await rotated.send("jobs", {"type": "job", "n": 1})
    assert await receive(new_only, "jobs") == {"type": "job", "n": 1}
    await rotated.send("jobs", {"type": "job", "n": 2})
    await old.send("jobs", {"type": "job", "n": 3})
    await new_only.send("jobs", {"type": "job", "n": 4})
    # A process that has only the old key cannot read it: it drops it, says so, goes on.
    assert await receive(old_only, "jobs") == {"type": "job", "n": 3}
    await wait_for_log(caplog, "dropped a message for jobs: it could not be decrypted")
    assert await receive(rotated, "jobs") == {"type": "job", "n": 4}


async def test_a_wrong_key_drops_messages_and_the_receive_loop_goes_on(
    make_layer: Callable[..., RedisChannelLayer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tidings.layers.redis")
    stranger = make_layer(["right-key"])
    owner, friend = make_layer(["wrong-key"]), make_layer(["wrong-key"])
    unencrypted = make_layer()
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await stranger.send(channel, {"type": "direct"})
    await stranger.group_send("room", {"type": "room.message"})
    await unencrypted.send(channel, {"type": "direct"})
    await wait_for_log(caplog, rf"dropped a message for {re.escape(channel)}: it could not be")
    await wait_for_log(caplog, "dropped a message for group room: it could not be decrypted")
    await wait_for_log(caplog, "could not be decrypted", count=3)
    # The receive loop is alive: a message it can read arrives.
    await friend.send(channel, {"type": "direct", "from": "friend"})
    await friend.group_send("room", {"type": "room.message", "from": "friend"})
    assert await receive(owner, channel) == {"type": "direct", "from": "friend"}
    assert await receive(owner, channel) == {"type": "room.message", "from": "friend"}
    # An unencrypted process cannot read encrypted messages either, and says why.
    await friend.send("jobs", {"type": "job", "n": 1})
    await unencrypted.send("jobs", {"type": "job", "n": 2})
    assert await receive(unencrypted, "jobs") == {"type": "job", "n": 2}
    await wait_for_log(caplog, "dropped a message for jobs: it is not a msgpack message")
    errors = [r for r in caplog.records if r.exc_info]
    assert not errors, "dropped messages are logged without a traceback"


# -- configuration --------------------------------------------------------------------------


def test_encryption_needs_cryptography(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    # As if the package were not installed: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    RedisChannelLayer([redis_url])  # without keys nothing needs it
    expected = (
        "symmetric_encryption_keys needs the 'cryptography' package, which is not installed: "
        "pip install 'tidings[encryption]' (or 'cryptography>=42')"
    )
    with pytest.raises(InvalidChannelLayerError, match=re.escape(expected)):
        RedisChannelLayer([redis_url], symmetric_encryption_keys=["key"])
    config = {
        "default": {
            "BACKEND": "tidings.layers.redis.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "symmetric_encryption_keys": ["key"]},
        }
    }
    with override_settings(CHANNEL_LAYERS=config), pytest.raises(InvalidChannelLayerError) as info:
        get_channel_layer()
    assert str(info.value).startswith("CHANNEL_LAYERS['default']['CONFIG'] is not valid: ")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ("one-key", "a list of keys, not one key"),
        (b"one-key", "a list of keys, not one key"),
        (["good", 1234], "str or bytes keys, not int"),
        (["good", ""], "holds an empty key"),
    ],
)
def test_bad_keys(keys: Any, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)) as info:
        RedisChannelLayer(symmetric_encryption_keys=keys)
    assert "good" not in str(info.value) and "one-key" not in str(info.value)


def test_no_keys_means_no_encryption() -> None:
    assert not RedisChannelLayer(symmetric_encryption_keys=[])._codec.encrypted
    assert RedisChannelLayer(symmetric_encryption_keys=["k"])._codec.encrypted
