"""HPACK (RFC 7541): the header compression of HTTP/2, decoder and encoder.

Theory of operation
-------------------
A header block is a sequence of field representations (RFC 7541 section 6) that refer
to a table of 61 static entries (appendix A) followed by a dynamic table of recently
inserted fields, newest first (section 2.3). Each side of a connection keeps one
``Decoder`` (the peer's blocks) and one ``Encoder`` (ours); both are sans-I/O.

``Decoder`` looks an index ``i`` of the RFC up in ``_STATIC`` (shared, ``i`` < 62,
``_STATIC[0]`` is ``None``) or in ``_dynamic`` (its own list, newest first). The
decoder's invariants:

- the running size of the decoded list is checked after every field and the block
  refused (``HeaderListTooLarge``) as soon as it exceeds ``max_header_list_size``: a
  small block that references one big entry many times (an HPACK bomb) never grows
  a list past the limit;
- integers longer than five continuation octets, over 2**32 or padded with a zero
  octet, strings longer than the rest of the block, Huffman strings that decode EOS
  or end in more than 7 bits of padding or padding that is not all ones, index 0,
  indexes past the table, and dynamic table size updates that are not at the start
  of the block or exceed ``max_allowed_table_size`` all raise ``HpackError``.

Two caches make repeated blocks cheap. A block whose decoding did not change the
dynamic table decodes to the same list as long as the table does not change, so the
decoder keeps a few such blocks (keyed by their bytes) and forgets them all whenever
the table changes; browsers and load generators send the same block of indexed fields
again and again. Huffman-decoded strings depend on their bytes only, so a bounded
process-wide cache maps short coded strings to their text.

The Huffman code (section 5.2, appendix B) is in ``_hpack_huffman.py``: a state
machine over whole octets, its rows built on first use and shared by every decoder.

``Encoder`` indexes whole fields that are in the static table, inserts fields that
are likely to repeat into its dynamic table (at most 4096 octets) and sends the rest
as literals that are never (sensitive fields, section 7.1.3) or not (fields that
change on every response) indexed; literal encodings are cached process-wide.

What must not be added here: HTTP semantics (pseudo-header rules, lowercase names,
connection-specific fields); those belong to the HTTP/2 connection core.

Error tree::

    HpackError                     a malformed block: HTTP/2 COMPRESSION_ERROR
     +-- HeaderListTooLarge        the decoded list exceeds max_header_list_size
"""

from __future__ import annotations

from typing import Final

from tidings.wire import _hpack_huffman

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "STATIC_TABLE",
    "Decoder",
    "Encoder",
    "HeaderListTooLarge",
    "HpackError",
    "huffman_decode",
    "huffman_encode",
]

Field = tuple[bytes, bytes]

#: SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 9113 section 6.5.2); also the most
#: our encoder ever uses, whatever the peer allows (nghttp2 and h2 do the same).
DEFAULT_TABLE_SIZE: Final = 4096

#: RFC 7541 appendix A; index i of the RFC is STATIC_TABLE[i - 1].
STATIC_TABLE: Final[tuple[Field, ...]] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    )
)
_FIRST_DYNAMIC: Final = len(STATIC_TABLE) + 1  # 62, the newest dynamic entry's index
_ENTRY_OVERHEAD: Final = 32  # section 4.1
_MAX_INTEGER: Final = 2**32 - 1  # larger integers are refused (section 5.1)
_MAX_CONTINUATION: Final = 5  # octets after the prefix: 5 * 7 bits cover 2**32


class HpackError(Exception):
    """A malformed header block: the connection fails with COMPRESSION_ERROR."""


class HeaderListTooLarge(HpackError):
    """The decoded header list exceeds ``max_header_list_size`` (an HPACK bomb)."""


# -- Huffman code (section 5.2; the code itself is in _hpack_huffman.py) ---------------

