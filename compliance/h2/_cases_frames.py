"""RFC 9113 §6 (frame definitions) and §7 (error codes)."""

from __future__ import annotations

import os

from _cases_streams import open_probe, post_headers
from _client import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ERRORS,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Fail,
    Probe,
    Target,
    raw_frame,
)
from _registry import case
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, SettingsFrame, WindowUpdateFrame

__all__: list[str] = []

MAX_WINDOW = 2**31 - 1


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def _setting(ident: int, value: int) -> bytes:
    return ident.to_bytes(2, "big") + _u32(value)


def _conn_error(t: Target, frame: bytes, code: str) -> str:
    with open_probe(t) as p:
        p.send(frame)
        return p.expect_connection_error(code)


def _served(p: Probe, stream_id: int) -> str:
    status, _ = p.expect_response(stream_id)
    if not status.startswith("2"):
        raise Fail(f"answered {status}, expected a 2xx")
    return f"answered {status}"


# -- §6.1 DATA -------------------------------------------------------------------


@case("http2", "6.1", "Sends DATA on stream 0", "DATA on stream 0 is a connection PROTOCOL_ERROR.")
def data_stream0(t: Target) -> str:
    return _conn_error(t, raw_frame(DATA, 0, 0, b"x"), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.1",
    "Sends DATA on a stream that is neither open nor half-closed (local)",
    "DATA on a stream the client already ended is a STREAM_CLOSED error.",
)
def data_not_open(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(1), raw_frame(DATA, 0, 1, b"x"))
        return p.expect_stream_error(1, "STREAM_CLOSED")


@case(
    "http2",
    "6.1",
    "Sends DATA whose pad length is not less than the payload",
    "Padding as long as the frame payload or longer is a connection PROTOCOL_ERROR.",
)
def data_bad_padding(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(DATA, PADDED | END_STREAM, 1, b"\x06abc"))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.1",
    "Sends padded DATA frames (one all padding)",
    "Padding is removed: a padded request body is accepted.",
)
def data_padded_ok(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            post_headers(p, 1, [("content-length", "4")]),
            raw_frame(DATA, PADDED, 1, b"\x03body" + bytes(3)),
            raw_frame(DATA, PADDED | END_STREAM, 1, b"\x05" + bytes(5)),
        )
        return _served(p, 1)


# -- §6.2 HEADERS ----------------------------------------------------------------


@case(
    "http2",
    "6.2",
    "Sends HEADERS without END_HEADERS, then a PING",
    "Only CONTINUATION of the same stream may follow an open field block: PROTOCOL_ERROR.",
)
def headers_then_ping(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block()
        p.send(p.headers_frame(1, block[:3], end_headers=False), raw_frame(PING, 0, 0, bytes(8)))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.2",
    "Sends HEADERS on stream 0",
    "HEADERS on stream 0 is a connection PROTOCOL_ERROR.",
)
def headers_stream0(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers_frame(0, p.block()))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.2",
    "Sends HEADERS whose pad length is not less than the payload",
    "Padding as long as the frame payload or longer is a connection PROTOCOL_ERROR.",
)
def headers_bad_padding(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block()
        payload = bytes([len(block) + 1]) + block
        p.send(raw_frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, payload))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.2",
    "Sends HEADERS with padding and a priority",
    "A padded HEADERS frame with the PRIORITY flag is a valid request.",
)
def headers_padded_priority(t: Target) -> str:
    with open_probe(t) as p:
        payload = b"\x04" + _u32(0) + b"\x20" + p.block() + bytes(4)
        p.send(raw_frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS | END_STREAM, 1, payload))
        return _served(p, 1)


# -- §6.3 PRIORITY, §6.4 RST_STREAM ---------------------------------------------


@case("http2", "6.3", "Sends PRIORITY on stream 0", "PRIORITY on stream 0 is a PROTOCOL_ERROR.")
def priority_stream0(t: Target) -> str:
    return _conn_error(t, raw_frame(PRIORITY, 0, 0, _u32(1) + b"\x0f"), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.3",
    "Sends a PRIORITY frame of 4 octets",
    "A PRIORITY frame that is not 5 octets long is a stream FRAME_SIZE_ERROR.",
)
def priority_bad_length(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(PRIORITY, 0, 1, _u32(0)))
        return p.expect_stream_error(1, "FRAME_SIZE_ERROR")


