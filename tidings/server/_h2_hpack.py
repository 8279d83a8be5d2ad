"""The HPACK encoder of the server's header blocks: static table only, fields cached.

Theory of operation
-------------------
An HPACK encoder with a dynamic table searches it and Huffman-codes each field again
for every response, a noticeable part of the cost of a small HTTP/2 response.
``StaticEncoder``, the connection core's encoder, never uses the dynamic table:

- a field that is whole in the static table (``:status 200``) is one indexed octet
  (RFC 7541 section 6.1);
- any other is a literal without indexing (section 6.2.2), its name indexed when the
  static table has it, the strings Huffman-coded when that is shorter (section 5.2).

Such an encoding depends on the field only, never on the fields sent before, so it is
kept in a bounded process-wide cache: a response repeats its ``content-type``, its
``date`` (one per second) and often its ``content-length``. The first block of a
connection, and the first after the client changes SETTINGS_HEADER_TABLE_SIZE, opens
with a dynamic table size update to 0 (section 6.3), which tells the decoder that the
table stays empty whatever size it allows.

The price: repeated custom fields cost their literal bytes on each response instead
of one index octet. Request header blocks are decoded by the core's HPACK decoder.
"""

from __future__ import annotations

from typing import Final

from tidings.wire.hpack import STATIC_TABLE, huffman_encode

__all__ = ["StaticEncoder", "encode_field"]

# Index (from 1) of each whole field and of each name's first entry (RFC 7541 appendix A).
_FIELDS: Final = {field: i for i, field in reversed(list(enumerate(STATIC_TABLE, 1)))}
_NAMES: Final = {name: i for i, (name, _) in reversed(list(enumerate(STATIC_TABLE, 1)))}
# A dynamic table size update to 0 (section 6.3: 001 and a 5-bit prefix integer).
_EMPTY_TABLE: Final = b"\x20"
# Fields cached, and the longest cached (name plus value): the cache stays under
# ~300 KiB whatever the application sends.
_CACHE_SIZE: Final = 1024
_CACHED_LENGTH: Final = 256
_cache: dict[tuple[bytes, bytes], bytes] = {}


def _integer(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    """An integer on an N-bit prefix, ``flags`` in the bits above it (section 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """A string literal (section 5.2): Huffman-coded when that is shorter."""
    coded = huffman_encode(data)
    if len(coded) < len(data):
        return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(data), 7) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field's representation, without touching any dynamic table."""
    index = _FIELDS.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    index = _NAMES.get(name)
    if index is not None:
        return _integer(index, 4) + _string(value)
    return b"\x00" + _string(name) + _string(value)


class StaticEncoder:
    """The HPACK encoder of a connection's responses: the static table only."""

    __slots__ = ("_announce",)

    def __init__(self) -> None:
        self._announce = True  # the size update to 0 is still to be sent

    def set_max_table_size(self, size: int) -> None:
        """The client's SETTINGS_HEADER_TABLE_SIZE changed: say again that ours is 0."""
        self._announce = True

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The header block of ``headers``, ``(name, value)`` pairs of bytes."""
        cache = _cache
        parts = []
        if self._announce:
            self._announce = False
            parts.append(_EMPTY_TABLE)
        for name, value in headers:
            key = (name, value)
            encoded = cache.get(key)
            if encoded is None:
                encoded = encode_field(name, value)
                if len(name) + len(value) <= _CACHED_LENGTH:
                    if len(cache) >= _CACHE_SIZE:
                        cache.clear()
                    cache[key] = encoded
            parts.append(encoded)
        return b"".join(parts)
