"""How the Redis channel layer turns messages into bytes and back.

Two steps, kept apart because they run in different places: ``dumps`` and
``loads`` serialize (msgpack by default, JSON on request); ``seal``
encrypts the serialized bytes when ``symmetric_encryption_keys`` is set,
and ``read`` undoes both for what comes out of Redis. Messages delivered
inside one process are serialized and read back too (so they behave
exactly as they would across processes: tuples become lists,
unserializable values fail at ``send``), but never encrypted.

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

import base64
import hashlib
import importlib
import json
from collections.abc import Sequence
from typing import Any, Final

import msgpack

from tidings.exceptions import InvalidChannelLayerError
from tidings.layers.base import Message

__all__ = ["SERIALIZER_FORMATS", "Codec", "UnreadableMessage"]

SERIALIZER_FORMATS: Final = ("msgpack", "json")
"""Accepted values of ``serializer_format``; msgpack carries ``bytes``, JSON does not."""


class UnreadableMessage(ValueError):
    """Bytes from Redis that are not a message this codec wrote (other keys or format)."""


class Codec:
    """Serializes messages and, with keys, encrypts them.

    Args:
        serializer_format: ``"msgpack"`` or ``"json"``.
        keys: ``symmetric_encryption_keys``; ``None`` or empty for none.

    Raises:
        ValueError: unknown format, or ``keys`` is not a list of non-empty keys.
        InvalidChannelLayerError: keys are given but ``cryptography`` is not installed.
    """

    def __init__(self, serializer_format: str, keys: Sequence[str | bytes] | None) -> None:
        if serializer_format not in SERIALIZER_FORMATS:
            raise ValueError(
                f"serializer_format must be 'msgpack' or 'json', not {serializer_format!r}"
            )
        self.format = serializer_format
        self._crypter: Any = None
        self._invalid_token: type[Exception] = Exception
        if keys:
            self._crypter, self._invalid_token = _make_crypter(keys)

    @property
    def encrypted(self) -> bool:
        """Whether payloads are encrypted."""
        return self._crypter is not None

    def dumps(self, message: Message) -> bytes:
        """Serialize ``message``.

        Raises:
            TypeError: the message holds a value the format cannot carry.
        """
        if self.format == "json":
            return json.dumps(message, separators=(",", ":")).encode()
        data: bytes = msgpack.packb(message, use_bin_type=True)
        return data

    def loads(self, data: bytes) -> Message:
        """Read back a message written by ``dumps``."""
        if self.format == "json":
            message: Message = json.loads(data)
        else:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return message

    def seal(self, data: bytes) -> bytes:
        """Encrypt serialized bytes (unchanged without keys)."""
        if self._crypter is None:
            return data
        sealed: bytes = self._crypter.encrypt(data)
        return sealed

    def read(self, data: bytes) -> Message:
        """Decrypt (with keys) and deserialize what ``seal(dumps(message))`` made.

        Raises:
            UnreadableMessage: no key decrypts ``data``, or it is not a message
                in this format.
        """
        if self._crypter is not None:
            try:
                data = self._crypter.decrypt(data)
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
