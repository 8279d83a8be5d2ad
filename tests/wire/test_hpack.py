"""tidings.wire.hpack: RFC 7541 vectors, every decoding error, the caches, the encoder."""

from __future__ import annotations

import gc
import tracemalloc

import hpack as peer
import pytest

from tidings.wire import hpack
from tidings.wire.hpack import (
    DEFAULT_TABLE_SIZE,
    STATIC_TABLE,
    Decoder,
    Encoder,
    HeaderListTooLarge,
    HpackError,
)

Headers = list[tuple[bytes, bytes]]


def _h(*pairs: tuple[str, str]) -> Headers:
    return [(n.encode(), v.encode()) for n, v in pairs]


# -- Tables ---------------------------------------------------------------------------


def test_static_table_is_appendix_a() -> None:
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE[0] == (b":authority", b"")
    assert STATIC_TABLE[7] == (b":status", b"200")
    assert STATIC_TABLE[60] == (b"www-authenticate", b"")
    assert list(STATIC_TABLE) == list(peer.table.HeaderTable.STATIC_TABLE)


# -- Primitives (section 5, appendix C.1) ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "prefix", "encoded"),
    [
        (10, 5, "0a"),  # C.1.1
        (1337, 5, "1f9a0a"),  # C.1.2
        (42, 8, "2a"),  # C.1.3
        (31, 5, "1f00"),
        (2**32 - 1, 5, "1fe0ffffff0f"),
    ],
)
def test_integers_of_appendix_c1(value: int, prefix: int, encoded: str) -> None:
    data = bytes.fromhex(encoded)
    assert hpack._encode_integer(value, prefix, 0) == data
    limit = (1 << prefix) - 1
    if value >= limit:
        assert hpack._integer(data, 1, limit) == (value, len(data))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("ff80", "truncated"),  # continuation announced, block ends
        ("ff8000", "padded with a zero"),  # overlong: a final zero octet
        ("ff808080808000", "too long"),  # six continuation octets
        ("fff0ffffff0f", "too large"),  # 2**32 + 111
        ("3fe2ffffff0f", "too large"),  # a size update of 2**32 + 1
    ],
)
def test_integer_overflow_and_overlong_encodings_are_refused(block: str, message: str) -> None:
    with pytest.raises(HpackError, match=message):
        Decoder().decode(bytes.fromhex(block))


def test_string_longer_than_the_block_is_refused() -> None:
    with pytest.raises(HpackError, match="longer than the header block"):
        Decoder().decode(b"\x00\x05abc")
    with pytest.raises(HpackError, match="longer than the header block"):
        Decoder().decode(b"\x00\x01a\x7f\x00")  # value of 127 octets announced


def test_long_names_and_values_use_multi_octet_lengths() -> None:
    name, value = b"x-" + b"n" * 200, b"v" * 300
    for huffman in (False, True):
        block = Encoder().encode([(name, value)], huffman=huffman)
        assert block[1] & 0x7F == 0x7F  # the name's length does not fit the prefix
        assert Decoder().decode(block) == [(name, value)]


def test_huffman_error_in_a_block_is_an_hpack_error() -> None:
    with pytest.raises(HpackError, match="EOS"):
        Decoder().decode(b"\x00\x01a\x84\xff\xff\xff\xff")


# -- Appendix C.2 to C.6 --------------------------------------------------------------


def test_c2_literal_and_indexed_representations() -> None:
    # C.2.1: literal with incremental indexing, new name.
    decoder = Decoder()
    block = bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572")
    assert decoder.decode(block) == _h(("custom-key", "custom-header"))
    assert decoder.dynamic_table == _h(("custom-key", "custom-header"))
    assert decoder.table_size == 55
    # C.2.2: literal without indexing, indexed name.
    decoder = Decoder()
    assert decoder.decode(bytes.fromhex("040c2f73616d706c652f70617468")) == _h(
        (":path", "/sample/path")
    )
    assert decoder.dynamic_table == []
    # C.2.3: literal never indexed, new name.
    decoder = Decoder()
    assert decoder.decode(bytes.fromhex("100870617373776f726406736563726574")) == _h(
        ("password", "secret")
    )
    assert decoder.table_size == 0
    # C.2.4: indexed field.
    assert Decoder().decode(b"\x82") == _h((":method", "GET"))


