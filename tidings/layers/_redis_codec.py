"""How the Redis channel layer turns messages into bytes and back.

The serializer comes from :mod:`tidings.layers.serializers`' registry, by
the layer's ``serializer_format``. Two steps are kept apart because they run
in different places: ``dumps`` and ``loads`` serialize; ``seal`` encrypts the
serialized bytes when ``symmetric_encryption_keys`` is set, and ``read``
undoes both for what comes out of Redis. Messages delivered inside one
process are serialized and read back too (so they behave exactly as they
would across processes: tuples become lists, unserializable values fail at
``send``), but never encrypted.

That split needs a :class:`~tidings.layers.serializers.BaseMessageSerializer`
whose ``serialize``/``deserialize`` are the base class's (the built-in
formats are). For any other serializer (one that only has ``serialize`` and
``deserialize``, or overrides them) ``dumps``/``loads`` are its
``serialize``/``deserialize`` and ``seal`` changes nothing: the serializer
does its own encryption, in-process messages included.

Encryption uses Fernet (AES-128-CBC with HMAC-SHA256) from the optional
``cryptography`` package (the ``encryption`` extra), imported only when
keys are given. Each key is stretched to a Fernet key with SHA-256, as
channels_redis does; the first key encrypts, all keys decrypt, so keys can
be rotated by putting the new one first. Only payloads are encrypted:
channel and group names stay readable in Redis, as they must for routing.

``read`` raises :class:`UnreadableMessage` for bytes it cannot decrypt or
parse (a process with other keys or another ``serializer_format``); the
layer logs and drops such a message, and carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from tidings.layers.base import Message
from tidings.layers.serializers import BaseMessageSerializer, SerializerDoesNotExist, registry

__all__ = ["SERIALIZER_FORMATS", "Codec", "UnreadableMessage"]

SERIALIZER_FORMATS: Final = ("msgpack", "json")
"""The built-in values of ``serializer_format``; msgpack carries ``bytes``, JSON does not."""


class UnreadableMessage(ValueError):
    """Bytes from Redis that are not a message this codec wrote (other keys or format)."""


def _unchanged(data: bytes) -> bytes:
    return data


class _NeverRaised(Exception):
    """Stands for ``InvalidToken`` where this codec does not decrypt."""


class Codec:
    """Serializes messages and, with keys, encrypts them.

    Args:
        serializer_format: a format of :data:`tidings.layers.serializers.registry`.
        keys: ``symmetric_encryption_keys``; ``None`` or empty for none.
        expiry: the layer's ``expiry``, passed to the serializer.

    Raises:
        ValueError: unknown format, a serializer class that does not take the
            serializer arguments, or ``keys`` is not a list of non-empty keys.
        InvalidChannelLayerError: keys are given but ``cryptography`` is not installed.
    """

    def __init__(
        self,
        serializer_format: str,
        keys: Sequence[str | bytes] | None,
        *,
        expiry: float | None = None,
    ) -> None:
        try:
            serializer = registry.get_serializer(
                serializer_format,
                symmetric_encryption_keys=keys or None,
                random_prefix_length=0,
                expiry=expiry,
            )
        except SerializerDoesNotExist:
            known = ", ".join(map(repr, registry.formats))
            raise ValueError(
                f"serializer_format {serializer_format!r} is not registered (registered: "
                f"{known}; see tidings.layers.serializers.registry)"
            ) from None
        except TypeError as exc:
            raise ValueError(
                f"the serializer class of serializer_format {serializer_format!r} must take "
                f"the keyword arguments symmetric_encryption_keys, random_prefix_length and "
                f"expiry: {exc}"
            ) from exc
        self.format = serializer_format
        self.serializer = serializer
        """The serializer instance (channels_redis' ``layer._serializer``)."""
        self.encrypted = bool(keys)
        """Whether payloads are encrypted."""
        cls = type(serializer)
        if (
            isinstance(serializer, BaseMessageSerializer)
            and cls.serialize is BaseMessageSerializer.serialize
            and cls.deserialize is BaseMessageSerializer.deserialize
        ):
            self.dumps: Callable[[Message], bytes] = serializer.as_bytes
            self.loads: Callable[[bytes], Message] = serializer.from_bytes
            crypter = serializer.crypter
            self.seal: Callable[[bytes], bytes] = _unchanged if crypter is None else crypter.encrypt
            self._decrypt: Callable[[bytes], bytes] = serializer.decrypt
            self._invalid_token: type[Exception] = serializer.invalid_token
        else:
            self.dumps = serializer.serialize
            self.loads = serializer.deserialize
            self.seal = _unchanged
            self._decrypt = _unchanged
            self._invalid_token = _NeverRaised

    def read(self, data: bytes) -> Message:
        """Decrypt (with keys) and deserialize what ``seal(dumps(message))`` made.

        Raises:
            UnreadableMessage: no key decrypts ``data``, or it is not a message
                in this format.
        """
        try:
            data = self._decrypt(data)
        except self._invalid_token:
            raise UnreadableMessage(
                "it could not be decrypted with any of symmetric_encryption_keys"
            ) from None
        try:
            message = self.loads(data)
        except Exception as exc:  # msgpack's and json's many errors, bad UTF-8...
            raise UnreadableMessage(
                f"it is not a {self.format} message ({type(exc).__name__}); do all "
                "processes use the same serializer_format and symmetric_encryption_keys?"
            ) from None
        if not isinstance(message, dict):
            raise UnreadableMessage(f"it is a {type(message).__name__}, not a message dict")
        return message
