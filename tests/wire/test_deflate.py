"""Tests for tidings.wire.deflate: negotiation and per-message (de)compression (RFC 7692)."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.wire import deflate
from tidings.wire.deflate import DeflateConfig, PerMessageDeflate, negotiate_deflate
from tidings.wire.frames import ProtocolError
from tidings.wire.handshake import ExtensionOffer, parse_extensions

TAIL = b"\x00\x00\xff\xff"


class Client:
    """The client half of permessage-deflate, written directly against zlib."""

    def __init__(self, *, window_bits: int = 15, no_context_takeover: bool = False) -> None:
        self.window_bits = window_bits
        self.no_context_takeover = no_context_takeover
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
        self.decompressor = zlib.decompressobj(-15)

    def compress(self, payload: bytes) -> bytes:
        data = self.compressor.compress(payload) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(TAIL)
        if self.no_context_takeover:
            self.compressor = zlib.compressobj(6, zlib.DEFLATED, -self.window_bits)
        return data[:-4]

    def decompress(self, payload: bytes, *, fresh: bool = False) -> bytes:
        if fresh:
            self.decompressor = zlib.decompressobj(-15)
        return self.decompressor.decompress(payload + TAIL)


def negotiate(header: bytes, config: DeflateConfig | None = None) -> bytes | None:
    result = negotiate_deflate(parse_extensions([header]), config)
    return None if result is None else result[0]


# --- negotiation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "response"),
    [
        (b"permessage-deflate", b"permessage-deflate"),
        (b"PerMessage-Deflate", b"permessage-deflate"),
        (b"x-webkit-deflate-frame", None),
        (b"permessage-deflate; client_max_window_bits", b"permessage-deflate"),
        (b"permessage-deflate; client_max_window_bits=10", b"permessage-deflate"),
        (
            b"permessage-deflate; server_max_window_bits=10",
            b"permessage-deflate; server_max_window_bits=10",
        ),
        (
            b'permessage-deflate; server_max_window_bits="12"',
            b"permessage-deflate; server_max_window_bits=12",
        ),
        (
            b"permessage-deflate; server_no_context_takeover",
            b"permessage-deflate; server_no_context_takeover",
        ),
        # A hint the server may ignore (RFC 7692 §7.1.1.2).
        (b"permessage-deflate; client_no_context_takeover", b"permessage-deflate"),
        # Declined: zlib cannot compress with an 8-bit window.
        (b"permessage-deflate; server_max_window_bits=8", None),
        # Declined: invalid values, duplicates, unknown parameters.
        (b"permessage-deflate; server_max_window_bits", None),
        (b"permessage-deflate; server_max_window_bits=16", None),
        (b"permessage-deflate; server_max_window_bits=7", None),
        (b"permessage-deflate; server_max_window_bits=010", None),
        (b"permessage-deflate; server_max_window_bits=100", None),
        (b"permessage-deflate; client_max_window_bits=16", None),
        (b"permessage-deflate; client_max_window_bits=abc", None),
        (b"permessage-deflate; server_no_context_takeover=1", None),
        (b"permessage-deflate; client_no_context_takeover=1", None),
        (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        (b"permessage-deflate; client_max_window_bits; client_max_window_bits=9", None),
        (b"permessage-deflate; foo", None),
        # The first acceptable offer wins.
        (
            b"permessage-deflate; foo, permessage-deflate; server_max_window_bits=9, "
            b"permessage-deflate",
            b"permessage-deflate; server_max_window_bits=9",
        ),
        (b"x-other, permessage-deflate", b"permessage-deflate"),
    ],
)
def test_negotiation_with_default_config(offer: bytes, response: bytes | None) -> None:
    assert negotiate(offer) == response


@pytest.mark.parametrize(
    ("offer", "config", "response"),
    [
        (b"permessage-deflate", DeflateConfig(enabled=False), None),
        (
            b"permessage-deflate",
            DeflateConfig(server_no_context_takeover=True, client_no_context_takeover=True),
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        # Our smaller server window is used silently unless the client offered the param.
        (b"permessage-deflate", DeflateConfig(server_max_window_bits=10), b"permessage-deflate"),
        (
            b"permessage-deflate; server_max_window_bits=12",
            DeflateConfig(server_max_window_bits=10),
            b"permessage-deflate; server_max_window_bits=10",
        ),
        # client_max_window_bits is only answered when offered (§7.1.2.2).
        (b"permessage-deflate", DeflateConfig(client_max_window_bits=10), b"permessage-deflate"),
        (
            b"permessage-deflate; client_max_window_bits",
            DeflateConfig(client_max_window_bits=10),
            b"permessage-deflate; client_max_window_bits=10",
        ),
        (
            b"permessage-deflate; client_max_window_bits=12",
            DeflateConfig(client_max_window_bits=10),
            b"permessage-deflate; client_max_window_bits=10",
        ),
        (
            b"permessage-deflate; client_max_window_bits=9",
            DeflateConfig(client_max_window_bits=10),
            b"permessage-deflate",
        ),
    ],
)
def test_negotiation_with_config(offer: bytes, config: DeflateConfig, response: bytes) -> None:
    assert negotiate(offer, config) == response


def test_negotiation_without_offers() -> None:
    assert negotiate_deflate([]) is None
    assert negotiate_deflate([ExtensionOffer("permessage-deflate")]) is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": 16},
        {"compression_level": -1},
        {"compression_level": 10},
        {"memory_level": 0},
        {"memory_level": 10},
        {"min_size": -1},
    ],
)
def test_config_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DeflateConfig(**kwargs)  # type: ignore[arg-type]


def test_negotiated_object_carries_settings() -> None:
    result = negotiate_deflate(
        parse_extensions([b"permessage-deflate; client_no_context_takeover"]),
        DeflateConfig(min_size=10, client_no_context_takeover=True),
    )
    assert result is not None
    assert result[1].min_size == 10
    assert result[1].client_no_context_takeover
    assert not result[1].server_no_context_takeover


# --- compression ---------------------------------------------------------------------

MESSAGES = [b'{"type": "chat", "text": "hello"}' * 3, b"", b"x" * 5000, bytes(range(256)) * 4]


def test_compress_with_context_takeover_references_earlier_messages() -> None:
    pmd = PerMessageDeflate()
    client = Client()
    first = pmd.compress(MESSAGES[0])
    second = pmd.compress(MESSAGES[0])
    assert len(second) < len(first)  # the repeat is a back-reference into message 1
    assert client.decompress(first) == MESSAGES[0]
    assert client.decompress(second) == MESSAGES[0]
    with pytest.raises(zlib.error):
        Client().decompress(second)  # needs the context


def test_compress_without_context_takeover_is_independent_per_message() -> None:
    pmd = PerMessageDeflate(server_no_context_takeover=True)
    for message in [*MESSAGES, *MESSAGES]:
        compressed = pmd.compress(message)
        assert not compressed.endswith(TAIL)
        assert Client().decompress(compressed, fresh=True) == message


@pytest.mark.parametrize("bits", [9, 10, 12, 15])
def test_compress_respects_server_window_bits(bits: int) -> None:
    # A client decompressor with exactly `bits` of window must read our output.
    pmd = PerMessageDeflate(server_max_window_bits=bits)
    reader = zlib.decompressobj(-bits)
    message = bytes(range(256)) * 200 + b"tail" * 1000
    for _ in range(3):
        assert reader.decompress(pmd.compress(message) + TAIL) == message


@pytest.mark.parametrize("bits", [8, 9, 11, 15])
@pytest.mark.parametrize("no_context", [False, True])
def test_decompress_client_messages(bits: int, no_context: bool) -> None:
    pmd = PerMessageDeflate(client_max_window_bits=bits, client_no_context_takeover=no_context)
    client = Client(window_bits=max(bits, 9), no_context_takeover=no_context)
    for message in [*MESSAGES, *MESSAGES]:
        assert pmd.decompress(client.compress(message), max_size=10_000) == message


def test_decompress_after_a_final_block_starts_a_new_stream() -> None:
    # RFC 7692 §7.2.3: a sender may end a message with BFINAL=1; the stream ends there.
    pmd = PerMessageDeflate()
    for message in (b"first message", b"second message"):
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        final = compressor.compress(message) + compressor.flush(zlib.Z_FINISH)
        assert pmd.decompress(final, max_size=100) == message
    assert pmd.decompress(Client().compress(b"third"), max_size=100) == b"third"


def test_decompress_corrupt_data_is_1007() -> None:
    with pytest.raises(ProtocolError) as info:
        PerMessageDeflate().decompress(b"\xff\xff\xff\xff", max_size=100)
    assert info.value.code == 1007


def test_decompress_exactly_max_size_passes_one_more_fails() -> None:
    data = Client().compress(b"a" * 1000)
    assert PerMessageDeflate().decompress(data, max_size=1000) == b"a" * 1000
    with pytest.raises(ProtocolError) as info:
        PerMessageDeflate().decompress(data, max_size=999)
    assert info.value.code == 1009


def test_deflate_bomb_fails_without_allocating_the_output() -> None:
    # 64 MiB of zeros compress to ~64 KiB; with a 1 MiB cap, memory stays near 1 MiB.
    bomb = Client().compress(b"\x00" * (64 << 20))
    assert len(bomb) < 100_000
    pmd = PerMessageDeflate()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            pmd.decompress(bomb, max_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert peak < 4 << 20


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(max_size=2000) | st.text(max_size=500).map(str.encode), max_size=6),
    st.sampled_from([9, 10, 12, 15]),
    st.sampled_from([8, 9, 12, 15]),
    st.booleans(),
    st.booleans(),
)
def test_round_trip_both_directions(
    messages: list[bytes],
    server_bits: int,
    client_bits: int,
    server_no_context: bool,
    client_no_context: bool,
) -> None:
    pmd = PerMessageDeflate(
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
        server_no_context_takeover=server_no_context,
        client_no_context_takeover=client_no_context,
    )
    client = Client(window_bits=max(client_bits, 9), no_context_takeover=client_no_context)
    reader = zlib.decompressobj(-server_bits)
    for message in messages:
        sent = pmd.compress(message)
        if server_no_context:
            reader = zlib.decompressobj(-server_bits)
        assert reader.decompress(sent + TAIL) == message
        assert pmd.decompress(client.compress(message), max_size=len(message)) == message


def test_module_all_names_exist() -> None:
    for name in deflate.__all__:
        assert hasattr(deflate, name), name


def test_zlib_state_is_made_on_first_use_only() -> None:
    # An idle connection that negotiated deflate must not pay for zlib's tables.
    pmd = PerMessageDeflate()
    assert not pmd.allocated
    compressed = pmd.compress(b"hello " * 100)
    assert pmd.allocated
    peer = PerMessageDeflate()
    assert peer.decompress(compressed, max_size=10_000) == b"hello " * 100
    assert peer.allocated
