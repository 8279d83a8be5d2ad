"""Tests for tidings.wire.http2: frames, stream states, flow control, SETTINGS, errors.

No event loop and no socket: bytes go in, events and bytes come out. Client frames are
built by hand (``_frame``) and header blocks are HPACK literals without indexing, so a
test states exactly the octets the connection sees; the connection's own blocks are
written by ``_LiteralEncoder`` in the same form, so the tests read them back without
an HPACK library.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.wire import http2
from tidings.wire.hpack import Decoder
from tidings.wire.http2 import (
    PREFACE,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    HTTP2Connection,
    HTTP2ProtocolError,
    PingAcknowledged,
    RequestReceived,
    SettingsChanged,
    StreamClosedError,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

Frame = tuple[int, int, int, bytes]


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, sid) + payload


def _int(value: int, bits: int) -> bytes:
    """An HPACK integer on a ``bits`` prefix (RFC 7541 section 5.1), no pattern bits."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """Literal fields without indexing, new names, no Huffman (RFC 7541 section 6.2.2)."""
    return b"".join(b"\x00" + _int(len(n), 7) + n + _int(len(v), 7) + v for n, v in fields)


def _unblock(block: bytes) -> list[tuple[bytes, bytes]]:
    fields = []
    pos = 0
    while pos < len(block):
        assert block[pos] == 0
        n = block[pos + 1]
        name = block[pos + 2 : pos + 2 + n]
        pos += 2 + n
        n = block[pos]
        fields.append((name, block[pos + 1 : pos + 1 + n]))
        pos += 1 + n
    return fields


class _LiteralEncoder:
    def __init__(self) -> None:
        self.table_sizes: list[int] = []

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        return _block(headers)

    def set_max_table_size(self, size: int) -> None:
        self.table_sizes.append(size)


GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t"), (b":path", b"/")]
POST = [(b":method", b"POST"), *GET[1:]]


def _frames(data: bytes) -> list[Frame]:
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags, sid = struct.unpack(">BBI", data[pos + 3 : pos + 9])
        out.append((kind, flags, sid, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


def _settings(**values: int) -> bytes:
    ids = {"header_table_size": 1, "enable_push": 2, "initial_window_size": 4}
    ids |= {"max_frame_size": 5, "connect": 8, "unknown": 0x99}
    return b"".join(struct.pack(">HL", ids[k], v) for k, v in values.items())


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _connect(**kwargs: int | bool) -> HTTP2Connection:
    """A connection past the preface and both SETTINGS exchanges."""
    conn = HTTP2Connection(_LiteralEncoder(), **kwargs)  # type: ignore[arg-type]
    conn.data_to_send()
    events = conn.receive_data(PREFACE + _frame(SETTINGS, 0, 0) + _frame(SETTINGS, ACK, 0))
    assert [type(e) for e in events] == [SettingsChanged]
    assert _frames(conn.data_to_send()) == [(SETTINGS, ACK, 0, b"")]
    assert conn.control == 1
    conn.control = 0  # as the server does after each read
    return conn


def _error(conn: HTTP2Connection, data: bytes, code: ErrorCode) -> str:
    """Feed ``data``: a connection error with ``code``, answered with GOAWAY."""
    with pytest.raises(HTTP2ProtocolError) as info:
        conn.receive_data(data)
    assert info.value.error_code == code
    (goaway,) = [f for f in _frames(conn.data_to_send()) if f[0] == GOAWAY]
    assert int.from_bytes(goaway[3][4:8], "big") == code
    assert conn.closed
    assert conn.receive_data(_frame(PING, 0, 0, bytes(8))) == []  # nothing more
    return info.value.reason


def _reset(conn: HTTP2Connection, data: bytes, sid: int, code: ErrorCode) -> list[http2.Event]:
    """Feed ``data``: RST_STREAM ``code`` on ``sid``; the events."""
    events = conn.receive_data(data)
    frames = [f for f in _frames(conn.data_to_send()) if f[0] == RST_STREAM]
    assert frames == [(RST_STREAM, 0, sid, _u32(code))]
    assert not conn.closed
    return events


# -- the preface and our SETTINGS -----------------------------------------------------


def test_our_settings_are_the_first_frame() -> None:
    conn = HTTP2Connection(
        max_concurrent_streams=7,
        initial_window_size=1000,
        max_frame_size=20000,
        max_header_list_size=4000,
        enable_connect_protocol=True,
    )
    ((kind, flags, sid, payload),) = _frames(conn.data_to_send())
    assert (kind, flags, sid) == (SETTINGS, 0, 0)
    values = dict(struct.iter_unpack(">HL", payload))
    assert values == {3: 7, 4: 1000, 5: 20000, 6: 4000, 2: 0, 8: 1}
    assert conn.data_to_send() == b""
    plain = HTTP2Connection()
    assert 8 not in dict(struct.iter_unpack(">HL", _frames(plain.data_to_send())[0][3]))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_frame_size": 16383}, {"max_frame_size": 1 << 24}, {"initial_window_size": 1 << 31}],
)
def test_settings_out_of_range_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be between"):
        HTTP2Connection(**kwargs)  # type: ignore[arg-type]


def test_the_preface_may_arrive_in_pieces() -> None:
    conn = HTTP2Connection(_LiteralEncoder())
    preface = PREFACE + _frame(SETTINGS, 0, 0)
    for i in range(len(preface) - 1):
        assert conn.receive_data(preface[i : i + 1]) == []
    (event,) = conn.receive_data(preface[-1:])
    assert isinstance(event, SettingsChanged)
    data = _frame(HEADERS, END_STREAM | END_HEADERS, 1, _block(GET))
    assert [type(e) for e in conn.receive_data(data)] == [RequestReceived]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        PREFACE[:-2] + b"XX" + bytes(9),
        PREFACE + _frame(PING, 0, 0, bytes(8)),  # the client's preface ends with SETTINGS
        PREFACE + _frame(SETTINGS, ACK, 0),
    ],
)
def test_an_invalid_preface_is_a_protocol_error(data: bytes) -> None:
    conn = HTTP2Connection()
    conn.data_to_send()
    assert "preface" in _error(conn, data, ErrorCode.PROTOCOL_ERROR)


# -- a request and its response -------------------------------------------------------


def test_a_get_and_its_response() -> None:
    conn = _connect()
    (event,) = conn.receive_data(_frame(HEADERS, END_STREAM | END_HEADERS, 1, _block(GET)))
    assert isinstance(event, RequestReceived)
    assert (event.stream_id, event.headers, event.ended) == (1, GET, True)
    assert conn.open_streams == 1
    assert conn.highest_inbound_stream_id == 1
    conn.send_headers(1, [(b":status", b"200")])
    conn.send_data(1, b"hello", end_stream=True)
    assert _frames(conn.data_to_send()) == [
        (HEADERS, END_HEADERS, 1, _block([(b":status", b"200")])),
        (DATA, END_STREAM, 1, b"hello"),
    ]
    assert conn.open_streams == 0
    with pytest.raises(StreamClosedError):
        conn.send_data(1, b"more")
    with pytest.raises(StreamClosedError):
        conn.send_window(1)


def test_a_post_fed_one_octet_at_a_time() -> None:
    conn = _connect()
    data = (
        _frame(HEADERS, END_HEADERS, 1, _block(POST))
        + _frame(DATA, 0, 1, b"abc")
        + _frame(DATA, END_STREAM, 1, b"de")
    )
    events: list[http2.Event] = []
    for i in range(len(data)):
        events += conn.receive_data(data[i : i + 1])
    request, first, last = events
    assert isinstance(request, RequestReceived) and not request.ended
    assert isinstance(first, DataReceived) and isinstance(last, DataReceived)
    assert (first.data, first.flow_controlled_length, first.ended) == (b"abc", 3, False)
    assert (last.data, last.ended) == (b"de", True)
    # The response may still be sent: the stream is half-closed (remote).
    conn.send_headers(1, [(b":status", b"204")], end_stream=True)
    assert conn.open_streams == 0


@given(st.lists(st.integers(0, 200), max_size=8))
def test_frames_split_anywhere_give_the_same_events(cuts: list[int]) -> None:
    data = (
        _frame(HEADERS, END_HEADERS | PADDED, 1, b"\x02" + _block(POST) + b"\x00\x00")
        + _frame(DATA, PADDED, 1, b"\x01xy\x00")
        + _frame(PING, 0, 0, b"12345678")
        + _frame(DATA, END_STREAM, 1, b"z")
    )
    conn = _connect()
    events: list[http2.Event] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events += conn.receive_data(data[start:cut])
        start = max(start, cut)
    assert [type(e) for e in events] == [RequestReceived, DataReceived, DataReceived]
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"xyz"


def test_a_large_frame_trickling_in_is_joined_once() -> None:
    conn = _connect(max_frame_size=1 << 20, initial_window_size=1 << 20)
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    data = _frame(DATA, END_STREAM, 1, bytes(60_000))
    for at in range(0, len(data) - 1000, 1000):
        assert conn.receive_data(data[at : at + 1000]) == []
        assert conn._buffered == at + 1000  # held as pieces, not copied again
    (event,) = conn.receive_data(data[len(data) - len(data) % 1000 or -1000 :])
    assert isinstance(event, DataReceived) and event.data == bytes(60_000)
    assert conn._buffered == 0


def test_the_reserved_bit_of_a_stream_id_is_ignored() -> None:
    conn = _connect()
    (event,) = conn.receive_data(
        _frame(HEADERS, END_STREAM | END_HEADERS, 1 | 1 << 31, _block(GET))
    )
    assert isinstance(event, RequestReceived) and event.stream_id == 1


def test_padding_and_priority_on_headers_are_stripped() -> None:
    conn = _connect()
    payload = b"\x03" + _u32(0) + b"\x10" + _block(GET) + b"\x00" * 3
    (event,) = conn.receive_data(_frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, payload))
    assert isinstance(event, RequestReceived) and event.headers == GET


def test_all_padding_data_is_empty_data_counted_whole() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    (event,) = conn.receive_data(_frame(DATA, PADDED | END_STREAM, 1, b"\x04" + bytes(4)))
    assert isinstance(event, DataReceived)
    assert (event.data, event.flow_controlled_length, event.ended) == (b"", 5, True)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [(DATA, b"\x05abcd"), (DATA, b""), (HEADERS, b"\x09" + _block(GET)[:8]), (HEADERS, b"")],
)
def test_padding_not_shorter_than_the_payload_is_a_protocol_error(
    kind: int, payload: bytes
) -> None:
    conn = _connect()
    if kind == DATA:
        conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    flags = PADDED | (END_HEADERS if kind == HEADERS else 0)
    assert "padding" in _error(conn, _frame(kind, flags, 1, payload), ErrorCode.PROTOCOL_ERROR)


def test_headers_too_short_for_their_priority() -> None:
    conn = _connect()
    _error(
        conn,
        _frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\x00\x00"),
        ErrorCode.FRAME_SIZE_ERROR,
    )


def test_trailers_end_the_stream() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    trailers = [(b"x-checksum", b"1")]
    (event,) = conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(trailers)))
    assert isinstance(event, TrailersReceived)
    assert (event.stream_id, event.headers) == (1, trailers)


def test_trailers_without_end_stream_are_a_stream_error() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    (event,) = _reset(
        conn, _frame(HEADERS, END_HEADERS, 1, _block([(b"x", b"1")])), 1, ErrorCode.PROTOCOL_ERROR
    )
    assert isinstance(event, StreamReset)
    assert (event.stream_id, event.error_code, event.remote) == (1, ErrorCode.PROTOCOL_ERROR, False)
    assert conn.resets == 1


# -- header blocks ----------------------------------------------------------------------


def test_a_block_split_over_continuation_frames() -> None:
    conn = _connect()
    block = _block(GET)
    data = (
        _frame(HEADERS, END_STREAM, 1, block[:5])
        + _frame(CONTINUATION, 0, 1, block[5:9])
        + _frame(CONTINUATION, END_HEADERS, 1, block[9:])
    )
    (event,) = conn.receive_data(data)
    assert isinstance(event, RequestReceived) and event.headers == GET and event.ended


@pytest.mark.parametrize(
    "interloper",
    [
        _frame(PING, 0, 0, bytes(8)),
        _frame(PRIORITY, 0, 1, bytes(5)),
        _frame(0xBF, 0, 1, b"x"),  # even an unknown type (RFC 9113 section 5.5)
        _frame(HEADERS, END_HEADERS, 3, _block(GET)),
        _frame(CONTINUATION, END_HEADERS, 3, b""),  # another stream's
    ],
)
def test_nothing_may_interrupt_a_header_block(interloper: bytes) -> None:
    conn = _connect()
    _error(conn, _frame(HEADERS, 0, 1, _block(GET)[:3]) + interloper, ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("sid", [0, 1])
def test_continuation_outside_a_block(sid: int) -> None:
    conn = _connect()
    _error(conn, _frame(CONTINUATION, END_HEADERS, sid, b"\x82"), ErrorCode.PROTOCOL_ERROR)


def test_a_header_block_past_the_list_size_is_cut_before_it_ends() -> None:
    conn = _connect(max_header_list_size=100)
    head = _frame(HEADERS, 0, 1, bytes(60))
    assert conn.receive_data(head + _frame(CONTINUATION, 0, 1, bytes(40))) == []
    _error(conn, _frame(CONTINUATION, 0, 1, bytes(1)), ErrorCode.ENHANCE_YOUR_CALM)
    conn = _connect(max_header_list_size=100)
    _error(conn, _frame(HEADERS, 0, 1, bytes(101)), ErrorCode.ENHANCE_YOUR_CALM)


def test_a_header_block_in_endless_empty_continuation_frames_is_cut() -> None:
    conn = _connect()
    block = _block(GET)
    # Many small frames are fine...
    pieces = [_frame(CONTINUATION, 0, 1, block[i : i + 1]) for i in range(1, len(block))]
    data = _frame(HEADERS, END_STREAM, 1, block[:1]) + b"".join(pieces)
    (event,) = conn.receive_data(data + _frame(CONTINUATION, END_HEADERS, 1, b""))
    assert isinstance(event, RequestReceived) and event.headers == GET
    # ...up to a bound: empty ones would cost nothing in octets.
    conn.receive_data(_frame(HEADERS, END_STREAM, 3, block))
    conn.receive_data(_frame(CONTINUATION, 0, 3, b"") * 127)
    _error(conn, _frame(CONTINUATION, 0, 3, b""), ErrorCode.ENHANCE_YOUR_CALM)


def test_a_block_that_cannot_be_decoded_is_a_compression_error() -> None:
    conn = _connect()
    # A literal whose name claims 5 octets and has 2.
    _error(conn, _frame(HEADERS, END_HEADERS, 1, b"\x40\x05ab"), ErrorCode.COMPRESSION_ERROR)


def test_a_block_decoding_past_the_list_size_is_enhance_your_calm() -> None:
    conn = _connect(max_header_list_size=200)
    block = _block([(b"x-big", b"a" * 100), (b"x-big2", b"a" * 100)])
    _error(conn, _frame(HEADERS, END_HEADERS, 1, block), ErrorCode.ENHANCE_YOUR_CALM)


# -- stream identifiers and states ----------------------------------------------------


@pytest.mark.parametrize("sid", [0, 2])
def test_headers_on_stream_0_or_an_even_stream(sid: int) -> None:
    conn = _connect()
    _error(conn, _frame(HEADERS, END_HEADERS, sid, _block(GET)), ErrorCode.PROTOCOL_ERROR)


def test_stream_ids_only_increase() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 5, _block(GET)))
    _error(
        conn, _frame(HEADERS, END_HEADERS | END_STREAM, 3, _block(GET)), ErrorCode.PROTOCOL_ERROR
    )
    assert _frames(http2.frame(GOAWAY, 0, 0, _u32(5) + _u32(1)))[0][3][:4] == _u32(5)


def test_goaway_names_the_highest_stream() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 7, _block(GET)))
    conn.data_to_send()
    conn.send_goaway(ErrorCode.NO_ERROR)
    assert _frames(conn.data_to_send()) == [(GOAWAY, 0, 0, _u32(7) + _u32(0))]
    assert not conn.closed  # a graceful GOAWAY: the streams in flight go on
    conn.close(ErrorCode.ENHANCE_YOUR_CALM)
    assert _frames(conn.data_to_send()) == [(GOAWAY, 0, 0, _u32(7) + _u32(11))]
    conn.send_goaway(ErrorCode.NO_ERROR)  # one GOAWAY after close, no more
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "data",
    [
        _frame(DATA, END_STREAM, 1, b"x"),
        _frame(RST_STREAM, 0, 1, _u32(8)),
        _frame(WINDOW_UPDATE, 0, 1, _u32(100)),
        _frame(DATA, 0, 2, b"x"),
    ],
)
def test_frames_on_idle_streams(data: bytes) -> None:
    conn = _connect()
    assert "idle" in _error(conn, data, ErrorCode.PROTOCOL_ERROR)


def test_priority_is_allowed_on_idle_and_closed_streams() -> None:
    conn = _connect()
    assert conn.receive_data(_frame(PRIORITY, 0, 9, bytes(4) + b"\x0f")) == []
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 3, _block(GET)))  # below 9: fine
    conn.send_headers(3, [(b":status", b"200")], end_stream=True)
    assert conn.receive_data(_frame(PRIORITY, 0, 3, bytes(4) + b"\x0f")) == []
    assert not [f for f in _frames(conn.data_to_send()) if f[0] == RST_STREAM]


def test_priority_frames_checked() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    _reset(conn, _frame(PRIORITY, 0, 1, _u32(1) + b"\x0f"), 1, ErrorCode.PROTOCOL_ERROR)
    _reset(conn, _frame(PRIORITY, 0, 3, bytes(4)), 3, ErrorCode.FRAME_SIZE_ERROR)
    _error(conn, _frame(PRIORITY, 0, 0, bytes(5)), ErrorCode.PROTOCOL_ERROR)


def test_headers_that_depend_on_their_own_stream() -> None:
    conn = _connect()
    payload = _u32(1) + b"\x0f" + _block(GET)
    events = _reset(
        conn, _frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, payload), 1, ErrorCode.PROTOCOL_ERROR
    )
    assert events == []  # no request: the stream never opened
    # On an open stream (trailers that depend on it): also a stream error.
    conn.receive_data(_frame(HEADERS, END_HEADERS, 3, _block(POST)))
    payload = _u32(3) + b"\x0f" + _block([(b"x", b"1")])
    flags = END_HEADERS | END_STREAM | PRIORITY_FLAG
    (event,) = _reset(conn, _frame(HEADERS, flags, 3, payload), 3, ErrorCode.PROTOCOL_ERROR)
    assert isinstance(event, StreamReset)


def test_half_closed_remote_refuses_data_and_headers() -> None:
    conn = _connect()
    get = _frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET))
    conn.receive_data(get)
    (event,) = _reset(conn, _frame(DATA, 0, 1, b"x"), 1, ErrorCode.STREAM_CLOSED)
    assert isinstance(event, StreamReset) and not event.remote
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 3, _block(GET)))
    _reset(
        conn, _frame(HEADERS, END_HEADERS | END_STREAM, 3, _block(GET)), 3, ErrorCode.STREAM_CLOSED
    )


def test_half_closed_remote_allows_window_update_priority_and_reset() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    events = conn.receive_data(
        _frame(WINDOW_UPDATE, 0, 1, _u32(100))
        + _frame(PRIORITY, 0, 1, bytes(4) + b"\x0f")
        + _frame(RST_STREAM, 0, 1, _u32(ErrorCode.CANCEL))
    )
    update, reset = events
    assert isinstance(update, WindowUpdated) and update.stream_id == 1
    assert isinstance(reset, StreamReset)
    assert (reset.stream_id, reset.error_code, reset.remote) == (1, ErrorCode.CANCEL, True)
    assert conn.resets == 1
    assert conn.data_to_send() == b""


def test_frames_after_the_clients_reset_are_stream_closed() -> None:
    conn = _connect()
    conn.receive_data(
        _frame(HEADERS, END_HEADERS, 1, _block(POST)) + _frame(RST_STREAM, 0, 1, _u32(8))
    )
    assert _reset(conn, _frame(DATA, 0, 1, b"x"), 1, ErrorCode.STREAM_CLOSED) == []
    _reset(
        conn, _frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)), 1, ErrorCode.STREAM_CLOSED
    )
    # RST_STREAM and WINDOW_UPDATE on it are ignored.
    assert (
        conn.receive_data(_frame(RST_STREAM, 0, 1, _u32(8)) + _frame(WINDOW_UPDATE, 0, 1, _u32(1)))
        == []
    )
    assert conn.data_to_send() == b""


def test_frames_after_our_reset_are_ignored() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    conn.reset_stream(1, ErrorCode.CANCEL)
    assert _frames(conn.data_to_send()) == [(RST_STREAM, 0, 1, _u32(ErrorCode.CANCEL))]
    conn.reset_stream(1, ErrorCode.CANCEL)  # closed already: nothing
    late = _frame(DATA, 0, 1, b"x" * 100) + _frame(
        HEADERS, END_HEADERS | END_STREAM, 1, _block([(b"x", b"1")])
    )
    assert conn.receive_data(late) == []
    assert conn.data_to_send() == b""
    with pytest.raises(StreamClosedError):
        conn.send_headers(1, [(b":status", b"200")])


def test_frames_after_both_sides_ended() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    conn.send_headers(1, [(b":status", b"200")], end_stream=True)
    conn.data_to_send()
    _reset(conn, _frame(DATA, END_STREAM, 1, b"x"), 1, ErrorCode.STREAM_CLOSED)
    _reset(
        conn, _frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)), 1, ErrorCode.STREAM_CLOSED
    )


def test_the_local_side_ends_first() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    conn.send_headers(1, [(b":status", b"200")])
    conn.end_stream(1)
    assert _frames(conn.data_to_send())[-1] == (DATA, END_STREAM, 1, b"")
    with pytest.raises(StreamClosedError):
        conn.send_data(1, b"x")
    (event,) = conn.receive_data(_frame(DATA, END_STREAM, 1, b"body"))
    assert isinstance(event, DataReceived) and event.ended
    assert conn.open_streams == 0
    # Trailers may end a stream whose response is complete, too.
    conn.receive_data(_frame(HEADERS, END_HEADERS, 3, _block(POST)))
    conn.send_headers(3, [(b":status", b"200")], end_stream=True)
    (event,) = conn.receive_data(
        _frame(HEADERS, END_HEADERS | END_STREAM, 3, _block([(b"x", b"1")]))
    )
    assert isinstance(event, TrailersReceived)
    assert conn.open_streams == 0


def test_streams_past_the_limit_are_refused() -> None:
    conn = _connect(max_concurrent_streams=2)
    requests = b"".join(_frame(HEADERS, END_HEADERS, sid, _block(POST)) for sid in (1, 3, 5))
    events = conn.receive_data(requests)
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [1, 3]
    assert _frames(conn.data_to_send()) == [(RST_STREAM, 0, 5, _u32(ErrorCode.REFUSED_STREAM))]
    assert conn.resets == 1
    # A late frame for the refused stream is ignored; the others go on.
    assert conn.receive_data(_frame(DATA, END_STREAM, 5, b"x")) == []
    conn.reset_stream(1, ErrorCode.CANCEL)
    events = conn.receive_data(_frame(HEADERS, END_HEADERS, 7, _block(POST)))
    assert [type(e) for e in events] == [RequestReceived]


def test_closed_streams_are_remembered_within_a_bound() -> None:
    conn = _connect()
    for sid in range(1, 10_000, 2):
        conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, sid, _block(GET)))
        conn.reset_stream(sid, ErrorCode.NO_ERROR)
    assert len(conn._closed) <= 2 * 1024
    assert conn.open_streams == 0
    conn.data_to_send()
    # A stream closed too long ago to be remembered: DATA on it is still STREAM_CLOSED.
    _reset(conn, _frame(DATA, 0, 1, b"x"), 1, ErrorCode.STREAM_CLOSED)


# -- frame sizes, unknown frames --------------------------------------------------------


def test_a_frame_over_the_max_frame_size_is_refused_from_its_header() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    head = _frame(DATA, 0, 1, b"x" * 16385)[:9]
    _error(conn, head, ErrorCode.FRAME_SIZE_ERROR)


def test_a_larger_max_frame_size_is_accepted() -> None:
    conn = _connect(max_frame_size=32768, initial_window_size=65535)
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    (event,) = conn.receive_data(_frame(DATA, 0, 1, b"x" * 20000))
    assert isinstance(event, DataReceived) and len(event.data) == 20000


def test_unknown_frame_types_are_ignored() -> None:
    conn = _connect()
    assert conn.receive_data(_frame(0xBF, 0xFF, 0, b"probe") + _frame(0x0A, 0, 1, b"")) == []
    assert conn.data_to_send() == b""


def test_a_client_cannot_push() -> None:
    conn = _connect()
    _error(conn, _frame(PUSH_PROMISE, END_HEADERS, 1, _u32(2)), ErrorCode.PROTOCOL_ERROR)


# -- RST_STREAM, PING, GOAWAY -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_frame(RST_STREAM, 0, 0, _u32(8)), ErrorCode.PROTOCOL_ERROR),
        (_frame(RST_STREAM, 0, 1, b"\x00\x00\x08"), ErrorCode.FRAME_SIZE_ERROR),
        (_frame(PING, 0, 1, bytes(8)), ErrorCode.PROTOCOL_ERROR),
        (_frame(PING, 0, 0, bytes(6)), ErrorCode.FRAME_SIZE_ERROR),
        (_frame(GOAWAY, 0, 1, bytes(8)), ErrorCode.PROTOCOL_ERROR),
        (_frame(GOAWAY, 0, 0, bytes(7)), ErrorCode.FRAME_SIZE_ERROR),
        (_frame(DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_malformed_control_frames(data: bytes, code: ErrorCode) -> None:
    _error(_connect(), data, code)


def test_a_ping_is_answered() -> None:
    conn = _connect()
    assert conn.receive_data(_frame(PING, 0xF6, 0, b"12345678")) == []  # undefined flags ignored
    assert _frames(conn.data_to_send()) == [(PING, ACK, 0, b"12345678")]
    assert conn.control == 1


def test_our_ping_and_its_ack() -> None:
    conn = _connect()
    conn.ping(b"tidings!")
    assert _frames(conn.data_to_send()) == [(PING, 0, 0, b"tidings!")]
    (event,) = conn.receive_data(_frame(PING, ACK, 0, b"tidings!"))
    assert isinstance(event, PingAcknowledged) and event.data == b"tidings!"
    assert conn.control == 0
    with pytest.raises(ValueError, match="8 octets"):
        conn.ping(b"short")


def test_a_goaway_from_the_client() -> None:
    conn = _connect()
    (event,) = conn.receive_data(_frame(GOAWAY, 0, 0, _u32(1 << 31 | 3) + _u32(0xFF) + b"bye"))
    assert isinstance(event, ConnectionTerminated)
    assert (event.last_stream_id, event.error_code, event.additional_data) == (3, 0xFF, b"bye")


# -- SETTINGS -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_frame(SETTINGS, ACK, 0, bytes(6)), ErrorCode.FRAME_SIZE_ERROR),
        (_frame(SETTINGS, 0, 1), ErrorCode.PROTOCOL_ERROR),
        (_frame(SETTINGS, 0, 0, bytes(3)), ErrorCode.FRAME_SIZE_ERROR),
        (_frame(SETTINGS, 0, 0, _settings(enable_push=2)), ErrorCode.PROTOCOL_ERROR),
        (_frame(SETTINGS, 0, 0, _settings(connect=2)), ErrorCode.PROTOCOL_ERROR),
        (
            _frame(SETTINGS, 0, 0, _settings(initial_window_size=1 << 31)),
            ErrorCode.FLOW_CONTROL_ERROR,
        ),
        (_frame(SETTINGS, 0, 0, _settings(max_frame_size=16383)), ErrorCode.PROTOCOL_ERROR),
        (_frame(SETTINGS, 0, 0, _settings(max_frame_size=1 << 24)), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_settings_out_of_range(data: bytes, code: ErrorCode) -> None:
    _error(_connect(), data, code)


def test_settings_are_applied_in_order_and_acknowledged() -> None:
    conn = _connect()
    encoder = conn.encoder
    assert isinstance(encoder, _LiteralEncoder)
    payload = _settings(
        header_table_size=256,
        max_frame_size=20000,
        initial_window_size=100,
        unknown=7,
        enable_push=0,
    ) + struct.pack(">HL", 4, 1)
    (event,) = conn.receive_data(_frame(SETTINGS, 0, 0, payload))
    assert isinstance(event, SettingsChanged)
    assert event.changed == {1: 256, 5: 20000, 4: 1, 0x99: 7, 2: 0}
    assert conn.remote_settings[4] == 1
    assert encoder.table_sizes == [256]
    assert conn.max_outbound_frame_size == 20000
    assert _frames(conn.data_to_send()) == [(SETTINGS, ACK, 0, b"")]
    assert conn.control == 1
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    assert conn.send_window(1) == 1  # the last value of INITIAL_WINDOW_SIZE


def test_initial_window_size_changes_open_streams_windows() -> None:
    conn = _connect()
    conn.receive_data(_frame(SETTINGS, 0, 0, _settings(initial_window_size=0)))
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    conn.send_headers(1, [(b":status", b"200")])
    assert conn.send_window(1) == 0
    with pytest.raises(ValueError, match="window"):
        conn.send_data(1, b"x")
    (event,) = conn.receive_data(_frame(SETTINGS, 0, 0, _settings(initial_window_size=10)))
    assert isinstance(event, SettingsChanged)
    assert conn.send_window(1) == 10
    conn.send_data(1, b"x" * 6)
    # Shrinking below what is in flight makes the window negative (section 6.9.2).
    conn.receive_data(_frame(SETTINGS, 0, 0, _settings(initial_window_size=2)))
    assert conn.send_window(1) == -4
    conn.receive_data(_frame(WINDOW_UPDATE, 0, 1, _u32(5)))
    assert conn.send_window(1) == 1


def test_initial_window_size_overflowing_a_stream_window() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    conn.receive_data(_frame(WINDOW_UPDATE, 0, 1, _u32((1 << 31) - 1 - 65535)))
    data = _frame(SETTINGS, 0, 0, _settings(initial_window_size=65536))
    _error(conn, data, ErrorCode.FLOW_CONTROL_ERROR)


# -- flow control ---------------------------------------------------------------------------


def test_window_updates() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    events = conn.receive_data(
        _frame(WINDOW_UPDATE, 0, 0, _u32(10)) + _frame(WINDOW_UPDATE, 0, 1, _u32(1 << 31 | 5))
    )
    assert [(type(e), e.stream_id) for e in events if isinstance(e, WindowUpdated)] == [
        (WindowUpdated, 0),
        (WindowUpdated, 1),
    ]
    assert conn.send_window(1) == 65540  # the connection's, 65545, is larger
    _reset(conn, _frame(WINDOW_UPDATE, 0, 1, _u32(0)), 1, ErrorCode.PROTOCOL_ERROR)
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 3, _block(GET)))
    _reset(conn, _frame(WINDOW_UPDATE, 0, 3, _u32((1 << 31) - 1)), 3, ErrorCode.FLOW_CONTROL_ERROR)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_frame(WINDOW_UPDATE, 0, 0, _u32(0)), ErrorCode.PROTOCOL_ERROR),
        (_frame(WINDOW_UPDATE, 0, 0, _u32((1 << 31) - 1)), ErrorCode.FLOW_CONTROL_ERROR),
        (_frame(WINDOW_UPDATE, 0, 0, bytes(3)), ErrorCode.FRAME_SIZE_ERROR),
    ],
)
def test_connection_window_updates_checked(data: bytes, code: ErrorCode) -> None:
    _error(_connect(), data, code)


def test_sending_respects_both_windows_and_the_frame_size() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 3, _block(GET)))
    for _ in range(3):
        conn.send_data(1, b"x" * 16384)
    conn.send_data(1, b"x" * 16383)
    assert conn.send_window(1) == 0
    assert conn.send_window(3) == 0  # the connection's window is used up
    conn.receive_data(_frame(WINDOW_UPDATE, 0, 0, _u32(100_000)))
    assert conn.send_window(3) == 65535
    with pytest.raises(ValueError, match="frame size"):
        conn.send_data(3, b"x" * 16385)  # over the client's SETTINGS_MAX_FRAME_SIZE


def test_the_receive_windows() -> None:
    conn = _connect(initial_window_size=100)
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    conn.receive_data(_frame(DATA, 0, 1, b"x" * 100))
    _reset(conn, _frame(DATA, 0, 1, b"x"), 1, ErrorCode.FLOW_CONTROL_ERROR)
    conn.receive_data(_frame(HEADERS, END_HEADERS, 3, _block(POST)))
    conn.receive_data(_frame(DATA, 0, 3, b"x" * 100))
    conn.open_window(3, 60)
    assert _frames(conn.data_to_send()) == [(WINDOW_UPDATE, 0, 3, _u32(60))]
    conn.open_window(3, 20)  # under half the initial window: held back
    conn.open_window(3, 29)
    assert conn.data_to_send() == b""
    conn.open_window(3, 1)
    assert _frames(conn.data_to_send()) == [(WINDOW_UPDATE, 0, 3, _u32(50))]
    conn.receive_data(_frame(DATA, END_STREAM, 3, b"x" * 110))
    conn.open_window(3, 60)  # the client has ended: no use
    conn.open_window(5, 60)  # no such stream
    assert conn.data_to_send() == b""


def test_our_initial_window_applies_once_acknowledged() -> None:
    conn = HTTP2Connection(_LiteralEncoder(), initial_window_size=10)
    conn.data_to_send()
    conn.receive_data(PREFACE + _frame(SETTINGS, 0, 0))
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    conn.receive_data(_frame(DATA, 0, 1, b"x" * 20))  # the default 65535 until the ACK
    conn.receive_data(_frame(SETTINGS, ACK, 0))  # now 10, with 20 in flight: -10
    conn.data_to_send()
    _reset(conn, _frame(DATA, 0, 1, b"x"), 1, ErrorCode.FLOW_CONTROL_ERROR)
    conn.receive_data(_frame(SETTINGS, ACK, 0))  # an ACK with nothing to apply


def test_the_connection_window_is_replenished_at_half() -> None:
    conn = _connect(initial_window_size=1 << 20)
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    conn.receive_data(_frame(DATA, 0, 1, b"x" * 16384))
    assert conn.data_to_send() == b""
    conn.receive_data(_frame(DATA, 0, 1, b"x" * 16384))
    assert _frames(conn.data_to_send()) == [(WINDOW_UPDATE, 0, 0, _u32(32768))]
    # Data on a stream we reset still counts, and is given back the same way.
    conn.reset_stream(1, ErrorCode.CANCEL)
    conn.data_to_send()
    conn.receive_data(_frame(DATA, 0, 1, b"x" * 16384) * 2)
    assert _frames(conn.data_to_send()) == [(WINDOW_UPDATE, 0, 0, _u32(32768))]


def test_the_connection_window_overflowing() -> None:
    conn = _connect(initial_window_size=1 << 20, max_frame_size=1 << 20)
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    _error(conn, _frame(DATA, 0, 1, b"x" * 65536), ErrorCode.FLOW_CONTROL_ERROR)


# -- sending ----------------------------------------------------------------------------------


def test_a_large_header_block_goes_out_in_continuation_frames() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    fields = [(b":status", b"200"), *[(b"x-%d" % i, b"v" * 120) for i in range(300)]]
    conn.send_headers(1, fields, end_stream=True)
    frames = _frames(conn.data_to_send())
    assert [(k, f) for k, f, _, _ in frames] == [(HEADERS, END_STREAM)] + [(CONTINUATION, 0)] * (
        len(frames) - 2
    ) + [(CONTINUATION, END_HEADERS)]
    assert all(len(p) <= 16384 for *_, p in frames)
    assert _unblock(b"".join(p for *_, p in frames)) == fields


def test_nothing_is_sent_after_a_connection_error() -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    _error(conn, _frame(PING, 0, 1, bytes(8)), ErrorCode.PROTOCOL_ERROR)
    with pytest.raises(StreamClosedError):
        conn.send_headers(1, [(b":status", b"200")])
    conn.reset_stream(1, ErrorCode.CANCEL)
    conn.open_window(1, 10)
    assert conn.data_to_send() == b""


def test_the_default_hpack_codec_round_trips() -> None:
    conn = HTTP2Connection()
    conn.data_to_send()
    conn.receive_data(PREFACE + _frame(SETTINGS, 0, 0, _settings(header_table_size=0)))
    (event,) = conn.receive_data(_frame(HEADERS, END_HEADERS | END_STREAM, 1, _block(GET)))
    assert isinstance(event, RequestReceived) and event.headers == GET
    conn.data_to_send()
    conn.send_headers(1, [(b":status", b"200"), (b"x-a", b"b")], end_stream=True)
    ((kind, flags, sid, block),) = _frames(conn.data_to_send())
    assert (kind, flags, sid) == (HEADERS, END_HEADERS | END_STREAM, 1)
    assert Decoder().decode(block) == [(b":status", b"200"), (b"x-a", b"b")]


_FRAMES = st.lists(
    st.builds(
        _frame,
        st.integers(0, 11),
        st.integers(0, 255),
        st.integers(0, 7),
        st.binary(max_size=24),
    ),
    max_size=12,
)


@given(_FRAMES)
def test_any_frames_give_events_or_a_protocol_error(frames: list[bytes]) -> None:
    conn = _connect()
    conn.receive_data(_frame(HEADERS, END_HEADERS, 1, _block(POST)))
    events: list[http2.Event] = []
    code = None
    try:
        events = conn.receive_data(b"".join(frames))
    except HTTP2ProtocolError as exc:
        code = exc.error_code
    assert conn.closed == (code is not None)
    assert code is None or isinstance(code, ErrorCode)
    assert all(isinstance(e, http2.Event) for e in events)
