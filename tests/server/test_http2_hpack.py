"""The server's HPACK encoder (``_h2_hpack``): what it writes decodes to what it was given.

Checked against ``hpack``'s own decoder, the one ``h2`` clients use, with no event loop.
"""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st

from tidings.server import _h2_hpack
from tidings.server._h2_hpack import StaticEncoder, encode_field

_RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"date", b"Mon, 07 Dec 2026 22:00:00 GMT"),
    (b"x-request-id", b"0123456789abcdef"),
    (b"set-cookie", b"a=1"),
    (b"set-cookie", b"b=2"),
]


def test_blocks_decode_and_leave_the_dynamic_table_empty() -> None:
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    first = encoder.encode(_RESPONSE)
    assert first[:1] == b"\x20"  # a dynamic table size update to 0 (RFC 7541 6.3)
    assert decoder.decode(first, raw=True) == _RESPONSE
    second = encoder.encode(_RESPONSE)
    assert second == first[1:]  # the same bytes again: nothing depends on history
    assert decoder.decode(second, raw=True) == _RESPONSE
    assert decoder.header_table_size == 0
    assert len(decoder.header_table.dynamic_entries) == 0


def test_a_settings_change_announces_the_empty_table_again() -> None:
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    decoder.decode(encoder.encode(_RESPONSE), raw=True)
    encoder.set_max_table_size(256)  # the core does this on SETTINGS_HEADER_TABLE_SIZE
    block = encoder.encode([(b":status", b"404")])
    assert block == b"\x20\x8d"  # size update to 0, then static index 13
    assert decoder.decode(block, raw=True) == [(b":status", b"404")]


def test_static_fields_are_one_octet_and_names_are_indexed() -> None:
    assert encode_field(b":status", b"200") == b"\x88"  # index 8
    # content-type is static index 31: a 4-bit prefix that overflows to 0x0f 0x10.
    assert encode_field(b"content-type", b"x")[:2] == b"\x0f\x10"
    assert encode_field(b"x-new", b"v")[:1] == b"\x00"  # a literal name


def test_the_cache_is_bounded_and_skips_long_fields() -> None:
    encoder = StaticEncoder()
    encoder.encode([(b"x-long", b"v" * 1000)])
    assert (b"x-long", b"v" * 1000) not in _h2_hpack._cache
    encoder.encode([(b"x-n", b"%d" % i) for i in range(3000)])
    assert 0 < len(_h2_hpack._cache) <= 1024


_names = st.binary(min_size=1, max_size=40).map(bytes.lower)


@given(st.lists(st.tuples(_names, st.binary(max_size=300)), max_size=20))
def test_any_fields_round_trip(fields: list[tuple[bytes, bytes]]) -> None:
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    for _ in range(2):
        assert decoder.decode(encoder.encode(fields), raw=True) == fields