@case("http2", "6.4", "Sends RST_STREAM on stream 0", "RST_STREAM on stream 0 is a PROTOCOL_ERROR.")
def rst_stream0(t: Target) -> str:
    return _conn_error(t, raw_frame(RST_STREAM, 0, 0, _u32(8)), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.4",
    "Sends a RST_STREAM frame of 3 octets",
    "A RST_STREAM frame that is not 4 octets long is a connection FRAME_SIZE_ERROR.",
)
def rst_bad_length(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(RST_STREAM, 0, 1, b"\x00\x00\x08"))
        return p.expect_connection_error("FRAME_SIZE_ERROR")


# -- §6.5 SETTINGS ---------------------------------------------------------------


@case(
    "http2",
    "6.5",
    "Sends a SETTINGS ACK with a payload",
    "A SETTINGS frame with ACK and a non-empty payload is a connection FRAME_SIZE_ERROR.",
)
def settings_ack_payload(t: Target) -> str:
    return _conn_error(t, raw_frame(SETTINGS, 0x1, 0, _setting(0x3, 10)), "FRAME_SIZE_ERROR")


@case(
    "http2",
    "6.5",
    "Sends SETTINGS on stream 1",
    "SETTINGS on a stream other than 0 is a connection PROTOCOL_ERROR.",
)
def settings_on_stream(t: Target) -> str:
    return _conn_error(t, raw_frame(SETTINGS, 0, 1, _setting(0x3, 10)), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.5",
    "Sends a SETTINGS frame of 3 octets",
    "A SETTINGS length that is not a multiple of 6 is a connection FRAME_SIZE_ERROR.",
)
def settings_bad_length(t: Target) -> str:
    return _conn_error(t, raw_frame(SETTINGS, 0, 0, b"\x00\x03\x00"), "FRAME_SIZE_ERROR")


@case(
    "http2",
    "6.5.2",
    "SETTINGS_ENABLE_PUSH: sends 2",
    "SETTINGS_ENABLE_PUSH other than 0 or 1 is a connection PROTOCOL_ERROR.",
)
def settings_enable_push(t: Target) -> str:
    return _conn_error(t, raw_frame(SETTINGS, 0, 0, _setting(0x2, 2)), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.5.2",
    "SETTINGS_INITIAL_WINDOW_SIZE: sends 2^31",
    "An initial window over 2^31-1 is a connection FLOW_CONTROL_ERROR.",
)
def settings_window_too_big(t: Target) -> str:
    return _conn_error(
        t, raw_frame(SETTINGS, 0, 0, _setting(0x4, MAX_WINDOW + 1)), "FLOW_CONTROL_ERROR"
    )


@case(
    "http2",
    "6.5.2",
    "SETTINGS_MAX_FRAME_SIZE: sends 16383",
    "SETTINGS_MAX_FRAME_SIZE below 2^14 is a connection PROTOCOL_ERROR.",
)
def settings_frame_size_small(t: Target) -> str:
    return _conn_error(t, raw_frame(SETTINGS, 0, 0, _setting(0x5, 16383)), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.5.2",
    "SETTINGS_MAX_FRAME_SIZE: sends 2^24",
    "SETTINGS_MAX_FRAME_SIZE above 2^24-1 is a connection PROTOCOL_ERROR.",
)
def settings_frame_size_big(t: Target) -> str:
    return _conn_error(t, raw_frame(SETTINGS, 0, 0, _setting(0x5, 2**24)), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.5.2",
    "Sends a SETTINGS parameter of unknown identifier",
    "A setting the server does not know is ignored.",
)
def settings_unknown(t: Target) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(SETTINGS, 0, 0, _setting(0xFF, 1) + _setting(0x7777, 0xFFFFFFFF)))
        return p.expect_alive()


