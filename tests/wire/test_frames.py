"""Tests for tidings.wire.frames: masking, the client-frame parser, server-frame encoders."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.wire import frames
from tidings.wire.frames import (
    MAX_CLOSE_REASON,
    CloseCode,
    Frame,
    FrameParser,
    Opcode,
    ProtocolError,
    apply_mask,
    encode_bytes,
    encode_close_payload,
    encode_frame,
    encode_message,
    encode_text,
    is_valid_close_code,
    parse_close_payload,
)


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x37\xfa\x21\x3d",
    length_bytes: int | None = None,
) -> bytes:
    """Encode a client-to-server frame the way a client would (RFC 6455 §5.2, §5.3).

    ``rsv`` is the 3 RSV bits (RSV1 = 4); ``mask=None`` sends it unmasked (invalid);
    ``length_bytes`` forces a 0/2/8-byte extended length even when not minimal.
    """
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 0x10000 else 8
    mask_bit = 0x80 if mask is not None else 0
    if length_bytes == 0:
        header = bytes((b0, mask_bit | n))
    elif length_bytes == 2:
        header = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if mask is None:
        return header + payload
    return header + mask + apply_mask(payload, mask)


def parse_all(data: bytes, **kwargs: int | bool | None) -> list[Frame]:
    parser = FrameParser(**kwargs)  # type: ignore[arg-type]
    return list(parser.feed(data))


# --- masking -------------------------------------------------------------------------


def test_rfc_masked_hello_example() -> None:
    # RFC 6455 §5.7: a single-frame masked text message containing "Hello".
    data = bytes.fromhex("818537fa213d7f9f4d5158")
    assert parse_all(data) == [Frame(Opcode.TEXT, True, False, b"Hello")]
    assert client_frame(Opcode.TEXT, b"Hello") == data


# Both builds of the unmasker: the C one (optional, built by setup.py) and pure Python.
MASKERS = [pytest.param(frames._apply_mask_py, id="python")]
if frames._apply_mask_c is not None:
    MASKERS.append(pytest.param(frames._apply_mask_c, id="c"))


def test_the_c_unmasker_was_built() -> None:
    # The development install compiles tidings/wire/_speedups.c (a C compiler is part of
    # the dev setup); if this fails, the C branch of every masking test is not running.
    assert frames.HAVE_SPEEDUPS, "tidings.wire._speedups is missing: pip install -e . again"
    assert apply_mask is frames._apply_mask_c


@pytest.mark.parametrize("mask_fn", MASKERS)
@given(payload=st.binary(max_size=2100), mask=st.binary(min_size=4, max_size=4))
def test_apply_mask_is_its_own_inverse_and_matches_bytewise_xor(
    mask_fn: Callable[[bytes, bytes], bytes], payload: bytes, mask: bytes
) -> None:
    masked = mask_fn(payload, mask)
    assert masked == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert mask_fn(masked, mask) == payload


@pytest.mark.parametrize("mask_fn", MASKERS)
def test_apply_mask_accepts_bytearray_and_memoryview(
    mask_fn: Callable[[bytes | bytearray, bytes | bytearray], bytes],
) -> None:
    assert mask_fn(bytearray(b"\x00" * 200), bytearray(b"abcd")) == b"abcd" * 50
    if mask_fn is frames._apply_mask_c:
        assert mask_fn(memoryview(b"\x00" * 7), b"abcd") == b"abcdabc"  # type: ignore[arg-type]


def test_c_apply_mask_rejects_bad_arguments() -> None:
    c = frames._apply_mask_c
    assert c is not None
    with pytest.raises(ValueError, match="4 bytes"):
        c(b"abc", b"abc")
    with pytest.raises(TypeError):
        c("text", b"abcd")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c(b"abc")  # type: ignore[call-arg]


# --- close codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        (0, False),
        (999, False),
        (1000, True),
        (1001, True),
        (1002, True),
        (1003, True),
        (1004, False),
        (1005, False),
        (1006, False),
        (1007, True),
        (1011, True),
        (1012, True),
        (1014, True),
        (1015, False),
        (1016, False),
        (2999, False),
        (3000, True),
        (4999, True),
        (5000, False),
        (65535, False),
    ],
)
def test_is_valid_close_code(code: int, valid: bool) -> None:
    assert is_valid_close_code(code) is valid


def test_parse_close_payload() -> None:
    assert parse_close_payload(b"") == (1005, "")
    assert parse_close_payload(b"\x03\xe8") == (1000, "")
    assert parse_close_payload(b"\x0f\xa0bye \xc3\xa9") == (4000, "bye é")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),  # 1-byte payload
        (b"\x03\xed", 1002),  # 1005 on the wire
        (b"\x03\xee", 1002),  # 1006
        (b"\x03\xec", 1002),  # 1004
        (b"\x03\xf7", 1002),  # 1015
        (b"\x00\x00", 1002),
        (b"\x13\x88", 1002),  # 5000
        (b"\x03\xe8\xff", 1007),  # invalid UTF-8 reason
        (b"\x03\xe8\xed\xa0\x80", 1007),  # surrogate in reason
    ],
)
def test_parse_close_payload_errors(payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(payload)
    assert info.value.code == code
    assert str(info.value).endswith(f"(close code {code})")


def test_encode_close_payload() -> None:
    assert encode_close_payload(1000) == b"\x03\xe8"
    assert encode_close_payload(1001, "bye") == b"\x03\xe9bye"
    assert encode_close_payload(3000, "é" * 61 + "x") == b"\x0b\xb8" + ("é" * 61 + "x").encode()
    with pytest.raises(ValueError, match="123"):
        encode_close_payload(1000, "é" * 62)  # 124 bytes
    with pytest.raises(ValueError, match="1005"):
        encode_close_payload(1005)
    with pytest.raises(ValueError, match="999"):
        encode_close_payload(999)
    assert MAX_CLOSE_REASON == 123


def test_close_code_enum_values() -> None:
    assert int(CloseCode.MESSAGE_TOO_BIG) == 1009
    assert int(Opcode.PONG) == 0xA


# --- parser: valid input -------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 1000, 0xFFFF, 0x10000, 70000])
def test_parse_minimal_lengths(n: int) -> None:
    payload = os.urandom(n)
    assert parse_all(client_frame(Opcode.BINARY, payload)) == [
        Frame(Opcode.BINARY, True, False, payload)
    ]


@pytest.mark.parametrize(("n", "length_bytes"), [(0, 2), (5, 2), (5, 8), (300, 8)])
def test_parse_non_minimal_lengths_are_accepted(n: int, length_bytes: int) -> None:
    payload = b"x" * n
    data = client_frame(Opcode.TEXT, payload, length_bytes=length_bytes)
    assert parse_all(data) == [Frame(Opcode.TEXT, True, False, payload)]


def test_parse_several_frames_in_one_chunk_and_byte_at_a_time() -> None:
    data = (
        client_frame(Opcode.TEXT, b"Hel", fin=False)
        + client_frame(Opcode.PING, b"hi")
        + client_frame(Opcode.CONTINUATION, b"lo")
        + client_frame(Opcode.BINARY, b"b" * 300)
        + client_frame(Opcode.CLOSE, b"\x03\xe8")
    )
    expected = [
        Frame(Opcode.TEXT, False, False, b"Hel"),
        Frame(Opcode.PING, True, False, b"hi"),
        Frame(Opcode.CONTINUATION, True, False, b"lo"),
        Frame(Opcode.BINARY, True, False, b"b" * 300),
        Frame(Opcode.CLOSE, True, False, b"\x03\xe8"),
    ]
    assert parse_all(data) == expected
    parser = FrameParser()
    got: list[Frame] = []
    for i in range(len(data)):
        got.extend(parser.feed(data[i : i + 1]))
    assert got == expected
    assert parser.buffered == 0


def test_parser_buffers_partial_frames() -> None:
    data = client_frame(Opcode.TEXT, b"hello") + client_frame(Opcode.TEXT, b"x" * 200)
    parser = FrameParser()
    assert list(parser.feed(data[:9])) == []
    assert parser.buffered == 9
    assert list(parser.feed(data[9:13])) == [Frame(Opcode.TEXT, True, False, b"hello")]
    assert parser.buffered == 2
    assert list(parser.feed(data[13:14])) == []  # 3 bytes of a 16-bit length header
    assert list(parser.feed(data[14:])) == [Frame(Opcode.TEXT, True, False, b"x" * 200)]
    assert parser.buffered == 0
    # Partial 64-bit length header.
    big = client_frame(Opcode.BINARY, b"y" * 10, length_bytes=8)
    assert list(parser.feed(big[:5])) == []
    assert list(parser.feed(big[5:])) == [Frame(Opcode.BINARY, True, False, b"y" * 10)]


def test_parser_rsv1_allowed_on_first_data_frame_when_negotiated() -> None:
    frames_ = parse_all(
        client_frame(Opcode.TEXT, b"a", rsv=4, fin=False)
        + client_frame(Opcode.CONTINUATION, b"b")
        + client_frame(Opcode.BINARY, b"c", rsv=4),
        allow_rsv1=True,
    )
    assert [f.rsv1 for f in frames_] == [True, False, True]


# --- parser: errors ------------------------------------------------------------------


def assert_parse_error(data: bytes, code: int, match: str, **kwargs: int | bool | None) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        parse_all(data, **kwargs)
    assert info.value.code == code


def test_unmasked_client_frame_is_a_protocol_error() -> None:
    assert_parse_error(client_frame(Opcode.TEXT, b"hi", mask=None), 1002, "not masked")


@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
def test_reserved_bits_without_extension(rsv: int) -> None:
    assert_parse_error(client_frame(Opcode.TEXT, b"hi", rsv=rsv), 1002, "reserved bit")


@pytest.mark.parametrize("rsv", [1, 2, 3, 5])
def test_rsv2_rsv3_rejected_even_with_deflate(rsv: int) -> None:
    data = client_frame(Opcode.TEXT, b"hi", rsv=rsv)
    assert_parse_error(data, 1002, "RSV2/RSV3", allow_rsv1=True)


@pytest.mark.parametrize("opcode", [Opcode.CONTINUATION, Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_rsv1_on_continuation_or_control_rejected(opcode: int) -> None:
    data = client_frame(opcode, b"", rsv=4)
    assert_parse_error(data, 1002, "RSV1 set on a control or continuation", allow_rsv1=True)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes(opcode: int) -> None:
    assert_parse_error(client_frame(opcode, b""), 1002, "reserved opcode")
    # The first byte alone is enough to fail: no waiting for the rest of the frame.
    assert_parse_error(bytes((0x80 | opcode, 0x80)), 1002, "reserved opcode")


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_fragmented_control_frame(opcode: int) -> None:
    assert_parse_error(client_frame(opcode, b"", fin=False), 1002, "fragmented control")


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frame_over_125_bytes(opcode: int) -> None:
    assert parse_all(client_frame(opcode, b"\x03\xe8" + b"x" * 123))[0].payload[-1:] == b"x"
    # Fails as soon as the length is known, before the payload arrives.
    data = client_frame(opcode, b"x" * 126)[:4]
    assert_parse_error(data, 1002, "longer than 125")


def test_64_bit_length_with_msb_set() -> None:
    data = bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask"
    assert_parse_error(data, 1002, "MSB")


def test_frame_size_limit_fails_before_payload_arrives() -> None:
    header = client_frame(Opcode.BINARY, b"x" * 1001)[:8]
    assert_parse_error(header, 1009, "too big", max_frame_size=1000)
    header = client_frame(Opcode.BINARY, b"x" * 70000)[:14]
    assert_parse_error(header, 1009, "too big", max_frame_size=65536)
    assert len(parse_all(client_frame(Opcode.BINARY, b"x" * 1000), max_frame_size=1000)) == 1


def test_frames_before_an_error_are_yielded() -> None:
    data = client_frame(Opcode.TEXT, b"ok") + client_frame(Opcode.TEXT, b"x", mask=None)
    parser = FrameParser()
    got: list[Frame] = []
    frames_iter = parser.feed(data)
    got.append(next(frames_iter))
    with pytest.raises(ProtocolError):
        next(frames_iter)
    assert got == [Frame(Opcode.TEXT, True, False, b"ok")]


# --- encoders ------------------------------------------------------------------------


def test_rfc_unmasked_examples() -> None:
    # RFC 6455 §5.7.
    assert encode_text("Hello") == bytes.fromhex("810548656c6c6f")
    assert encode_frame(Opcode.TEXT, b"Hel", fin=False) == bytes.fromhex("010348656c")
    assert encode_frame(Opcode.CONTINUATION, b"lo") == bytes.fromhex("80026c6f")
    assert encode_frame(Opcode.PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    assert encode_bytes(b"\x00" * 256)[:4] == bytes.fromhex("827e0100")
    assert encode_bytes(b"\x00" * 65536)[:10] == bytes.fromhex("827f0000000000010000")


@pytest.mark.parametrize("n", [0, 125, 126, 0xFFFF, 0x10000])
def test_encode_lengths_round_trip_through_a_client_view(n: int) -> None:
    payload = b"z" * n
    for data, opcode in (
        (encode_bytes(payload), Opcode.BINARY),
        (encode_text("z" * n), Opcode.TEXT),
        (encode_message(payload), Opcode.BINARY),
        (encode_message("z" * n), Opcode.TEXT),
        (encode_frame(Opcode.BINARY, payload, rsv1=True), Opcode.BINARY),
    ):
        b0, b1 = data[0], data[1]
        assert b0 & 0x0F == opcode
        assert b0 & 0x80
        assert not b1 & 0x80  # server frames are never masked (§5.1)
        header = 2 if n < 126 else 4 if n < 0x10000 else 10
        assert len(data) == header + n
        assert data[header:] == payload
    assert encode_frame(Opcode.TEXT, b"", rsv1=True)[0] == 0xC1
    assert encode_frame(Opcode.TEXT, b"", fin=False)[0] == 0x01


_CLIENT_FRAME = st.tuples(
    st.sampled_from([Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY]),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=300),
    st.binary(min_size=4, max_size=4),
    st.sampled_from([None, 2, 8]),
) | st.tuples(
    st.sampled_from([Opcode.PING, Opcode.PONG, Opcode.CLOSE]),
    st.just(True),
    st.just(False),
    st.binary(max_size=125),
    st.binary(min_size=4, max_size=4),
    st.sampled_from([None, 2, 8]),
)


@given(st.lists(_CLIENT_FRAME, max_size=8), st.data())
def test_parser_round_trip_with_random_chunking(
    specs: list[tuple[int, bool, bool, bytes, bytes, int | None]], data: st.DataObject
) -> None:
    wire = b""
    expected: list[Frame] = []
    for opcode, fin, rsv1, payload, mask, length_bytes in specs:
        rsv1 = rsv1 and opcode in (Opcode.TEXT, Opcode.BINARY)
        wire += client_frame(
            opcode, payload, fin=fin, rsv=4 if rsv1 else 0, mask=mask, length_bytes=length_bytes
        )
        expected.append(Frame(opcode, fin, rsv1, payload))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = FrameParser(allow_rsv1=True)
    got: list[Frame] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        got.extend(parser.feed(wire[start:cut]))
        start = cut
    assert got == expected
    assert parser.buffered == 0


def test_module_all_names_exist() -> None:
    for name in frames.__all__:
        assert hasattr(frames, name), name
