"""Message serializers of the Redis channel layer, and the registry ``serializer_format`` reads.

The API is channels_redis' (``channels_redis.serializers``) at a Tidings
path, so a project that registers its own format moves over by changing the
import::

    from tidings.layers.serializers import registry

    class UpperJSONSerializer(JSONSerializer): ...

    registry.register_serializer("upperjson", UpperJSONSerializer)

and then sets ``"serializer_format": "upperjson"`` in the layer's ``CONFIG``.
``"msgpack"`` (the default; carries ``bytes``) and ``"json"`` are registered
here. Register custom formats before the layer is built (in a module your
settings or app config import), in every process: all processes of one
layer must use the same format and keys.

A registered class is either

- a subclass of :class:`BaseMessageSerializer` that implements
  ``as_bytes(message)`` and ``from_bytes(data)``; encryption with
  ``symmetric_encryption_keys`` comes from the base class (Fernet, each key
  stretched with SHA-256, the first key encrypting, all decrypting); or
- any class whose instances have ``serialize(message) -> bytes`` and
  ``deserialize(bytes) -> message``; it is then also responsible for
  encryption.

The layer builds one instance with the keyword arguments
``symmetric_encryption_keys`` (``None`` or a list of keys),
``random_prefix_length`` (always 0: Tidings' Redis entries need no random
prefix to be unique) and ``expiry`` (the layer's, in seconds), so a class
of the second kind must accept them (``**kwargs`` will do).

Registering a format again replaces its class, built-in formats included.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import importlib
import json
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import msgpack

from tidings.exceptions import InvalidChannelLayerError

__all__ = [
    "BaseMessageSerializer",
    "JSONSerializer",
    "MessageSerializer",
    "MsgPackSerializer",
    "SerializerDoesNotExist",
    "SerializersRegistry",
    "registry",
]

_CLOCK_SLACK = 10
"""Seconds an encrypted message may outlive ``expiry`` before decryption refuses it
(allowance for clock differences between hosts, as in channels_redis)."""


class SerializerDoesNotExist(KeyError):
    """No serializer is registered for the requested format."""


class MessageSerializer(Protocol):
    """What an instance of a registered serializer class provides."""

    def serialize(self, message: Any) -> bytes:
        """Return ``message`` as bytes (encrypted, when the serializer encrypts)."""
        ...

    def deserialize(self, message: bytes) -> Any:
        """Return the message that :meth:`serialize` turned into ``message``."""
        ...


class BaseMessageSerializer(abc.ABC):
    """A serializer from two conversions, with encryption and a random prefix added.

    Subclasses implement :meth:`as_bytes` and :meth:`from_bytes`.

    Args:
        symmetric_encryption_keys: keys to encrypt with (Fernet; needs the
            ``cryptography`` package); ``None`` or empty for no encryption.
        random_prefix_length: random bytes put before each serialized message.
        expiry: seconds after which an encrypted message is refused
            (plus a 10 s allowance); ``None`` for no limit.

    Raises:
        ValueError: the keys are not a list of non-empty keys.
        InvalidChannelLayerError: keys are given but ``cryptography`` is missing.
    """

    def __init__(
        self,
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        random_prefix_length: int = 0,
        expiry: float | None = None,
    ) -> None:
        self.random_prefix_length = random_prefix_length
        self.expiry = expiry
        self.crypter: Any = None
        """A ``cryptography.fernet.MultiFernet`` over the keys, or ``None``."""
        self.invalid_token: type[Exception] = _NeverRaised
        """The exception ``crypter.decrypt`` raises for data no key decrypts."""
        if symmetric_encryption_keys:
            self.crypter, self.invalid_token = _make_crypter(symmetric_encryption_keys)

    @abc.abstractmethod
    def as_bytes(self, message: Any) -> bytes:
        """Serialize ``message`` (no encryption)."""

    @abc.abstractmethod
    def from_bytes(self, message: bytes) -> Any:
        """Deserialize what :meth:`as_bytes` made."""

    def serialize(self, message: Any) -> bytes:
        """Serialize, encrypt (with keys) and prefix ``message``."""
        data = self.as_bytes(message)
        if self.crypter is not None:
            data = self.crypter.encrypt(data)
        if self.random_prefix_length > 0:
            data = secrets.token_bytes(self.random_prefix_length) + data
        return data

    def deserialize(self, message: bytes) -> Any:
        """Undo :meth:`serialize`.

        Raises:
            cryptography.fernet.InvalidToken: no key decrypts ``message``, or it
                is older than ``expiry`` allows.
        """
        if self.random_prefix_length > 0:
            message = message[self.random_prefix_length :]
        return self.from_bytes(self.decrypt(message))

    def decrypt(self, data: bytes) -> bytes:
        """Decrypt ``data`` with the keys (unchanged without keys)."""
        if self.crypter is None:
            return data
        ttl = None if self.expiry is None else int(self.expiry) + 1 + _CLOCK_SLACK
        decrypted: bytes = self.crypter.decrypt(data, ttl)
        return decrypted


class _NeverRaised(Exception):
    """Stands for ``InvalidToken`` when there is no encryption."""


class JSONSerializer(BaseMessageSerializer):
    """JSON, UTF-8 encoded, without spaces; cannot carry ``bytes``."""

    def as_bytes(self, message: Any) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode()

    def from_bytes(self, message: bytes) -> Any:
        return json.loads(message)


class MsgPackSerializer(BaseMessageSerializer):
    """msgpack, with ``bytes`` and ``str`` kept apart (the default format)."""

    def as_bytes(self, message: Any) -> bytes:
        data: bytes = msgpack.packb(message, use_bin_type=True)
        return data

    def from_bytes(self, message: bytes) -> Any:
        return msgpack.unpackb(message, raw=False, strict_map_key=False)


class SerializersRegistry:
    """Serializer classes by format name (channels_redis' ``SerializersRegistry``)."""

    def __init__(self) -> None:
        self._registry: dict[str, type[Any]] = {}

    def register_serializer(self, format: str, serializer_class: type[Any]) -> None:
        """Use ``serializer_class`` for ``serializer_format`` ``format`` from now on.

        Raises:
            TypeError: ``serializer_class`` is not a class with ``serialize`` and
                ``deserialize`` (nor a :class:`BaseMessageSerializer` subclass).
        """
        if not isinstance(serializer_class, type) or not (
            issubclass(serializer_class, BaseMessageSerializer)
            or (
                callable(getattr(serializer_class, "serialize", None))
                and callable(getattr(serializer_class, "deserialize", None))
            )
        ):
            raise TypeError(
                f"serializer_class for {format!r} must be a class with serialize and "
                "deserialize methods, or a subclass of "
                f"tidings.layers.serializers.BaseMessageSerializer, not {serializer_class!r}"
            )
        self._registry[format] = serializer_class

    def get_serializer(self, format: str, *args: Any, **kwargs: Any) -> Any:
        """Return a new serializer of ``format``, built with ``args`` and ``kwargs``.

        Raises:
            SerializerDoesNotExist: no class is registered for ``format``.
        """
        try:
            serializer_class = self._registry[format]
        except KeyError:
            raise SerializerDoesNotExist(format) from None
        return serializer_class(*args, **kwargs)

    @property
    def formats(self) -> list[str]:
        """The registered format names, in registration order."""
        return list(self._registry)


registry = SerializersRegistry()
"""The registry ``serializer_format`` names a format of."""
registry.register_serializer("json", JSONSerializer)
registry.register_serializer("msgpack", MsgPackSerializer)


def _make_crypter(keys: Sequence[str | bytes]) -> tuple[Any, type[Exception]]:
    """Return a ``MultiFernet`` over ``keys`` (the first encrypts) and its ``InvalidToken``."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
        raise ValueError("symmetric_encryption_keys must be a list of keys, not one key")
    for key in keys:  # never show a key in an error
        if not isinstance(key, str | bytes):
            raise ValueError(
                f"symmetric_encryption_keys must hold str or bytes keys, not {type(key).__name__}"
            )
        if not key:
            raise ValueError("symmetric_encryption_keys holds an empty key")
    try:
        fernet = importlib.import_module("cryptography.fernet")
    except ImportError:
        raise InvalidChannelLayerError(
            "symmetric_encryption_keys needs the 'cryptography' package, which is not "
            "installed: pip install 'tidings[encryption]' (or 'cryptography>=42')"
        ) from None
    ciphers = []
    for key in keys:
        raw = key.encode() if isinstance(key, str) else key
        ciphers.append(fernet.Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
    invalid_token: type[Exception] = fernet.InvalidToken
    return fernet.MultiFernet(ciphers), invalid_token