def _first_data(p: Probe, stream_id: int) -> int:
    """The length of the first non-empty DATA frame on ``stream_id``."""
    for frame in p.frames():
        if frame is None:
            raise Fail("the server closed the connection")
        if isinstance(frame, GoAwayFrame):
            raise Fail("the server sent GOAWAY")
        if isinstance(frame, DataFrame) and frame.stream_id == stream_id and frame.data:
            return len(frame.data)
    raise AssertionError("unreachable")


@case(
    "http2",
    "6.5.3",
    "Sends SETTINGS_INITIAL_WINDOW_SIZE twice in one frame (100, then 1)",
    "Settings are applied in the order they appear: the window is 1 octet.",
)
def settings_in_order(t: Target) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(SETTINGS, 0, 0, _setting(0x4, 100) + _setting(0x4, 1)), p.headers(1))
        size = _first_data(p, 1)
        if size > 1:
            raise Fail(f"the server sent {size} octets into a 1-octet window")
        return "1 octet sent"


@case(
    "http2",
    "6.5.3",
    "Sends a SETTINGS frame without ACK",
    "Each SETTINGS frame is acknowledged with a SETTINGS ACK.",
)
def settings_acked(t: Target) -> str:
    with open_probe(t) as p:
        p.send(SettingsFrame(0, {0x3: 100}))
        acks = 0
        for frame in p.frames():
            if frame is None:
                raise Fail("the server closed the connection")
            if isinstance(frame, SettingsFrame) and "ACK" in frame.flags:
                acks += 1
                if acks == 2:  # the handshake's SETTINGS and this one
                    return "both SETTINGS acknowledged"
        raise AssertionError("unreachable")


# -- §6.7 PING, §6.8 GOAWAY -----------------------------------------------------


@case(
    "http2",
    "6.7",
    "Sends a PING",
    "A PING is answered by a PING with ACK and the same 8 octets.",
)
def ping_answered(t: Target) -> str:
    with open_probe(t) as p:
        return p.expect_alive()


@case(
    "http2",
    "6.7",
    "Sends a PING with ACK",
    "A PING ACK is never answered.",
)
def ping_ack_not_answered(t: Target) -> str:
    with open_probe(t) as p:
        stray = os.urandom(8)
        p.send(PingFrame(0, stray, flags=["ACK"]))
        fence = os.urandom(8)
        p.send(PingFrame(0, fence))
        for frame in p.frames():
            if frame is None:
                raise Fail("the server closed the connection")
            if isinstance(frame, PingFrame) and frame.opaque_data == stray:
                raise Fail("the server answered a PING ACK")
            if isinstance(frame, PingFrame) and frame.opaque_data == fence:
                return "not answered"
        raise AssertionError("unreachable")


@case(
    "http2",
    "6.7",
    "Sends a PING on stream 1",
    "PING on a stream other than 0 is a connection PROTOCOL_ERROR.",
)
def ping_on_stream(t: Target) -> str:
    return _conn_error(t, raw_frame(PING, 0, 1, bytes(8)), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.7",
    "Sends a PING of 6 octets",
    "A PING that is not 8 octets long is a connection FRAME_SIZE_ERROR.",
)
def ping_bad_length(t: Target) -> str:
    return _conn_error(t, raw_frame(PING, 0, 0, bytes(6)), "FRAME_SIZE_ERROR")


@case(
    "http2",
    "6.8",
    "Sends GOAWAY on stream 1",
    "GOAWAY on a stream other than 0 is a connection PROTOCOL_ERROR.",
)
def goaway_on_stream(t: Target) -> str:
    return _conn_error(t, raw_frame(GOAWAY, 0, 1, _u32(0) + _u32(0)), "PROTOCOL_ERROR")


# -- §6.9 WINDOW_UPDATE and flow control --------------------------------------------


@case(
    "http2",
    "6.9",
    "Sends WINDOW_UPDATE with increment 0 on the connection",
    "A 0 increment on the connection window is a connection PROTOCOL_ERROR.",
)
def window_zero_connection(t: Target) -> str:
    return _conn_error(t, raw_frame(WINDOW_UPDATE, 0, 0, _u32(0)), "PROTOCOL_ERROR")