#: Huffman-code ``data`` (section 5.2), padded with the most significant bits of EOS.
huffman_encode: Final = _hpack_huffman.encode
# Process-wide cache of decoded Huffman strings: bounded in count and key length.
_HUFFMAN_CACHE: dict[bytes, bytes] = {}
_HUFFMAN_CACHE_SIZE: Final = 512
_HUFFMAN_CACHED_LENGTH: Final = 256


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string (section 5.2).

    Raises:
        HpackError: the string contains EOS, or its padding is longer than 7 bits or
            not the most significant bits of EOS (all ones).
    """
    try:
        return _hpack_huffman.decode(data)
    except ValueError as exc:
        raise HpackError(str(exc)) from None


# -- Primitive representations (section 5) --------------------------------------------


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The rest of an integer whose prefix (``value``) was all ones (section 5.1).

    Returns the integer and the position after it.
    """
    shift = 0
    for _ in range(_MAX_CONTINUATION):
        octet = data[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        if not octet & 0x80:
            if not octet and shift:
                raise HpackError("integer padded with a zero octet")
            if value > _MAX_INTEGER:
                raise HpackError("integer too large")
            return value, pos
        shift += 7
    raise HpackError("integer too long")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal at ``pos`` (section 5.2) and the position after it."""
    first = data[pos]
    length = first & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(data, pos, 0x7F)
    end = pos + length
    if end > len(data):
        raise HpackError("string longer than the header block")
    text = data[pos:end]
    if first & 0x80:
        text = _HUFFMAN_CACHE.get(text) or _huffman(text)
    return text, end


def _huffman(text: bytes) -> bytes:
    """Decode a Huffman string, and cache it if it is short."""
    decoded = huffman_decode(text)
    if len(text) <= _HUFFMAN_CACHED_LENGTH:
        if len(_HUFFMAN_CACHE) >= _HUFFMAN_CACHE_SIZE:
            _HUFFMAN_CACHE.clear()
        _HUFFMAN_CACHE[text] = decoded
    return decoded


def _encode_integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """``value`` with an N-bit prefix (section 5.1), ``flags`` in the first octet."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_string(data: bytes, huffman: bool) -> bytes:
    """A string literal (section 5.2): Huffman-coded when asked and shorter."""
    if huffman:
        coded = huffman_encode(data)
        if len(coded) < len(data):
            return _encode_integer(len(coded), 7, 0x80) + coded
    return _encode_integer(len(data), 7, 0) + data


# -- Decoder --------------------------------------------------------------------------

# The static table by the RFC's index; index 0 is invalid (None).
_STATIC: Final[tuple[Field | None, ...]] = (None, *STATIC_TABLE)
_CACHED_BLOCKS: Final = 8  # blocks remembered per decoder
_CACHED_BLOCK_LENGTH: Final = 512  # the longest block remembered, in octets


class Decoder:
    """Decodes the header blocks of one connection's peer (section 3).

    Args:
        max_table_size: the dynamic table's maximum size, what we advertise in
            SETTINGS_HEADER_TABLE_SIZE (4096 by default, the setting's initial value).
        max_header_list_size: the largest header list accepted, counted as in
            section 4.1 (what we advertise in SETTINGS_MAX_HEADER_LIST_SIZE).

    ``max_allowed_table_size`` may be changed once the peer has acknowledged a new
    SETTINGS_HEADER_TABLE_SIZE. Lowering it below the table's current maximum size
    means the peer's next block must start with a size update that fits (section 4.2).
    """

    __slots__ = (
        "_allowed",
        "_blocks",
        "_capacity",
        "_changes",
        "_dynamic",
        "_limit",
        "_must_update",
        "_size",
    )

    def __init__(
        self, max_table_size: int = DEFAULT_TABLE_SIZE, max_header_list_size: int = 65536
    ) -> None:
        self._dynamic: list[Field] = []  # newest first: index 62 is _dynamic[0]
        self._size = 0  # of the dynamic entries
        self._capacity = max_table_size  # the dynamic table's maximum size (section 4.2)
        self._allowed = max_table_size
        self._must_update = False
        self._limit = max_header_list_size
        self._changes = 0  # counts changes of the dynamic table
        self._blocks: dict[bytes, list[Field]] = {}

    @property
    def max_allowed_table_size(self) -> int:
        """The largest dynamic table size the peer may set (our SETTINGS value)."""
        return self._allowed

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self._allowed = value
        if value < self._capacity:
            self._must_update = True
            self._blocks.clear()

    @property
    def max_header_list_size(self) -> int:
        """The largest header list accepted (section 4.1 sizes)."""
        return self._limit

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._limit = value
        self._blocks.clear()

    @property
    def table_size(self) -> int:
        """The dynamic table's current size in octets (section 4.1)."""
        return self._size

    @property
    def dynamic_table(self) -> list[Field]:
        """The dynamic table's entries, newest first (index 62 onwards)."""
        return self._dynamic.copy()

    def decode(self, data: bytes | bytearray | memoryview) -> list[Field]:
        """The header list of one complete header block, names and values in order.

        Raises:
            HeaderListTooLarge: the list exceeds ``max_header_list_size``; decoding
                stops there, the block is not finished.
            HpackError: the block is malformed.

        After either error the dynamic table is out of step with the peer's: the
        connection must end (RFC 9113 section 4.3, COMPRESSION_ERROR).
        """
        if type(data) is not bytes:
            data = bytes(data)
        headers = self._blocks.get(data)
        if headers is not None:
            return headers.copy()
        changes = self._changes
        try:
            headers = self._decode(data)
        finally:
            if self._changes != changes:
                self._blocks.clear()  # they decode differently now
        if self._changes == changes and len(data) <= _CACHED_BLOCK_LENGTH:
            if len(self._blocks) >= _CACHED_BLOCKS:
                self._blocks.clear()
            self._blocks[data] = headers.copy()
        return headers

    def _decode(self, data: bytes) -> list[Field]:
        static = _STATIC
        dynamic = self._dynamic
        limit = self._limit
        headers: list[Field] = []
        append = headers.append
        size = 0
        end = len(data)
        try:
            pos = self._size_updates(data) if self._must_update or data[:1] < b"\x40" else 0
            while pos < end:
                octet = data[pos]
                if octet & 0x80:  # indexed field (section 6.1)
                    pos += 1
                    index = octet & 0x7F
                    if index == 0x7F:
                        index, pos = _integer(data, pos, 0x7F)
                    if index < _FIRST_DYNAMIC:
                        field = static[index]
                    else:
                        field = dynamic[index - _FIRST_DYNAMIC]
                else:
                    field, pos = self._literal(data, pos, octet)
                name, value = field  # type: ignore[misc]
                size += len(name) + len(value) + _ENTRY_OVERHEAD
                if size > limit:
                    raise HeaderListTooLarge(f"header list larger than {limit} octets")
                append(field)  # type: ignore[arg-type]
        except IndexError:
            raise HpackError("truncated header block or index past the table") from None
        except TypeError:
            raise HpackError("index 0") from None
        return headers

    def _size_updates(self, data: bytes) -> int:
        """Apply the size updates at the start of a block; the position after them."""
        pos = 0
        while pos < len(data) and data[pos] & 0xE0 == 0x20:
            size = data[pos] & 0x1F
            pos += 1
            if size == 0x1F:
                size, pos = _integer(data, pos, 0x1F)
            if size > self._allowed:
                raise HpackError(f"table size update to {size} above {self._allowed}")
            self._capacity = size
            self._evict()
            self._changes += 1
            self._must_update = False
        if self._must_update:
            raise HpackError("expected a dynamic table size update")
        return pos

    def _literal(self, data: bytes, pos: int, octet: int) -> tuple[Field, int]:
        """A literal field at ``pos`` (sections 6.2.1-6.2.3) and the position after it."""
        if octet & 0x40:
            prefix = 0x3F  # with incremental indexing
        elif octet & 0x20:
            raise HpackError("dynamic table size update after the first field")
        else:
            prefix = 0x0F  # without indexing, or never indexed
        index = octet & prefix
        pos += 1
        if index == prefix:
            index, pos = _integer(data, pos, prefix)
        if index:
            entry = (
                _STATIC[index] if index < _FIRST_DYNAMIC else self._dynamic[index - _FIRST_DYNAMIC]
            )
            name = entry[0]  # type: ignore[index]
        else:
            name, pos = _string(data, pos)
        first = data[pos]  # the value: _string, inlined for speed
        end = first & 0x7F
        pos += 1
        if end == 0x7F:
            end, pos = _integer(data, pos, 0x7F)
        end += pos
        if end > len(data):
            raise HpackError("string longer than the header block")
        value = data[pos:end]
        pos = end
        if first & 0x80:
            value = _HUFFMAN_CACHE.get(value) or _huffman(value)
        field = (name, value)
        if prefix == 0x3F:
            size = len(name) + len(value) + _ENTRY_OVERHEAD
            self._changes += 1
            if size <= self._capacity - self._size:  # fits without evicting
                self._dynamic.insert(0, field)
                self._size += size
            else:
                self._insert_evicting(field, size)
        return field, pos

    def _insert_evicting(self, field: Field, size: int) -> None:
        """Add ``field`` to the dynamic table, evicting the oldest (section 4.4)."""
        if size > self._capacity:
            self._dynamic.clear()
            self._size = 0
            return
        self._dynamic.insert(0, field)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        """Drop the oldest entries until the table fits its maximum size (section 4.3)."""
        while self._size > self._capacity:
            name, value = self._dynamic.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


# -- Encoder --------------------------------------------------------------------------

#: Fields whose values are secrets an attacker may probe for (section 7.1.3): never
#: indexed, here or by any intermediary.
_SENSITIVE: Final = frozenset((b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"))
#: Fields whose values change from one message to the next: indexing them would only
#: evict fields that repeat.
_VOLATILE: Final = frozenset(
    (
        b":path",
        b"age",
        b"content-length",
        b"content-range",
        b"date",
        b"etag",
        b"expires",
        b"if-modified-since",
        b"if-none-match",
        b"last-modified",
        b"location",
        b"x-request-id",
    )
)
# Whole static fields as one indexed octet, and each static name's first index.
_STATIC_FIELDS: Final = {
    field: _encode_integer(i, 7, 0x80) for i, field in reversed(list(enumerate(STATIC_TABLE, 1)))
}
_STATIC_NAMES: Final = {name: i for i, (name, _) in reversed(list(enumerate(STATIC_TABLE, 1)))}
# Process-wide cache of literals that do not touch the table: bounded in count and length.
_LITERAL_CACHE: dict[tuple[bytes, bytes, bool], bytes] = {}
_LITERAL_CACHE_SIZE: Final = 1024
_LITERAL_CACHED_LENGTH: Final = 256
# Per encoder: the fields whose encodings are kept, and the longest kept.
_KNOWN_FIELDS: Final = 16
_KNOWN_LENGTH: Final = 128


def _unindexed_literal(name: bytes, value: bytes, huffman: bool) -> bytes:
    """A literal that leaves the table alone: never indexed if sensitive, else not indexed."""
    key = (name, value, huffman)
    encoded = _LITERAL_CACHE.get(key)
    if encoded is None:
        sensitive = name in _SENSITIVE
        index = _STATIC_NAMES.get(name, 0)
        encoded = _encode_integer(index, 4, 0x10 if sensitive else 0x00)
        if not index:
            encoded += _encode_string(name, huffman)
        encoded += _encode_string(value, huffman)
        # Credentials are not kept beyond their connection (nor would they repeat).
        if not sensitive and len(name) + len(value) <= _LITERAL_CACHED_LENGTH:
            if len(_LITERAL_CACHE) >= _LITERAL_CACHE_SIZE:
                _LITERAL_CACHE.clear()
            _LITERAL_CACHE[key] = encoded
    return encoded


class Encoder:
    """Encodes our header blocks for one connection's peer (section 3).

    The encoding of a field that is indexed or sent as a literal that leaves the table
    alone stays the same until the table changes; ``_known`` keeps a few of them (for
    Huffman-coded blocks) and is emptied by every insertion or size change.
    """

    __slots__ = (
        "_capacity",
        "_entries",
        "_inserted",
        "_known",
        "_numbers",
        "_size",
        "_smallest",
    )

    def __init__(self) -> None:
        self._capacity = DEFAULT_TABLE_SIZE
        self._size = 0
        self._entries: list[tuple[Field, int]] = []  # oldest first, with sizes
        self._inserted = 0  # entries ever inserted: the next entry's insertion number
        # The newest insertion number of each field (key: the field) and name (key: the
        # name); one dictionary for both saves memory, a tuple never equals bytes.
        self._numbers: dict[Field | bytes, int] = {}
        self._smallest: int | None = None  # smallest size since the last block
        self._known: dict[Field, bytes] = {}  # field -> its encoding while the table stays

    def set_max_table_size(self, n: int) -> None:
        """Apply the peer's SETTINGS_HEADER_TABLE_SIZE.

        The table shrinks at once if it must; the next block opens with the size
        update(s) that tell the peer (section 4.2: the smallest size reached since the
        last block, then the final one).
        """
        size = min(n, DEFAULT_TABLE_SIZE)
        if size == self._capacity and self._smallest is None:
            return
        self._smallest = size if self._smallest is None else min(self._smallest, size)
        self._capacity = size
        self._evict()

    def encode(self, headers: list[Field], *, huffman: bool = True) -> bytes:
        """The header block of ``headers``, ``(name, value)`` pairs of bytes, in order."""
        parts = []
        if self._smallest is not None:
            parts.append(_encode_integer(self._smallest, 5, 0x20))
            if self._capacity != self._smallest:
                parts.append(_encode_integer(self._capacity, 5, 0x20))
            self._smallest = None
        known = self._known if huffman else {}
        for name, value in headers:
            field = (name, value)
            encoded = known.get(field)
            if encoded is None:
                encoded = self._field(field, huffman)
            parts.append(encoded)
        return b"".join(parts)

    def _field(self, field: Field, huffman: bool) -> bytes:
        """Encode one field, remembering the encoding if the table did not change."""
        name, value = field
        encoded = _STATIC_FIELDS.get(field)
        if encoded is None:
            number = self._numbers.get(field)
            if number is not None:
                encoded = _encode_integer(_FIRST_DYNAMIC + self._inserted - 1 - number, 7, 0x80)
            elif name in _VOLATILE or name in _SENSITIVE:
                encoded = _unindexed_literal(name, value, huffman)
            else:
                inserted = self._inserted
                encoded = self._indexed_literal(field, huffman)
                if self._inserted != inserted:
                    return encoded
        if huffman and len(name) + len(value) <= _KNOWN_LENGTH:
            if len(self._known) >= _KNOWN_FIELDS:
                self._known.clear()
            self._known[field] = encoded
        return encoded

    def _indexed_literal(self, field: Field, huffman: bool) -> bytes:
        """A literal with incremental indexing (section 6.2.1), inserted here too."""
        name, value = field
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._capacity // 2:
            return _unindexed_literal(name, value, huffman)
        index = _STATIC_NAMES.get(name)
        if index is None:
            number = self._numbers.get(name)
            index = 0 if number is None else _FIRST_DYNAMIC + self._inserted - 1 - number
        encoded = _encode_integer(index, 6, 0x40)
        if not index:
            encoded += _encode_string(name, huffman)
        encoded += _encode_string(value, huffman)
        self._entries.append((field, size))
        self._size += size
        self._numbers[field] = self._numbers[name] = self._inserted
        self._inserted += 1
        self._known.clear()  # every dynamic index moved
        self._evict()
        return encoded

    def _evict(self) -> None:
        """Drop the oldest entries until the table fits (section 4.3), as the peer will."""
        self._known.clear()
        while self._size > self._capacity:
            number = self._inserted - len(self._entries)
            field, size = self._entries.pop(0)
            self._size -= size
            if self._numbers.get(field) == number:
                del self._numbers[field]
            if self._numbers.get(field[0]) == number:
                del self._numbers[field[0]]
