"""tidings.wire._hpack_huffman: HPACK's Huffman code (RFC 7541 appendix B), through hpack."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from tidings.wire import _hpack_huffman
from tidings.wire.hpack import HpackError, huffman_decode, huffman_encode


def test_huffman_codes_are_appendix_b() -> None:
    # A few codes as printed in appendix B, then every one against the hpack library.
    assert (_hpack_huffman._CODES[ord("0")], _hpack_huffman._HUFFMAN_LENGTHS[ord("0")]) == (0x0, 5)
    assert (_hpack_huffman._CODES[ord("a")], _hpack_huffman._HUFFMAN_LENGTHS[ord("a")]) == (0x3, 5)
    assert (_hpack_huffman._CODES[0], _hpack_huffman._HUFFMAN_LENGTHS[0]) == (0x1FF8, 13)
    assert (_hpack_huffman._CODES[256], _hpack_huffman._HUFFMAN_LENGTHS[256]) == (0x3FFFFFFF, 30)
    assert list(REQUEST_CODES) == _hpack_huffman._CODES
    assert list(_hpack_huffman._HUFFMAN_LENGTHS) == list(REQUEST_CODES_LENGTH)


def test_huffman_round_trips_every_octet() -> None:
    data = bytes(range(256)) * 2
    assert huffman_decode(huffman_encode(data)) == data
    assert huffman_encode(b"") == b""
    assert huffman_decode(b"") == b""
    # C.4.1's authority: padding of 1 bit.
    assert huffman_encode(b"www.example.com") == bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")


def test_huffman_padding_up_to_7_one_bits_is_accepted() -> None:
    assert huffman_decode(bytes.fromhex("1f")) == b"a"  # 00011 + 111
    assert huffman_decode(bytes.fromhex("07")) == b"0"  # 00000 + 111
    assert huffman_decode(bytes.fromhex("07fe3f")) == b"0\x00"  # 5 + 13 bits, then 6 ones


@pytest.mark.parametrize(
    "coded",
    [
        "ffffffff",  # 30 one bits: EOS inside the string
        "fffffffc",  # EOS then two zero bits
        "1ffffffffc",  # 'a', EOS (30 ones), then padding
    ],
)
def test_huffman_eos_is_refused(coded: str) -> None:
    with pytest.raises(HpackError, match="EOS"):
        huffman_decode(bytes.fromhex(coded))


@pytest.mark.parametrize(
    "coded",
    [
        "18",  # 00011 000: 'a' then padding of zeros
        "1fff",  # 'a' then 11 one bits: padding longer than 7 bits
        "00",  # '0' then 000: padding not all ones
    ],
)
def test_huffman_bad_padding_is_refused(coded: str) -> None:
    with pytest.raises(HpackError, match="padding"):
        huffman_decode(bytes.fromhex(coded))


def test_huffman_rows_are_filled_on_first_use() -> None:
    _hpack_huffman._OUTPUT[:] = [None] * len(_hpack_huffman._OUTPUT)  # as after import
    with pytest.raises(HpackError, match="EOS"):
        huffman_decode(bytes.fromhex("ffffffff00"))  # EOS, then an octet more
    assert (
        sum(entry is not None for entry in _hpack_huffman._OUTPUT) == 4 * 256
    )  # the rows on the way
    with pytest.raises(HpackError, match="EOS"):
        huffman_decode(bytes.fromhex("ffffffff00"))  # the same, rows filled
    assert huffman_decode(huffman_encode(b"filled")) == b"filled"


def test_every_huffman_row_filled_stays_bounded() -> None:
    """An attacker can make a process fill all 256 rows: about 1 MiB, once."""
    _hpack_huffman._OUTPUT[:] = [None] * len(_hpack_huffman._OUTPUT)
    _hpack_huffman._SYMBOLS.clear()
    gc.collect()
    tracemalloc.start()
    try:
        for node in range(256):
            _hpack_huffman._fill_row(node << 8)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert None not in _hpack_huffman._OUTPUT[: _hpack_huffman._START]
    assert size < 2 * 1024 * 1024
    assert huffman_decode(huffman_encode(bytes(range(256)))) == bytes(range(256))
