"""tidings.layers.serializers: channels_redis' serializer registry and base class."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.fernet import InvalidToken

from tidings.layers import serializers
from tidings.layers.serializers import (
    BaseMessageSerializer,
    JSONSerializer,
    MsgPackSerializer,
    SerializerDoesNotExist,
    SerializersRegistry,
    registry,
)

MESSAGE = {"type": "chat.message", "text": "hi", "n": [1, 2]}


class OnlySerialize:
    def serialize(self, message: Any) -> bytes:
        return b""


class Plain:
    """A serializer of the second kind: serialize/deserialize, any keyword arguments."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def serialize(self, message: Any) -> bytes:
        return repr(message).encode()

    def deserialize(self, message: bytes) -> Any:
        return message.decode()


def test_public_names() -> None:
    assert set(serializers.__all__) == {
        "BaseMessageSerializer",
        "JSONSerializer",
        "MessageSerializer",
        "MsgPackSerializer",
        "SerializerDoesNotExist",
        "SerializersRegistry",
        "registry",
    }


def test_built_in_formats() -> None:
    assert isinstance(registry.get_serializer("msgpack"), MsgPackSerializer)
    assert isinstance(registry.get_serializer("json"), JSONSerializer)
    assert registry.get_serializer("json").serialize(MESSAGE) == (
        b'{"type":"chat.message","text":"hi","n":[1,2]}'
    )
    for name in ("msgpack", "json"):
        serializer = registry.get_serializer(name)
        assert serializer.deserialize(serializer.serialize(MESSAGE)) == MESSAGE
    msgpack = registry.get_serializer("msgpack")
    assert msgpack.deserialize(msgpack.serialize({"b": b"\x00", "s": "x"})) == {
        "b": b"\x00",
        "s": "x",
    }


def test_unknown_format() -> None:
    with pytest.raises(SerializerDoesNotExist) as info:
        SerializersRegistry().get_serializer("msgpack")
    assert isinstance(info.value, KeyError) and info.value.args == ("msgpack",)


def test_register_and_replace() -> None:
    own = SerializersRegistry()
    own.register_serializer("plain", Plain)
    serializer = own.get_serializer("plain", expiry=5)
    assert isinstance(serializer, Plain) and serializer.options == {"expiry": 5}
    own.register_serializer("plain", JSONSerializer)
    assert isinstance(own.get_serializer("plain"), JSONSerializer)
    assert own.formats == ["plain"]


@pytest.mark.parametrize("bad", [OnlySerialize, Plain(), len, "json"])
def test_register_refuses_what_is_not_a_serializer_class(bad: Any) -> None:
    with pytest.raises(TypeError, match="must be a class with serialize and deserialize"):
        SerializersRegistry().register_serializer("bad", bad)


def test_base_class_encrypts_and_prefixes() -> None:
    serializer = JSONSerializer(symmetric_encryption_keys=["k1"], random_prefix_length=4)
    data = serializer.serialize(MESSAGE)
    assert b"chat.message" not in data
    assert serializer.serialize(MESSAGE)[:4] != data[:4]  # a fresh random prefix
    assert serializer.deserialize(data) == MESSAGE
    rotated = JSONSerializer(symmetric_encryption_keys=["k2", "k1"], random_prefix_length=4)
    assert rotated.deserialize(data) == MESSAGE
    with pytest.raises(InvalidToken):
        JSONSerializer(symmetric_encryption_keys=["k2"], random_prefix_length=4).deserialize(data)


def test_encrypted_messages_older_than_expiry_are_refused() -> None:
    serializer = MsgPackSerializer(symmetric_encryption_keys=["k"], expiry=5)
    old = serializer.crypter.encrypt_at_time(serializer.as_bytes(MESSAGE), int(time.time()) - 60)
    with pytest.raises(InvalidToken):
        serializer.deserialize(old)
    assert MsgPackSerializer(symmetric_encryption_keys=["k"]).deserialize(old) == MESSAGE


def test_base_class_is_abstract() -> None:
    with pytest.raises(TypeError):
        BaseMessageSerializer()  # type: ignore[abstract]