_C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
_C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
_REQUESTS = [
    _h((":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")),
    _h(
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ),
    _h(
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ),
]
_REQUEST_TABLES = [
    (57, _h((":authority", "www.example.com"))),
    (110, _h(("cache-control", "no-cache"), (":authority", "www.example.com"))),
    (
        164,
        _h(
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ),
    ),
]


@pytest.mark.parametrize("blocks", [_C3, _C4], ids=["C.3", "C.4"])
def test_c3_c4_requests(blocks: list[str]) -> None:
    decoder = Decoder()
    for block, headers, (size, table) in zip(blocks, _REQUESTS, _REQUEST_TABLES, strict=True):
        assert decoder.decode(bytes.fromhex(block)) == headers
        assert decoder.table_size == size
        assert decoder.dynamic_table == table


_C5 = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a3231"
    "20474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a697077"
    "38666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d616765"
    "3d333630303b2076657273696f6e3d31",
]
_C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad17"
    "1863c78f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6"
    "c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]
_DATE1 = ("date", "Mon, 21 Oct 2013 20:13:21 GMT")
_DATE2 = ("date", "Mon, 21 Oct 2013 20:13:22 GMT")
_LOCATION = ("location", "https://www.example.com")
_COOKIE = ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
_RESPONSES = [
    _h((":status", "302"), ("cache-control", "private"), _DATE1, _LOCATION),
    _h((":status", "307"), ("cache-control", "private"), _DATE1, _LOCATION),
    _h(
        (":status", "200"),
        ("cache-control", "private"),
        _DATE2,
        _LOCATION,
        ("content-encoding", "gzip"),
        _COOKIE,
    ),
]
_RESPONSE_TABLES = [
    (222, _h(_LOCATION, _DATE1, ("cache-control", "private"), (":status", "302"))),
    (222, _h((":status", "307"), _LOCATION, _DATE1, ("cache-control", "private"))),
    (215, _h(_COOKIE, ("content-encoding", "gzip"), _DATE2)),
]


@pytest.mark.parametrize("blocks", [_C5, _C6], ids=["C.5", "C.6"])
def test_c5_c6_responses_with_eviction(blocks: list[str]) -> None:
    decoder = Decoder(max_table_size=256)
    for block, headers, (size, table) in zip(blocks, _RESPONSES, _RESPONSE_TABLES, strict=True):
        assert decoder.decode(bytes.fromhex(block)) == headers
        assert decoder.table_size == size
        assert decoder.dynamic_table == table


# -- Decoding errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # indexed field 0
        b"\x82\x80",
    ],
)
def test_index_zero_is_refused(block: bytes) -> None:
    with pytest.raises(HpackError, match="index 0"):
        Decoder().decode(block)


@pytest.mark.parametrize(
    "block",
    [
        b"\xbe",  # 62: the dynamic table is empty
        b"\xff\x80\x01",  # 255
        b"\x7e\x01a",  # literal whose name index 62 is past the table
        b"\x0f\x30\x01a",  # name index 63, never-indexed prefix
        b"\x82\x41",  # literal announced, block ends
    ],
)
def test_index_past_the_table_or_truncated_block_is_refused(block: bytes) -> None:
    with pytest.raises(HpackError, match="truncated header block or index past the table"):
        Decoder().decode(block)


def test_dynamic_index_past_the_newest_entries() -> None:
    decoder = Decoder()
    decoder.decode(b"\x41\x01a")  # :authority: a, index 62
    assert decoder.decode(b"\xbe") == [(b":authority", b"a")]
    with pytest.raises(HpackError):
        decoder.decode(b"\xbf")


def test_size_update_must_be_at_the_start_of_the_block() -> None:
    decoder = Decoder()
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == _h((":method", "GET"))  # 0, then 4096
    with pytest.raises(HpackError, match="after the first field"):
        decoder.decode(b"\x82\x20")


