"""The HPACK encoder of the server's header blocks: static table only, fields cached.

Theory of operation
-------------------
``h2`` encodes every header block we send with an ``hpack.Encoder``, which searches
its dynamic table and Huffman-codes each field again for every response: a tenth of
the cost of a small HTTP/2 response. ``StaticEncoder`` takes its place
(``conn.encoder``) and never uses the dynamic table:

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
of one index octet. Request header blocks are still decoded by ``h2``'s own decoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from hpack import Encoder
from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

__all__ = ["StaticEncoder", "encode_field"]

_HUFFMAN: Final = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_STATIC: Final = HeaderTable.STATIC_TABLE
# Index (from 1) of each whole field and of each name's first entry (RFC 7541 appendix A).
_FIELDS: Final = {field: i for i, field in reversed(list(enumerate(_STATIC, 1)))}
_NAMES: Final = {name: i for i, (name, _) in reversed(list(enumerate(_STATIC, 1)))}
# A dynamic table size update to 0 (section 6.3: 001 and a 5-bit prefix integer).
_EMPTY_TABLE: Final = b"\x20"
# Fields cached, and the longest cached (name plus value): the cache stays under
# ~300 KiB whatever the application sends.
_CACHE_SIZE: Final = 1024
_CACHED_LENGTH: Final = 256
_cache: dict[tuple[bytes, bytes], bytes] = {}


def _string(data: bytes) -> bytes:
    """A string literal (section 5.2): Huffman-coded when that is shorter."""
    coded = _HUFFMAN.encode(data)
    if len(coded) < len(data):
        length = encode_integer(len(coded), 7)
        length[0] |= 0x80
        return bytes(length) + coded
    return bytes(encode_integer(len(data), 7)) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field's representation, without touching any dynamic table."""
    index = _FIELDS.get((name, value))
    if index is not None:
        head = encode_integer(index, 7)
        head[0] |= 0x80
        return bytes(head)
    index = _NAMES.get(name)
    if index is not None:
        return bytes(encode_integer(index, 4)) + _string(value)
    return b"\x00" + _string(name) + _string(value)


class StaticEncoder(Encoder):
    """An ``hpack.Encoder`` for ``h2`` that encodes with the static table only."""

    def __init__(self) -> None:
        super().__init__()
        self._announce = True  # the size update to 0 is still to be sent

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The client's SETTINGS_HEADER_TABLE_SIZE changed: say again that ours is 0.
        self._announce = True

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
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
