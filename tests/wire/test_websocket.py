"""Tests for tidings.wire.websocket: the server-side connection state machine (RFC 6455)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tidings.wire
from tests.wire.test_frames import client_frame
from tidings.wire import websocket
from tidings.wire.deflate import PerMessageDeflate
from tidings.wire.frames import ConnectionClosedError, Opcode, encode_frame, encode_message
from tidings.wire.websocket import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BytesMessage,
    CloseReceived,
    ConnectionFailed,
    ConnectionLost,
    ConnectionState,
    Event,
    PingReceived,
    PongReceived,
    TextMessage,
    WebSocketConnection,
)

TAIL = b"\x00\x00\xff\xff"
TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION
CLOSE, PING, PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG


def server_frames(data: bytes) -> list[tuple[int, bool, bool, bytes]]:
    """Decode server-to-client frames as a client would: (opcode, fin, rsv1, payload)."""
    result = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        result.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), data[pos : pos + n]))
        pos += n
    return result


def state_of(conn: WebSocketConnection) -> ConnectionState:
    """``conn.state``, through a call so that mypy does not narrow it across actions."""
    return conn.state


def feed(conn: WebSocketConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return conn.events()


def close_sent(conn: WebSocketConnection) -> bytes:
    """The payload of the single close frame now queued."""
    [(opcode, fin, _, payload)] = server_frames(conn.data_to_send())
    assert (opcode, fin) == (CLOSE, True)
    return payload


def assert_failed(conn: WebSocketConnection, data: bytes, code: int) -> None:
    events = feed(conn, data)
    assert isinstance(events[-1], ConnectionFailed), events
    assert events[-1].code == code
    assert conn.state is ConnectionState.CLOSED
    assert conn.close_code == code
    assert close_sent(conn)[:2] == code.to_bytes(2, "big")
    # Nothing more is processed.
    assert feed(conn, client_frame(TEXT, b"late")) == []
    assert feed(conn, b"") == []
    assert conn.data_to_send() == b""


# --- messages ------------------------------------------------------------------------


@pytest.mark.parametrize("c_unmask", [True, False], ids=["c-unmask", "python-unmask"])
def test_fast_path_text_and_binary(monkeypatch: pytest.MonkeyPatch, c_unmask: bool) -> None:
    # Both branches of the 7-bit fast path: the C unmasker and the big-int fallback.
    monkeypatch.setattr(websocket, "_FAST_UNMASK", c_unmask)
    conn = WebSocketConnection()
    assert feed(conn, client_frame(TEXT, "héllo".encode())) == [TextMessage("héllo")]
    assert feed(conn, client_frame(BINARY, b"\x00\x01")) == [BytesMessage(b"\x00\x01")]
    assert feed(conn, client_frame(TEXT, b"")) == [TextMessage("")]
    assert feed(conn, client_frame(TEXT, b"x" * 125)) == [TextMessage("x" * 125)]
    assert conn.state is ConnectionState.OPEN
    assert conn.close_code is None
    assert conn.data_to_send() == b""


def test_general_path_messages() -> None:
    conn = WebSocketConnection()
    data = (
        client_frame(TEXT, b"a" * 126)
        + client_frame(BINARY, b"b" * 70000)
        + client_frame(TEXT, b"one")
        + client_frame(TEXT, b"two", length_bytes=2)
    )
    assert feed(conn, data) == [
        TextMessage("a" * 126),
        BytesMessage(b"b" * 70000),
        TextMessage("one"),
        TextMessage("two"),
    ]


def test_fragmented_messages_with_interleaved_control_frames() -> None:
    conn = WebSocketConnection()
    data = (
        client_frame(TEXT, "κό".encode(), fin=False)
        + client_frame(PING, b"p1")
        + client_frame(CONT, "σμ".encode(), fin=False)
        + client_frame(PONG, b"p2")
        + client_frame(CONT, "ε".encode())
        + client_frame(BINARY, b"ab", fin=False)
        + client_frame(CONT, b"", fin=False)
        + client_frame(CONT, b"cd")
    )
    assert feed(conn, data) == [
        PingReceived(b"p1"),
        PongReceived(b"p2"),
        TextMessage("κόσμε"),
        BytesMessage(b"abcd"),
    ]
    assert server_frames(conn.data_to_send()) == [(PONG, True, False, b"p1")]


def test_byte_at_a_time_equals_all_at_once() -> None:
    data = (
        client_frame(TEXT, "héllo".encode())
        + client_frame(TEXT, b"frag", fin=False)
        + client_frame(PING, b"")
        + client_frame(CONT, b"ment")
        + client_frame(BINARY, bytes(300))
        + client_frame(CLOSE, b"\x03\xe8bye")
    )
    whole = WebSocketConnection()
    expected = feed(whole, data)
    assert expected[-1] == CloseReceived(1000, "bye")
    conn = WebSocketConnection()
    events: list[Event] = []
    for i in range(len(data)):
        events += feed(conn, data[i : i + 1])
    assert events == expected
    assert conn.data_to_send() == whole.data_to_send()


def test_fragmented_text_split_at_every_byte_boundary() -> None:
    text = "aé€😀z"
    raw = text.encode()
    for cut in range(len(raw) + 1):
        conn = WebSocketConnection()
        data = client_frame(TEXT, raw[:cut], fin=False) + client_frame(CONT, raw[cut:])
        assert feed(conn, data) == [TextMessage(text)]
        for cut2 in range(cut, len(raw) + 1):
            data = (
                client_frame(TEXT, raw[:cut], fin=False)
                + client_frame(CONT, raw[cut:cut2], fin=False)
                + client_frame(CONT, raw[cut2:])
            )
            assert feed(conn, data) == [TextMessage(text)]


# --- invalid UTF-8 (RFC 6455 §8.1) -----------------------------------------------------

INVALID_UTF8 = [
    b"\xff",
    b"\xc0\xaf",  # overlong
    b"\xed\xa0\x80",  # surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xe2\x82",  # truncated at the end of the message
]


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_single_frame(bad: bytes) -> None:
    assert_failed(WebSocketConnection(), client_frame(TEXT, b"ok" + bad), 1007)
    assert_failed(WebSocketConnection(), client_frame(TEXT, b"ok" * 100 + bad), 1007)


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_at_every_fragment_boundary(bad: bytes) -> None:
    raw = "κόσμε".encode() + bad + (b"edited" if bad != b"\xe2\x82" else b"")
    for cut in range(len(raw) + 1):
        assert_failed(
            WebSocketConnection(),
            client_frame(TEXT, raw[:cut], fin=False) + client_frame(CONT, raw[cut:]),
            1007,
        )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("κόσμε".encode() + b"\xf4\x90\x80\x80", b"edited"),  # invalid code point inside
        ("κόσμε".encode() + b"\xf4\x90", b"\x80\x80"),  # impossible prefix
        ("κόσμε".encode() + b"\xed\xa0", b"\x80"),  # surrogate prefix
        (b"\xc0", b""),
    ],
)
def test_invalid_utf8_fails_fast_on_the_first_bad_fragment(first: bytes, second: bytes) -> None:
    conn = WebSocketConnection()
    events = feed(conn, client_frame(TEXT, first, fin=False))
    assert events == [ConnectionFailed(1007, "invalid UTF-8 in text")]
    assert feed(conn, client_frame(CONT, second)) == []


def test_valid_prefix_waits_for_next_fragment() -> None:
    conn = WebSocketConnection()
    assert feed(conn, client_frame(TEXT, b"\xf0\x9f", fin=False)) == []
    assert feed(conn, client_frame(CONT, b"\x98\x80")) == [TextMessage("😀")]
    assert feed(conn, client_frame(TEXT, b"\xed\x9f", fin=False)) == []
    assert feed(conn, client_frame(CONT, b"\xbf")) == [TextMessage("\ud7ff")]


# --- protocol errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(TEXT, b"hi", mask=None), 1002),
        (client_frame(TEXT, b"hi", rsv=4), 1002),
        (client_frame(TEXT, b"hi", rsv=2), 1002),
        (client_frame(TEXT, b"hi", rsv=1), 1002),
        (client_frame(3, b""), 1002),
        (client_frame(0xB, b""), 1002),
        (client_frame(PING, b"", fin=False), 1002),
        (client_frame(PING, b"x" * 126), 1002),
        (client_frame(CONT, b"x"), 1002),
        (client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"), 1002),
        (client_frame(TEXT, b"a", fin=False) + client_frame(BINARY, b"b"), 1002),
        (bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask", 1002),
        (client_frame(CLOSE, b"\x03"), 1002),
        (client_frame(CLOSE, b"\x03\xed"), 1002),
        (client_frame(CLOSE, b"\x03\xee"), 1002),
        (client_frame(CLOSE, b"\x03\xf7"), 1002),
        (client_frame(CLOSE, b"\x03\xe4"), 1002),  # 996
        (client_frame(CLOSE, b"\x03\xe8\xff"), 1007),
        (client_frame(TEXT, b"\x80"), 1007),
    ],
)
def test_protocol_errors(data: bytes, code: int) -> None:
    assert_failed(WebSocketConnection(), data, code)


def test_protocol_error_after_good_frames_in_the_same_chunk() -> None:
    conn = WebSocketConnection()
    events = feed(conn, client_frame(TEXT, b"ok") + client_frame(TEXT, b"x", mask=None))
    assert events == [TextMessage("ok"), ConnectionFailed(1002, "client frame is not masked")]
    assert close_sent(conn) == b"\x03\xeaclient frame is not masked"


def test_rsv1_without_deflate_on_fast_path_shaped_frame() -> None:
    # 0xC1 is not a fast-path first byte; the general path rejects it.
    assert_failed(WebSocketConnection(), client_frame(TEXT, b"a", rsv=4), 1002)


# --- size limits ---------------------------------------------------------------------


def test_default_max_message_size() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 1 << 20
    conn = WebSocketConnection()
    assert feed(conn, client_frame(BINARY, bytes(1 << 20))) == [BytesMessage(bytes(1 << 20))]
    assert_failed(conn, client_frame(BINARY, bytes((1 << 20) + 1))[:14], 1009)


def test_max_message_size_single_frame_fails_on_header() -> None:
    conn = WebSocketConnection(max_message_size=100)
    assert feed(conn, client_frame(TEXT, b"x" * 100)) == [TextMessage("x" * 100)]
    assert_failed(conn, client_frame(TEXT, b"x" * 101)[:2], 1009)


def test_small_max_message_size_disables_fast_path_for_larger_frames() -> None:
    conn = WebSocketConnection(max_message_size=10)
    assert feed(conn, client_frame(TEXT, b"x" * 10)) == [TextMessage("x" * 10)]
    assert_failed(conn, client_frame(TEXT, b"x" * 11), 1009)


def test_max_message_size_fragmented() -> None:
    conn = WebSocketConnection(max_message_size=100)
    data = client_frame(BINARY, b"x" * 60, fin=False) + client_frame(CONT, b"x" * 40)
    assert feed(conn, data) == [BytesMessage(b"x" * 100)]
    data = client_frame(TEXT, b"x" * 60, fin=False) + client_frame(CONT, b"x" * 41)
    assert_failed(conn, data, 1009)


def test_max_fragments() -> None:
    conn = WebSocketConnection(max_fragments=3)
    data = client_frame(TEXT, b"a", fin=False) + client_frame(CONT, b"b", fin=False)
    assert feed(conn, data + client_frame(CONT, b"c")) == [TextMessage("abc")]
    # The count starts again with each message.
    assert feed(conn, data + client_frame(CONT, b"c")) == [TextMessage("abc")]
    data += client_frame(CONT, b"c", fin=False)
    assert_failed(conn, data + client_frame(CONT, b""), 1009)
    assert conn.close_reason == "message has too many fragments"


def test_endless_empty_continuation_frames_end_at_the_fragment_cap() -> None:
    """H2: a message of empty fragments that never ends is closed with 1009."""
    conn = WebSocketConnection()
    events = feed(conn, client_frame(BINARY, b"", fin=False))
    empty = client_frame(CONT, b"", fin=False)
    chunk = empty * 1000
    fed = 0
    while not events:
        events = feed(conn, chunk)
        fed += 1000
        assert fed <= websocket.DEFAULT_MAX_FRAGMENTS + 1000
    assert isinstance(events[-1], ConnectionFailed)
    assert events[-1].code == 1009


def test_a_partial_message_holds_its_payload_and_no_more() -> None:
    """1-byte fragments: the partial message is one buffer of exactly its bytes."""
    conn = WebSocketConnection(max_fragments=10_000)
    feed(conn, client_frame(BINARY, b"x", fin=False))
    assert feed(conn, b"".join(client_frame(CONT, b"x", fin=False) for _ in range(4999))) == []
    assert conn._frag_buffer == bytearray(b"x" * 5000)
    assert feed(conn, client_frame(CONT, b"")) == [BytesMessage(b"x" * 5000)]
    assert conn._frag_buffer is None


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
    limit=st.integers(min_value=1, max_value=14),
)
def test_fragment_limit_property(text: str, cuts: list[int], limit: int) -> None:
    """Any split of a message is reassembled exactly within the cap and refused past it."""
    payload = text.encode()
    points = sorted({min(c, len(payload)) for c in cuts})
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
    frames = [
        client_frame(TEXT if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]
    conn = WebSocketConnection(max_fragments=limit)
    events = feed(conn, b"".join(frames))
    if len(pieces) <= limit or len(pieces) == 1:
        assert events == [TextMessage(text)]
    else:
        assert isinstance(events[-1], ConnectionFailed)
        assert events[-1].code == 1009


def test_max_frame_size() -> None:
    conn = WebSocketConnection(max_frame_size=50, max_message_size=100)
    data = client_frame(BINARY, b"x" * 50, fin=False) + client_frame(CONT, b"x" * 50)
    assert feed(conn, data) == [BytesMessage(b"x" * 100)]
    assert_failed(conn, client_frame(BINARY, b"x" * 51), 1009)


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="size limits"):
        WebSocketConnection(max_message_size=-1)
    with pytest.raises(ValueError, match="max_fragments"):
        WebSocketConnection(max_fragments=0)
    with pytest.raises(ValueError, match="size limits"):
        WebSocketConnection(max_frame_size=-1)


# --- control frames ------------------------------------------------------------------


def test_ping_is_answered_and_reported() -> None:
    conn = WebSocketConnection()
    assert feed(conn, client_frame(PING, b"are you there")) == [PingReceived(b"are you there")]
    assert server_frames(conn.data_to_send()) == [(PONG, True, False, b"are you there")]
    assert feed(conn, client_frame(PONG, b"")) == [PongReceived(b"")]
    assert conn.data_to_send() == b""


def test_client_close_is_echoed() -> None:
    conn = WebSocketConnection()
    assert feed(conn, client_frame(CLOSE, b"\x03\xe9going")) == [CloseReceived(1001, "going")]
    assert close_sent(conn) == b"\x03\xe9"  # the code is echoed (§5.5.1)
    assert conn.state is ConnectionState.CLOSED
    assert (conn.close_code, conn.close_reason) == (1001, "going")
    # Further input and close() are ignored; sending raises.
    assert feed(conn, client_frame(TEXT, b"x") + client_frame(PING, b"")) == []
    assert feed(conn, b"") == []
    conn.close()
    assert conn.data_to_send() == b""
    with pytest.raises(ConnectionClosedError, match="CLOSED"):
        conn.send_text("x")


def test_client_close_without_code() -> None:
    conn = WebSocketConnection()
    assert feed(conn, client_frame(CLOSE, b"")) == [CloseReceived(1005, "")]
    assert close_sent(conn) == b""


def test_client_close_with_private_code_and_frames_after_it_in_the_chunk() -> None:
    conn = WebSocketConnection()
    data = client_frame(CLOSE, b"\x0f\xa0") + client_frame(TEXT, b"ignored")
    assert feed(conn, data) == [CloseReceived(4000, "")]
    assert close_sent(conn) == b"\x0f\xa0"


def test_client_close_in_the_middle_of_a_fragmented_message() -> None:
    conn = WebSocketConnection()
    data = client_frame(TEXT, b"part", fin=False) + client_frame(CLOSE, b"\x03\xe8")
    assert feed(conn, data) == [CloseReceived(1000, "")]


def test_server_initiated_close() -> None:
    conn = WebSocketConnection()
    conn.close(4001, "bye now")
    assert state_of(conn) is ConnectionState.CLOSING
    assert close_sent(conn) == b"\x0f\xa1bye now"
    conn.close()  # idempotent
    assert conn.data_to_send() == b""
    with pytest.raises(ConnectionClosedError, match="CLOSING"):
        conn.send_text("x")
    for send in (conn.send_bytes, conn.send_ping, conn.send_encoded):
        with pytest.raises(ConnectionClosedError, match="CLOSING"):
            send(b"x")
    # Data frames are discarded; pings are reported but not answered after our close.
    data = (
        client_frame(TEXT, b"late")
        + client_frame(BINARY, b"x" * 300, fin=False)
        + client_frame(PING, b"p")
        + client_frame(CONT, b"more")
        + client_frame(CLOSE, b"\x03\xe8")
    )
    assert feed(conn, data) == [PingReceived(b"p"), CloseReceived(1000, "")]
    assert conn.data_to_send() == b""  # no echo: our close was already sent
    assert conn.state is ConnectionState.CLOSED
    assert conn.close_code == 1000


def test_protocol_error_while_closing_sends_no_second_close() -> None:
    conn = WebSocketConnection()
    conn.close()
    conn.data_to_send()
    events = feed(conn, client_frame(TEXT, b"x", mask=None))
    assert events == [ConnectionFailed(1002, "client frame is not masked")]
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.CLOSED


@pytest.mark.parametrize(
    ("code", "reason", "match"),
    [
        (1005, "", "may not be sent"),
        (1006, "", "may not be sent"),
        (999, "", "may not be sent"),
        (5000, "", "may not be sent"),
        (1000, "é" * 62, "at most 123"),
    ],
)
def test_close_rejects_bad_code_or_long_reason(code: int, reason: str, match: str) -> None:
    conn = WebSocketConnection()
    with pytest.raises(ValueError, match=match):
        conn.close(code, reason)
    assert conn.state is ConnectionState.OPEN


# --- EOF -----------------------------------------------------------------------------


def test_eof_is_connection_lost() -> None:
    conn = WebSocketConnection()
    feed(conn, client_frame(TEXT, b"partial", fin=False) + client_frame(TEXT, b"x")[:3])
    assert feed(conn, b"") == [ConnectionLost()]
    assert ConnectionLost().code == 1006
    assert conn.state is ConnectionState.CLOSED
    assert conn.close_code == 1006
    assert conn.data_to_send() == b""
    conn.close()  # no-op after EOF
    assert conn.data_to_send() == b""
    with pytest.raises(ConnectionClosedError):
        conn.send_bytes(b"x")


def test_eof_while_closing() -> None:
    conn = WebSocketConnection()
    conn.close()
    assert feed(conn, b"") == [ConnectionLost()]
    assert conn.close_code == 1006


# --- sending -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536])
def test_send_text_and_bytes(n: int) -> None:
    conn = WebSocketConnection()
    conn.send_text("é" * (n // 2) + "x" * (n % 2))
    conn.send_bytes(b"b" * n)
    assert server_frames(conn.data_to_send()) == [
        (TEXT, True, False, ("é" * (n // 2) + "x" * (n % 2)).encode()),
        (BINARY, True, False, b"b" * n),
    ]
    assert conn.data_to_send() == b""


def test_send_text_rejects_lone_surrogates() -> None:
    with pytest.raises(UnicodeEncodeError):
        WebSocketConnection().send_text("\ud800")


def test_send_ping_pong_and_limits() -> None:
    conn = WebSocketConnection()
    conn.send_ping()
    conn.send_ping(b"x" * 125)
    conn.send_pong(b"hb")
    assert server_frames(conn.data_to_send()) == [
        (PING, True, False, b""),
        (PING, True, False, b"x" * 125),
        (PONG, True, False, b"hb"),
    ]
    with pytest.raises(ValueError, match="125"):
        conn.send_ping(b"x" * 126)
    with pytest.raises(ValueError, match="125"):
        conn.send_pong(b"x" * 126)
    conn.close()
    with pytest.raises(ConnectionClosedError):
        conn.send_pong(b"")


def test_send_encoded_for_broadcasts() -> None:
    frame = encode_message("to everyone")
    plain = WebSocketConnection()
    compressed = WebSocketConnection(deflate=PerMessageDeflate(min_size=0))
    for conn in (plain, compressed):
        conn.send_encoded(frame)
        assert conn.data_to_send() == frame


def test_send_shared_returns_the_shared_frame_when_nothing_is_queued() -> None:
    frame = encode_message("to everyone")
    conn = WebSocketConnection()
    assert conn.send_shared("to everyone", frame) is frame
    assert conn.data_to_send() == b""


def test_send_shared_keeps_the_order_of_what_is_queued() -> None:
    conn = WebSocketConnection()
    conn.receive_data(client_frame(PING, b"p"))
    frame = encode_message(b"\x01\x02")
    pong = encode_frame(Opcode.PONG, b"p")
    assert conn.send_shared(b"\x01\x02", frame) == pong + frame
    assert conn.data_to_send() == b""


def test_send_shared_compresses_on_a_compressing_connection() -> None:
    for data in ("x" * 200, b"y" * 200):
        conn = WebSocketConnection(deflate=PerMessageDeflate(min_size=0))
        sent = conn.send_shared(data, encode_message(data))
        assert sent != encode_message(data)
        ((opcode, fin, rsv1, payload),) = server_frames(sent)
        assert (opcode, fin, rsv1) == (TEXT if isinstance(data, str) else BINARY, True, True)
        plain = data.encode() if isinstance(data, str) else data
        assert zlib.decompressobj(-15).decompress(payload + TAIL) == plain


def test_send_shared_needs_an_open_connection() -> None:
    conn = WebSocketConnection()
    conn.close()
    with pytest.raises(ConnectionClosedError, match="CLOSING"):
        conn.send_shared("x", encode_message("x"))


# --- permessage-deflate ----------------------------------------------------------------


def client_compress(compressor: zlib._Compress, payload: bytes) -> bytes:
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def test_receive_compressed_messages() -> None:
    conn = WebSocketConnection(deflate=PerMessageDeflate())
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    one = client_compress(compressor, "héllo".encode())
    two = client_compress(compressor, b"\x00" * 1000)
    half = len(two) // 2
    data = (
        client_frame(TEXT, one, rsv=4)
        + client_frame(BINARY, two[:half], rsv=4, fin=False)
        + client_frame(PING, b"")
        + client_frame(CONT, two[half:])
        + client_frame(TEXT, b"plain")  # uncompressed message on a deflate connection
    )
    assert feed(conn, data) == [
        TextMessage("héllo"),
        PingReceived(b""),
        BytesMessage(b"\x00" * 1000),
        TextMessage("plain"),
    ]


def test_compressed_text_with_invalid_utf8() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = client_frame(TEXT, client_compress(compressor, b"\xff"), rsv=4)
    assert_failed(WebSocketConnection(deflate=PerMessageDeflate()), data, 1007)
    fragmented = client_compress(zlib.compressobj(6, zlib.DEFLATED, -15), b"ok\xc0\xaf")
    data = client_frame(TEXT, fragmented[:2], rsv=4, fin=False) + client_frame(CONT, fragmented[2:])
    assert_failed(WebSocketConnection(deflate=PerMessageDeflate()), data, 1007)


def test_corrupt_compressed_data() -> None:
    data = client_frame(BINARY, b"\xff\xff\xff", rsv=4)
    assert_failed(WebSocketConnection(deflate=PerMessageDeflate()), data, 1007)


def test_rsv1_on_continuation_with_deflate() -> None:
    data = client_frame(TEXT, b"a", fin=False) + client_frame(CONT, b"b", rsv=4)
    assert_failed(WebSocketConnection(deflate=PerMessageDeflate()), data, 1002)


def test_deflate_bomb_fails_with_1009() -> None:
    bomb = client_compress(zlib.compressobj(9, zlib.DEFLATED, -15), bytes(16 << 20))
    assert len(bomb) < 20_000
    conn = WebSocketConnection(deflate=PerMessageDeflate())
    assert_failed(conn, client_frame(BINARY, bomb, rsv=4), 1009)
    # Fragmented bomb, too.
    conn = WebSocketConnection(deflate=PerMessageDeflate())
    data = client_frame(BINARY, bomb[:100], rsv=4, fin=False) + client_frame(CONT, bomb[100:])
    assert_failed(conn, data, 1009)


def test_send_compressed_above_min_size_only() -> None:
    conn = WebSocketConnection(deflate=PerMessageDeflate(min_size=64))
    reader = zlib.decompressobj(-15)
    conn.send_text("small")
    conn.send_text("hello world " * 20)
    conn.send_bytes(b"\x01" * 63)
    conn.send_bytes(b"\x02" * 64)
    frames = server_frames(conn.data_to_send())
    assert [(f[0], f[2]) for f in frames] == [
        (TEXT, False),
        (TEXT, True),
        (BINARY, False),
        (BINARY, True),
    ]
    assert frames[0][3] == b"small"
    assert reader.decompress(frames[1][3] + TAIL) == b"hello world " * 20
    assert frames[2][3] == b"\x01" * 63
    assert reader.decompress(frames[3][3] + TAIL) == b"\x02" * 64


# --- property: random conversations ---------------------------------------------------

_MESSAGE = st.tuples(
    st.booleans(),  # text?
    st.text(max_size=200),
    st.binary(max_size=300),
    st.integers(1, 4),  # fragments
    st.booleans(),  # compress?
    st.lists(st.binary(max_size=20), max_size=2),  # pings before the last fragment
)


@settings(max_examples=75, deadline=None)
@given(st.lists(_MESSAGE, max_size=6), st.booleans(), st.data())
def test_random_conversations_with_random_chunking(
    messages: list[tuple[bool, str, bytes, int, bool, list[bytes]]],
    use_deflate: bool,
    data: st.DataObject,
) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    wire = b""
    expected: list[Event] = []
    for is_text, text, binary, fragments, compress, pings in messages:
        payload = text.encode() if is_text else binary
        compress = compress and use_deflate
        body = client_compress(compressor, payload) if compress else payload
        step = max(1, -(-len(body) // fragments))
        pieces = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        for index, piece in enumerate(pieces):
            opcode = (TEXT if is_text else BINARY) if index == 0 else CONT
            rsv = 4 if compress and index == 0 else 0
            frame = client_frame(opcode, piece, fin=index == len(pieces) - 1, rsv=rsv)
            if index == len(pieces) - 1:
                # Pings go between the first and the last frame (before a lone frame).
                for ping in pings:
                    wire += client_frame(PING, ping)
                    expected.append(PingReceived(ping))
            wire += frame
        expected.append(TextMessage(text) if is_text else BytesMessage(binary))
    conn = WebSocketConnection(deflate=PerMessageDeflate() if use_deflate else None)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    events: list[Event] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        if cut > start:  # an empty chunk would mean EOF
            events += feed(conn, wire[start:cut])
        start = cut
    assert events == expected
    assert conn.state is ConnectionState.OPEN
    pongs = [f for f in server_frames(conn.data_to_send()) if f[0] == PONG]
    assert [f[3] for f in pongs] == [e.data for e in expected if isinstance(e, PingReceived)]


# --- public names --------------------------------------------------------------------


def test_module_all_names_exist() -> None:
    for name in websocket.__all__:
        assert hasattr(websocket, name), name


def test_package_reexports_every_public_name() -> None:
    names = set(tidings.wire.__all__)
    for module in (tidings.wire.frames, tidings.wire.handshake, tidings.wire.deflate, websocket):
        for name in module.__all__:
            if name in names:
                assert getattr(tidings.wire, name) is getattr(module, name)
    for name in tidings.wire.__all__:
        assert hasattr(tidings.wire, name), name
    assert issubclass(tidings.wire.ProtocolError, tidings.wire.WebSocketError)
    assert issubclass(tidings.wire.HandshakeError, tidings.wire.WebSocketError)
    assert issubclass(tidings.wire.ConnectionClosedError, tidings.wire.WebSocketError)


# --- interoperability with an independent implementation ------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_interop_with_the_websockets_sans_io_client(compress: bool) -> None:
    """A full session against the ``websockets`` library's own sans-I/O client."""
    from websockets.client import ClientProtocol
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    from websockets.frames import Close, Frame
    from websockets.frames import Opcode as PeerOpcode
    from websockets.uri import parse_uri

    from tidings.wire.deflate import negotiate_deflate
    from tidings.wire.handshake import build_accept_response, parse_request

    factories = [ClientPerMessageDeflateFactory(client_max_window_bits=True)] if compress else []
    client = ClientProtocol(parse_uri("ws://localhost/chat"), extensions=factories)
    client.send_request(client.connect())
    [raw_request] = client.data_to_send()
    head, _, _ = raw_request.partition(b"\r\n\r\n")
    request_line, *header_lines = head.split(b"\r\n")
    method, _, version = request_line.split(b" ")
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in header_lines)
    ]
    request = parse_request(method=method, http_version=version, headers=headers)
    negotiated = negotiate_deflate(request.extensions)
    assert (negotiated is not None) is compress
    extensions_header, pmd = negotiated if negotiated else (None, None)
    client.receive_data(build_accept_response(request, extensions_header=extensions_header))
    assert client.events_received()[0].status_code == 101  # type: ignore[union-attr]

    server = WebSocketConnection(deflate=pmd)

    def to_server() -> list[Event]:
        for chunk in client.data_to_send():
            server.receive_data(chunk)
        return server.events()

    def to_client() -> list[Frame]:
        client.receive_data(server.data_to_send())
        return [event for event in client.events_received() if isinstance(event, Frame)]

    long_text = "hello " * 100
    client.send_text(b"short")
    client.send_text(long_text.encode())
    client.send_binary(bytes(range(256)) * 300)
    client.send_ping(b"ping!")
    assert to_server() == [
        TextMessage("short"),
        TextMessage(long_text),
        BytesMessage(bytes(range(256)) * 300),
        PingReceived(b"ping!"),
    ]
    server.send_text("hi")
    server.send_text(long_text)
    server.send_bytes(b"\x00" * 70000)
    frames = to_client()
    assert [(f.opcode, f.data) for f in frames] == [
        (PeerOpcode.PONG, b"ping!"),
        (PeerOpcode.TEXT, b"hi"),
        (PeerOpcode.TEXT, long_text.encode()),
        (PeerOpcode.BINARY, b"\x00" * 70000),
    ]
    client.send_close(1000, "done")
    assert to_server() == [CloseReceived(1000, "done")]
    [close] = to_client()
    assert Close.parse(close.data).code == 1000
    assert server.state is ConnectionState.CLOSED