def test_size_update_above_the_allowed_size_is_refused() -> None:
    decoder = Decoder(max_table_size=256)
    assert decoder.max_allowed_table_size == 256
    decoder.decode(b"\x3f\xe1\x01")  # 256
    with pytest.raises(HpackError, match="above 256"):
        decoder.decode(b"\x3f\xe2\x01")  # 257


def test_size_update_evicts_and_resizes() -> None:
    decoder = Decoder()
    decoder.decode(b"\x41\x01a\x41\x01b")
    assert decoder.table_size == 2 * 43
    decoder.decode(b"\x3f\x0d")  # 44: only the newest stays
    assert decoder.dynamic_table == [(b":authority", b"b")]
    decoder.decode(b"\x20")  # 0: empty
    assert decoder.dynamic_table == []
    # An entry larger than the table empties it and is not inserted (section 4.4).
    decoder.decode(b"\x3f\x0d\x41\x01c")
    assert decoder.decode(b"\x41\x03cde") == [(b":authority", b"cde")]  # 45 octets
    assert decoder.dynamic_table == []
    assert decoder.table_size == 0


def test_lowering_the_allowed_size_requires_an_update() -> None:
    decoder = Decoder()
    decoder.decode(b"\x41\x01a")
    decoder.decode(b"\x82")  # cached, must not be served after the change
    decoder.max_allowed_table_size = 40
    with pytest.raises(HpackError, match="expected a dynamic table size update"):
        decoder.decode(b"\x82")
    with pytest.raises(HpackError, match="above 40"):
        decoder.decode(b"\x3f\x0a\x82")  # 41
    assert decoder.decode(b"\x3f\x09\x82") == _h((":method", "GET"))  # 40: evicts 43
    assert decoder.dynamic_table == []
    assert decoder.decode(b"\x82") == _h((":method", "GET"))
    decoder.max_allowed_table_size = 4096  # raising it asks for nothing
    assert decoder.decode(b"\x83") == _h((":method", "POST"))


# -- Header list size (HPACK bombs) ---------------------------------------------------


def test_header_list_size_counts_32_per_field() -> None:
    block = b"\x82\x84"  # (7 + 3 + 32) + (5 + 1 + 32) = 80
    assert Decoder(max_header_list_size=80).decode(block) == _h((":method", "GET"), (":path", "/"))
    with pytest.raises(HeaderListTooLarge, match="79"):
        Decoder(max_header_list_size=79).decode(block)
    with pytest.raises(HeaderListTooLarge):
        Decoder(max_header_list_size=79).decode(b"\x00\x01a\x30" + b"x" * 48)


def test_changing_the_header_list_size_forgets_cached_blocks() -> None:
    decoder = Decoder()
    assert decoder.max_header_list_size == 65536
    decoder.decode(b"\x82\x84")
    decoder.max_header_list_size = 79
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\x82\x84")


def test_hpack_bomb_is_refused_with_bounded_memory() -> None:
    # One 4 KiB entry, then 10,000 references to it: 40 MiB once expanded.
    decoder = Decoder(max_table_size=8192, max_header_list_size=65536)
    decoder.max_allowed_table_size = 8192
    value = b"v" * 4000
    insert = (
        b"\x3f\xe1\x3f" + b"\x40\x01x\x7f" + hpack._encode_integer(len(value), 7, 0)[1:] + value
    )
    assert decoder.decode(insert) == [(b"x", value)]
    bomb = b"\xbe" * 10_000
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(HeaderListTooLarge):
            decoder.decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # the expanded list would be 10,000 * 4 KiB
    # The decoder stays usable: the table did not change.
    assert decoder.decode(b"\xbe") == [(b"x", value)]


def test_literal_bomb_stops_at_the_limit() -> None:
    # Literals without indexing are as big as the block; the list stops at the limit.
    field = b"\x00\x01a\x7f\x81\x07" + b"y" * 1000
    decoder = Decoder(max_header_list_size=10_000)
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(field * 100)


# -- The block cache ------------------------------------------------------------------