@case(
    "http2",
    "6.9",
    "Sends WINDOW_UPDATE with increment 0 on a stream",
    "A 0 increment on a stream window is a stream PROTOCOL_ERROR.",
)
def window_zero_stream(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(WINDOW_UPDATE, 0, 1, _u32(0)))
        return p.expect_stream_error(1, "PROTOCOL_ERROR")


@case(
    "http2",
    "6.9",
    "Sends a WINDOW_UPDATE frame of 3 octets",
    "A WINDOW_UPDATE that is not 4 octets long is a connection FRAME_SIZE_ERROR.",
)
def window_bad_length(t: Target) -> str:
    return _conn_error(t, raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), "FRAME_SIZE_ERROR")


@case(
    "http2",
    "6.9.1",
    "Sets the initial window to 1 octet and sends a request",
    "The server never sends more flow-controlled data than the window allows.",
)
def window_one_octet(t: Target) -> str:
    with open_probe(t, {0x4: 1}) as p:
        p.send(p.headers(1))
        size = _first_data(p, 1)
        if size > 1:
            raise Fail(f"the server sent {size} octets into a 1-octet window")
        return "1 octet sent"


@case(
    "http2",
    "6.9.1",
    "Sends WINDOW_UPDATEs taking the connection window over 2^31-1",
    "A connection window over 2^31-1 is a connection FLOW_CONTROL_ERROR.",
)
def window_overflow_connection(t: Target) -> str:
    with open_probe(t) as p:
        p.send(WindowUpdateFrame(0, MAX_WINDOW), WindowUpdateFrame(0, MAX_WINDOW))
        return p.expect_connection_error("FLOW_CONTROL_ERROR")


@case(
    "http2",
    "6.9.1",
    "Sends WINDOW_UPDATEs taking a stream window over 2^31-1",
    "A stream window over 2^31-1 is a stream FLOW_CONTROL_ERROR.",
)
def window_overflow_stream(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            post_headers(p, 1), WindowUpdateFrame(1, MAX_WINDOW), WindowUpdateFrame(1, MAX_WINDOW)
        )
        return p.expect_stream_error(1, "FLOW_CONTROL_ERROR")


@case(
    "http2",
    "6.9.2",
    "Raises SETTINGS_INITIAL_WINDOW_SIZE from 0 to 1 after a request",
    "A new initial window size changes the windows of streams already open.",
)
def window_setting_applies(t: Target) -> str:
    with open_probe(t, {0x4: 0}) as p:
        p.send(p.headers(1))
        p.send(SettingsFrame(0, {0x4: 1}))
        size = _first_data(p, 1)
        if size > 1:
            raise Fail(f"the server sent {size} octets into a 1-octet window")
        return "1 octet sent after the window opened"


@case(
    "http2",
    "6.9.2",
    "Shrinks the initial window below what is in flight, then opens it by 4",
    "A window can go negative; data resumes only once it is back above 0 (here 1 octet).",
)
def window_negative(t: Target) -> str:
    with open_probe(t, {0x4: 5}) as p:
        p.send(p.headers(1))
        sent = 0
        while sent < 5:
            sent += _first_data(p, 1)
        # The window is now 0; at 2 it becomes 2 - 5 = -3, and +4 takes it to 1.
        p.send(SettingsFrame(0, {0x4: 2}), WindowUpdateFrame(1, 4))
        size = _first_data(p, 1)
        if size > 1:
            raise Fail(f"the server sent {size} octets; the window was 1 octet")
        return "1 octet sent"


# -- §6.10 CONTINUATION -----------------------------------------------------------


