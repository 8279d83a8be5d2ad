"""How the Redis channel layer turns messages into bytes and back.

Two steps, kept apart because they run in different places: ``dumps`` and
``loads`` serialize (msgpack by default, JSON on request), ``seal`` and
``open`` encrypt and decrypt the serialized bytes when
``symmetric_encryption_keys`` is set. Messages delivered inside one process
are serialized and read back too (so they behave exactly as they would
across processes: tuples become lists, unserializable values fail at
``send``), but never encrypted.

Encryption uses Fernet (AES-128-CBC with HMAC-SHA256) from the optional
``cryptography`` package, imported only when keys are given. Each key is
stretched to a Fernet key with SHA-256; the first key encrypts, all keys
decrypt, so keys can be rotated by putting the new one first.
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

__all__ = ["SERIALIZER_FORMATS", "Codec"]

SERIALIZER_FORMATS: Final = ("msgpack", "json")
"""Accepted values of ``serializer_format``; msgpack carries ``bytes``, JSON does not."""


class Codec:
    """Serializes messages and, with keys, encrypts them.

    Args:
        serializer_format: ``"msgpack"`` or ``"json"``.
        keys: ``symmetric_encryption_keys``; ``None`` or empty for none.

    Raises:
        ValueError: unknown format, or ``keys`` is a single key rather than a list.
        InvalidChannelLayerError: keys are given but ``cryptography`` is not installed.
    """

    def __init__(self, serializer_format: str, keys: Sequence[str | bytes] | None) -> None:
        if serializer_format not in SERIALIZER_FORMATS:
            raise ValueError(
                f"serializer_format must be 'msgpack' or 'json', not {serializer_format!r}"
            )
        self.format = serializer_format
        self._crypter: Any = _make_crypter(keys) if keys else None

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

    def open(self, data: bytes) -> bytes:
        """Decrypt what ``seal`` made (unchanged without keys)."""
        if self._crypter is None:
            return data
        opened: bytes = self._crypter.decrypt(data)
        return opened


def _make_crypter(keys: Sequence[str | bytes]) -> Any:
    """Return a ``MultiFernet`` over ``keys``, the first of which encrypts."""
    if isinstance(keys, str | bytes):
        raise ValueError("symmetric_encryption_keys must be a list of keys, not one key")
    try:
        fernet = importlib.import_module("cryptography.fernet")
    except ImportError:
        raise InvalidChannelLayerError(
            "symmetric_encryption_keys needs the 'cryptography' package, which is not "
            "installed (pip install cryptography)"
        ) from None
    ciphers = []
    for key in keys:
        raw = key.encode() if isinstance(key, str) else key
        ciphers.append(fernet.Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
    return fernet.MultiFernet(ciphers)
