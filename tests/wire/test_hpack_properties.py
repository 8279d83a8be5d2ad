"""tidings.wire.hpack against the hpack library: round trips both ways, malformed input."""

from __future__ import annotations

import hpack as peer
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.wire.hpack import STATIC_TABLE, Decoder, Encoder, HpackError

Headers = list[tuple[bytes, bytes]]

_NAMES = st.one_of(
    st.sampled_from([name for name, _ in STATIC_TABLE]),
    st.binary(min_size=1, max_size=20),
)
_VALUES = st.one_of(
    st.sampled_from([value for _, value in STATIC_TABLE]),
    st.binary(max_size=40),
    st.binary(min_size=100, max_size=3000),
)
_FIELDS = st.one_of(st.sampled_from(list(STATIC_TABLE)), st.tuples(_NAMES, _VALUES))
_LISTS = st.lists(_FIELDS, max_size=12)
# A step: a header list, or a new SETTINGS_HEADER_TABLE_SIZE from the decoding side.
_STEPS = st.lists(
    st.one_of(_LISTS, st.sampled_from([0, 31, 64, 256, 1000, 4096, 8192, 65536])),
    min_size=1,
    max_size=12,
)


def _peer_decode(decoder: peer.Decoder, block: bytes) -> Headers:
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]


@settings(max_examples=300, deadline=None)
@given(_STEPS, st.booleans(), st.lists(st.booleans(), max_size=12))
def test_their_encoder_to_our_decoder(
    steps: list[Headers | int], huffman: bool, sensitive: list[bool]
) -> None:
    encoder = peer.Encoder()
    decoder = Decoder()
    decoder.max_allowed_table_size = 65536
    for step in steps:
        if isinstance(step, int):
            # hpack 4.2 forgets a pending size update when told the same size twice.
            if step != encoder.header_table_size:
                encoder.header_table_size = step
            continue
        # Some fields sensitive: never indexed.
        fields = [
            peer.NeverIndexedHeaderTuple(n, v) if i < len(sensitive) and sensitive[i] else (n, v)
            for i, (n, v) in enumerate(step)
        ]
        block = encoder.encode(fields, huffman=huffman)
        table = decoder.dynamic_table
        assert decoder.decode(block) == step
        if decoder.dynamic_table == table:  # decoding it again is valid: the block cache
            assert decoder.decode(block) == step


@settings(max_examples=300, deadline=None)
@given(_STEPS, st.booleans())
def test_our_encoder_to_their_decoder_and_ours(steps: list[Headers | int], huffman: bool) -> None:
    encoder = Encoder()
    theirs = peer.Decoder()
    theirs.max_allowed_table_size = 65536
    ours = Decoder()
    ours.max_allowed_table_size = 65536
    for step in steps:
        if isinstance(step, int):
            encoder.set_max_table_size(step)
            continue
        block = encoder.encode(step, huffman=huffman)
        assert _peer_decode(theirs, block) == step
        assert ours.decode(block) == step
        assert ours.table_size == theirs.header_table._current_size


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=4))
def test_malformed_blocks_raise_hpack_error_only(blocks: list[bytes]) -> None:
    """Any bytes: a list or HpackError; when ours decodes, the hpack library agrees."""
    ours = Decoder(max_header_list_size=1 << 20)
    theirs = peer.Decoder(max_header_list_size=1 << 20)
    for block in blocks:
        try:
            headers = ours.decode(block)
        except HpackError:
            return  # the connection would be closed: no further block
        assert _peer_decode(theirs, block) == headers


@settings(max_examples=200, deadline=None)
@given(st.lists(_LISTS, min_size=1, max_size=6), st.data())
def test_truncated_blocks_are_refused_or_a_prefix(
    lists: list[Headers], data: st.DataObject
) -> None:
    """A block cut short decodes to an error or to a prefix of its fields."""
    encoder = peer.Encoder()
    for headers in lists:
        block = encoder.encode(headers)
        cut = data.draw(st.integers(min_value=0, max_value=len(block)))
        try:
            decoded = Decoder().decode(block[:cut])
        except HpackError:
            continue
        assert decoded == headers[: len(decoded)]


@settings(max_examples=300, deadline=None)
@given(
    # Few fields of a few names: index blocks repeat while the table changes under them.
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from([b"x-a", b"x-b", b":method"]), st.sampled_from([b"1", b"GET"])
            ),
            min_size=1,
            max_size=3,
        ),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=20),
    st.booleans(),
)
def test_repeated_blocks_through_the_block_cache(
    pool: list[Headers], picks: list[int], ours_encode: bool
) -> None:
    """Lists sent again and again, as clients do: the cache never serves a stale list."""
    encoder: Encoder | peer.Encoder = Encoder() if ours_encode else peer.Encoder()
    ours = Decoder()
    theirs = peer.Decoder()
    for pick in picks:
        headers = pool[pick % len(pool)]
        block = encoder.encode(headers)
        assert ours.decode(block) == headers
        assert _peer_decode(theirs, block) == headers