@case(
    "http2",
    "6.10",
    "Sends a field block in HEADERS and several CONTINUATION frames",
    "A field block split over CONTINUATION frames is one request.",
)
def continuation_ok(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block([("x-probe", "a" * 40), ("x-other", "b" * 40)])
        third = len(block) // 3
        p.send(
            p.headers_frame(1, block[:third], end_headers=False),
            raw_frame(CONTINUATION, 0, 1, block[third : 2 * third]),
            raw_frame(CONTINUATION, END_HEADERS, 1, block[2 * third :]),
        )
        return _served(p, 1)


@case(
    "http2",
    "6.10",
    "Sends CONTINUATION without END_HEADERS, then DATA",
    "A field block ends only with END_HEADERS: a DATA inside it is a PROTOCOL_ERROR.",
)
def continuation_then_data(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block(method="POST")
        p.send(
            p.headers_frame(1, block[:2], end_stream=False, end_headers=False),
            raw_frame(CONTINUATION, 0, 1, block[2:]),
            raw_frame(DATA, END_STREAM, 1, b"x"),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.10",
    "Sends CONTINUATION on stream 0",
    "CONTINUATION on stream 0 is a connection PROTOCOL_ERROR.",
)
def continuation_stream0(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block()
        p.send(
            p.headers_frame(1, block[:2], end_headers=False),
            raw_frame(CONTINUATION, END_HEADERS, 0, block[2:]),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.10",
    "Sends CONTINUATION after HEADERS with END_HEADERS",
    "CONTINUATION must follow a frame without END_HEADERS: otherwise PROTOCOL_ERROR.",
)
def continuation_after_end(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block(method="POST")
        p.send(
            p.headers_frame(1, block, end_stream=False),
            raw_frame(CONTINUATION, END_HEADERS, 1, p.encoder.encode([("x-late", "1")])),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.10",
    "Sends CONTINUATION after a CONTINUATION with END_HEADERS",
    "Once END_HEADERS is set, a further CONTINUATION is a PROTOCOL_ERROR.",
)
def continuation_after_continuation(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block(method="POST")
        p.send(
            p.headers_frame(1, block[:2], end_stream=False, end_headers=False),
            raw_frame(CONTINUATION, END_HEADERS, 1, block[2:]),
            raw_frame(CONTINUATION, END_HEADERS, 1, p.encoder.encode([("x-late", "1")])),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "6.10",
    "Sends CONTINUATION after DATA",
    "CONTINUATION after a DATA frame is a PROTOCOL_ERROR.",
)
def continuation_after_data(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            post_headers(p, 1),
            raw_frame(DATA, 0, 1, b"x"),
            raw_frame(CONTINUATION, END_HEADERS, 1, p.encoder.encode([("x-late", "1")])),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


# -- §7 Error codes -------------------------------------------------------------


@case(
    "http2",
    "7",
    "Sends RST_STREAM with an unknown error code",
    "Unknown error codes trigger no special behaviour.",
)
def rst_unknown_code(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(RST_STREAM, 0, 1, _u32(0xFF)))
        p.send(p.headers(3))
        return _served(p, 3)


def _after_goaway(t: Target, code: int) -> str:
    """What the server does with a PING that follows the client's GOAWAY with ``code``."""
    with open_probe(t) as p:
        payload = os.urandom(8)
        # One write, so that the server reads both at once whatever its timing.
        p.send(raw_frame(GOAWAY, 0, 0, _u32(0) + _u32(code)), PingFrame(0, payload))
        for frame in p.frames():
            if frame is None:
                return "closed the connection"
            if isinstance(frame, GoAwayFrame):
                return f"sent GOAWAY {ERRORS.get(frame.error_code, frame.error_code)}"
            if isinstance(frame, PingFrame) and frame.opaque_data == payload:
                return "answered the PING"
        raise AssertionError("unreachable")


@case(
    "http2",
    "7",
    "Sends GOAWAY with an unknown error code, then a PING",
    "An unknown error code means nothing special: the server acts as for NO_ERROR.",
)
def goaway_unknown_code(t: Target) -> str:
    baseline = _after_goaway(t, 0x0)
    unknown = _after_goaway(t, 0xFF)
    if unknown != baseline:
        raise Fail(f"after GOAWAY NO_ERROR it {baseline}; after code 0xff it {unknown}")
    return f"{unknown}, as for NO_ERROR"