def test_event_codes_are_plain_ints() -> None:
    for data in (client_frame(CLOSE, b""), client_frame(TEXT, b"x", mask=None), b""):
        conn = WebSocketConnection()
        [event] = feed(conn, data)
        assert isinstance(event, CloseReceived | ConnectionFailed | ConnectionLost)
        assert type(event.code) is int
        assert type(conn.close_code) is int


@pytest.mark.parametrize("n", [0, 5, 125, 126, 1000, 0xFFFF])
def test_fast_path_16_bit_lengths(n: int) -> None:
    conn = WebSocketConnection()
    text = "é" * (n // 2) + "x" * (n % 2)
    assert feed(conn, client_frame(TEXT, text.encode(), length_bytes=2)) == [TextMessage(text)]
    assert feed(conn, client_frame(BINARY, b"b" * n, length_bytes=2)) == [BytesMessage(b"b" * n)]
    assert_failed(conn, client_frame(TEXT, b"\xff" * max(n, 1), length_bytes=2), 1007)


def test_fast_path_respects_limits_and_state() -> None:
    conn = WebSocketConnection(max_message_size=300)
    assert feed(conn, client_frame(TEXT, b"x" * 300)) == [TextMessage("x" * 300)]
    assert_failed(conn, client_frame(TEXT, b"x" * 301), 1009)
    # A chunk holding a frame plus part of the next goes through the parser.
    conn = WebSocketConnection()
    second = client_frame(TEXT, b"second" * 30)
    assert feed(conn, client_frame(TEXT, b"first") + second[:3]) == [TextMessage("first")]
    # With a partial frame buffered, a frame-shaped chunk is not taken by the fast path.
    assert feed(conn, second[3:]) == [TextMessage("second" * 30)]
    assert feed(conn, client_frame(TEXT, b"x" * 200)) == [TextMessage("x" * 200)]


def test_fast_path_events_are_ordinary_frozen_events() -> None:
    conn = WebSocketConnection()
    [text] = feed(conn, client_frame(TEXT, b"hi"))
    [binary] = feed(conn, client_frame(BINARY, b"\x01" * 300))
    assert type(text) is TextMessage
    assert type(binary) is BytesMessage
    assert text == TextMessage("hi")
    assert hash(text) == hash(TextMessage("hi"))
    assert repr(text) == "TextMessage(data='hi')"
    with pytest.raises(AttributeError):
        text.data = "changed"  # type: ignore[misc]


def _held(conn: WebSocketConnection) -> tuple[object, ...]:
    """What a connection holds per connection besides its settings, None when idle."""
    return (conn._parser, conn._events, conn._out, conn._frag_buffer)


def test_an_idle_connection_holds_no_parser_buffer_or_list() -> None:
    conn = WebSocketConnection()
    assert _held(conn) == (None, None, None, None)
    assert conn.events() == [] and conn.data_to_send() == b""
    # The fast path, both ways: nothing is left behind once collected.
    assert feed(conn, client_frame(TEXT, b"hi")) == [TextMessage("hi")]
    conn.send_text("hi")
    conn.send_bytes(b"\x00")
    assert server_frames(conn.data_to_send()) == [(TEXT, True, False, b"hi"),
                                                  (BINARY, True, False, b"\x00")]  # fmt: skip
    assert _held(conn) == (None, None, None, None)
    # The general path: a parser while a partial frame is buffered, a buffer while a
    # fragmented message is pending, then nothing again.
    frame = client_frame(TEXT, b"partial")
    assert feed(conn, frame[:3]) == []
    assert conn._parser is not None and conn._parser.buffered == 3
    assert feed(conn, frame[3:] + client_frame(TEXT, b"a", fin=False)) == [TextMessage("partial")]
    assert conn._parser is None and conn._frag_buffer == bytearray(b"a")
    assert feed(conn, client_frame(PING, b"p") + client_frame(CONT, b"b")) == [
        PingReceived(b"p"),
        TextMessage("ab"),
    ]
    assert conn.data_to_send() == encode_frame(Opcode.PONG, b"p")
    assert _held(conn) == (None, None, None, None)


def test_events_of_several_chunks_are_kept_until_collected() -> None:
    conn = WebSocketConnection()
    conn.receive_data(client_frame(TEXT, b"one"))
    conn.receive_data(client_frame(BINARY, b"two"))
    conn.receive_data(client_frame(PING, b"") + client_frame(TEXT, b"three"))
    assert conn.events() == [TextMessage("one"), BytesMessage(b"two"), PingReceived(b""),
                             TextMessage("three")]  # fmt: skip
    assert conn.events() == []