def test_repeated_block_follows_the_table() -> None:
    decoder = Decoder()
    decoder.decode(b"\x41\x01a")
    first = decoder.decode(b"\xbe\x82")
    assert first == [(b":authority", b"a"), (b":method", b"GET")]
    first.append((b"mutated", b"by the caller"))
    assert decoder.decode(b"\xbe\x82") == [(b":authority", b"a"), (b":method", b"GET")]
    decoder.decode(b"\x41\x01b")  # the table changes: index 62 is now b
    assert decoder.decode(b"\xbe\x82") == [(b":authority", b"b"), (b":method", b"GET")]
    assert decoder.decode(bytearray(b"\xbf")) == [(b":authority", b"a")]


def test_block_cache_is_bounded() -> None:
    decoder = Decoder()
    for i in range(3 * hpack._CACHED_BLOCKS):
        assert decoder.decode(bytes([0x80 | (i % 61 + 1)])) == [STATIC_TABLE[i % 61]]
        assert len(decoder._blocks) <= hpack._CACHED_BLOCKS
    long_block = b"\x82" * (hpack._CACHED_BLOCK_LENGTH + 1)
    decoder.decode(long_block)
    assert long_block not in decoder._blocks


def test_huffman_cache_is_bounded() -> None:
    hpack._HUFFMAN_CACHE.clear()
    for i in range(hpack._HUFFMAN_CACHE_SIZE + 10):
        value = str(i).encode()
        assert Decoder().decode(b"\x04" + hpack._encode_string(value, True)) == [(b":path", value)]
        assert len(hpack._HUFFMAN_CACHE) <= hpack._HUFFMAN_CACHE_SIZE
    long_value = b"z" * 400
    coded = hpack._encode_string(long_value, True)
    assert Decoder().decode(b"\x04" + coded) == [(b":path", long_value)]
    assert coded[2:] not in hpack._HUFFMAN_CACHE


# -- Encoder --------------------------------------------------------------------------


def _peer_decode(decoder: peer.Decoder, block: bytes) -> Headers:
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]


def test_encoder_indexes_static_fields_and_repeats() -> None:
    encoder = Encoder()
    headers = _h((":status", "200"), ("content-type", "text/plain"), ("content-length", "13"))
    first = encoder.encode(headers)
    assert first[:1] == b"\x88"
    second = encoder.encode(headers)
    assert second == b"\x88\xbe" + hpack._unindexed_literal(b"content-length", b"13", True)
    decoder = Decoder()
    assert decoder.decode(first) == headers
    assert decoder.decode(second) == headers
    assert decoder.dynamic_table == _h(("content-type", "text/plain"))


def test_encoder_never_indexes_sensitive_fields() -> None:
    encoder = Encoder()
    block = encoder.encode(_h(("set-cookie", "sid=1"), ("authorization", "x")), huffman=False)
    assert block == b"\x1f\x28\x05sid=1\x1f\x08\x01x"
    assert encoder.encode(_h(("set-cookie", "sid=1"))) == hpack._unindexed_literal(
        b"set-cookie", b"sid=1", True
    )
    assert (b"set-cookie", b"sid=1", True) not in hpack._LITERAL_CACHE
    decoder = peer.Decoder()
    assert _peer_decode(decoder, block) == _h(("set-cookie", "sid=1"), ("authorization", "x"))
    assert len(decoder.header_table.dynamic_entries) == 0


def test_encoder_new_names_and_dynamic_names() -> None:
    encoder = Encoder()
    decoder = Decoder()
    one = encoder.encode(_h(("x-trace", "a")), huffman=False)
    assert one == b"\x40\x07x-trace\x01a"
    two = encoder.encode(_h(("x-trace", "b")), huffman=False)
    assert two == b"\x7e\x01b"  # the name from index 62
    unindexed = encoder.encode(_h(("x-new", "z" * 3000)), huffman=False)  # too big to index
    assert unindexed[:1] == b"\x00"
    for block in (one, two, unindexed):
        decoder.decode(block)
    assert decoder.dynamic_table == _h(("x-trace", "b"), ("x-trace", "a"))


def test_encoder_evicts_as_the_decoder_does() -> None:
    encoder = Encoder()
    decoder = Decoder()
    peer_decoder = peer.Decoder()
    for round_ in range(3):
        for i in range(200):  # 200 entries of 42 octets: ~8 KiB through a 4 KiB table
            headers = _h(("x-k", f"{i:07d}"), ("x-k", f"{i // 2:07d}"))
            block = encoder.encode(headers)
            assert decoder.decode(block) == headers, (round_, i)
            assert _peer_decode(peer_decoder, block) == headers
        assert encoder._size == decoder.table_size <= DEFAULT_TABLE_SIZE


def test_set_max_table_size_emits_updates() -> None:
    encoder = Encoder()
    headers = _h(("x-a", "1"))
    encoder.set_max_table_size(4096)  # unchanged: no update
    encoder.set_max_table_size(65536)  # we keep 4096: no update
    assert encoder.encode(headers)[:1] == b"\x40"
    encoder.set_max_table_size(100)
    block = encoder.encode(headers)
    assert block == b"\x3f\x45\xbe"  # update to 100; the entry (36 octets) still fits
    encoder.set_max_table_size(0)
    encoder.set_max_table_size(4096)
    block = encoder.encode(headers)
    assert block[:5] == b"\x20\x3f\xe1\x1f\x40"  # smallest (0), then final (4096)
    decoder = peer.Decoder()
    assert _peer_decode(decoder, block) == headers
    encoder.set_max_table_size(0)
    block = encoder.encode(headers, huffman=False)
    assert block == b"\x20\x00\x03x-a\x011"  # no table: not indexed
    assert Decoder().decode(block) == headers


def test_unindexed_literal_cache_is_bounded() -> None:
    hpack._LITERAL_CACHE.clear()
    encoder = Encoder()
    for i in range(hpack._LITERAL_CACHE_SIZE + 10):
        encoder.encode([(b"content-length", str(i).encode())])
        assert len(hpack._LITERAL_CACHE) <= hpack._LITERAL_CACHE_SIZE
    encoder.encode([(b"date", b"d" * 300)])
    assert (b"date", b"d" * 300, True) not in hpack._LITERAL_CACHE


def test_encoder_output_round_trips_through_both_decoders() -> None:
    headers = [*_RESPONSES[2], (b"x-long", b"q" * 200), (b"x-bin", bytes(range(256)))]
    encoder = Encoder()
    ours = Decoder()
    theirs = peer.Decoder()
    for huffman in (True, False, True):
        block = encoder.encode(headers, huffman=huffman)
        assert ours.decode(block) == headers
        assert _peer_decode(theirs, block) == headers


def test_encoder_remembers_few_encodings() -> None:
    encoder = Encoder()
    decoder = Decoder()
    statics = [field for field in STATIC_TABLE if field[1]]  # 15 whole fields
    lengths = [(b"content-length", str(i).encode()) for i in range(10)]
    for _ in range(2):
        block = encoder.encode(statics + lengths + [(b"x-big", b"b" * 200)])
        assert decoder.decode(block) == statics + lengths + [(b"x-big", b"b" * 200)]
        assert len(encoder._known) <= hpack._KNOWN_FIELDS
    assert (b"x-big", b"b" * 200) not in encoder._known
    # Not Huffman-coded: nothing remembered, the encoding differs.
    assert encoder.encode([(b"content-length", b"000")], huffman=False) == b"\x0f\x0d\x03000"
    assert encoder.encode([(b"content-length", b"000")]) == b"\x0f\x0d\x82\x00\x01"


def test_memory_per_connection_is_small() -> None:
    """A decoder and an encoder after a typical request and response: under 2 KiB."""
    request = [(b":method", b"GET"), (b":path", b"/"), (b"user-agent", b"h2load nghttp2/1.52")]
    block = peer.Encoder().encode(request)
    response = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"5")]

    def connection() -> tuple[Decoder, Encoder]:
        decoder, encoder = Decoder(), Encoder()
        decoder.decode(block)
        encoder.encode(response)
        return decoder, encoder

    connection()  # process-wide caches filled
    gc.collect()
    tracemalloc.start()
    try:
        kept = [connection() for _ in range(200)]
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 200
    assert size / 200 < 2048
