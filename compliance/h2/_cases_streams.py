"""RFC 9113 §3 (starting HTTP/2), §4 (frames) and §5 (streams and multiplexing)."""

from __future__ import annotations

import os
import time

from _client import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    RST_STREAM,
    WINDOW_UPDATE,
    Fail,
    Probe,
    Skip,
    Target,
    literal,
    raw_frame,
)
from _registry import case
from hyperframe.frame import GoAwayFrame, PingFrame, SettingsFrame

__all__ = ["open_probe", "post_headers"]

UNKNOWN_TYPE = 0xBF  # no frame type registered at this value


def open_probe(target: Target, settings: dict[int, int] | None = None) -> Probe:
    """A connection past the preface exchange."""
    probe = Probe(target)
    try:
        probe.handshake(settings)
    except BaseException:
        probe.close()
        raise
    return probe


def post_headers(probe: Probe, stream_id: int, extra: list[tuple[str, str]] | None = None) -> bytes:
    """HEADERS opening a POST whose body is still to come (the stream stays open)."""
    return probe.headers(stream_id, extra or [], method="POST", end_stream=False)


# -- §3 Starting HTTP/2 --------------------------------------------------------


@case(
    "http2",
    "3.4",
    "Sends the client connection preface",
    "The server's connection preface is a SETTINGS frame, the first frame it sends.",
)
def preface_ok(t: Target) -> str:
    with open_probe(t) as p:
        return p.expect_alive()


@case(
    "http2",
    "3.4",
    "Sends an invalid connection preface",
    "An invalid client preface is a connection error: the server closes the connection.",
)
def preface_invalid(t: Target) -> str:
    with Probe(t) as p:
        p.send(PREFACE[:-8] + b"XX\r\n\r\n\r\n", SettingsFrame(0))
        deadline = time.monotonic() + t.timeout
        while time.monotonic() < deadline:
            try:
                if p.read_frame(deadline - time.monotonic()) is None:
                    return "connection closed"
            except Fail:
                break
            except ValueError:
                continue  # an HTTP/1.1 error answer is not a frame; what counts is the close
        raise Fail(f"the connection was still open {t.timeout:g} s after the bad preface")


# -- §4 HTTP frames --------------------------------------------------------------


@case(
    "http2",
    "4.1",
    "Sends a frame of an unknown type",
    "A frame of a type the server does not know is ignored and discarded.",
)
def unknown_type(t: Target) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(UNKNOWN_TYPE, 0, 0, b"probe"), raw_frame(UNKNOWN_TYPE, 0xFF, 1, b"x"))
        return p.expect_alive()


@case(
    "http2",
    "4.1",
    "Sends a PING with flags that PING does not define",
    "Undefined flags are ignored: the PING is still answered with an ACK.",
)
def undefined_flags(t: Target) -> str:
    with open_probe(t) as p:
        payload = os.urandom(8)
        p.send(raw_frame(PING, 0x16 | 0xC0, 0, payload))
        for frame in p.frames():
            if frame is None:
                raise Fail("the server closed the connection")
            if isinstance(frame, GoAwayFrame):
                raise Fail("the server sent GOAWAY")
            if isinstance(frame, PingFrame) and frame.opaque_data == payload:
                if "ACK" not in frame.flags:
                    raise Fail("the server echoed the PING without the ACK flag")
                return "PING answered"
        raise AssertionError("unreachable")


@case(
    "http2",
    "4.1",
    "Sends HEADERS with the reserved bit of the stream identifier set",
    "The reserved bit is ignored: the request is served as stream 1.",
)
def reserved_bit(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers_frame(0x80000001, p.block()))
        status, _ = p.expect_response(1)
        return f"answered {status}"


@case(
    "http2",
    "4.2",
    "Sends a DATA frame of 2^14 octets",
    "Every endpoint can receive and process frames of up to 2^14 octets.",
)
def data_16k(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(DATA, END_STREAM, 1, b"x" * 16384))
        status, _ = p.expect_response(1)
        return f"answered {status}"


@case(
    "http2",
    "4.2",
    "Sends a DATA frame larger than the server's SETTINGS_MAX_FRAME_SIZE",
    "A frame over SETTINGS_MAX_FRAME_SIZE is answered with FRAME_SIZE_ERROR.",
)
def data_too_big(t: Target) -> str:
    with open_probe(t) as p:
        size = p.server_settings.get(0x5, 16384) + 1
        p.send(post_headers(p, 1), raw_frame(DATA, END_STREAM, 1, b"x" * size))
        return p.expect_stream_error(1, "FRAME_SIZE_ERROR")


@case(
    "http2",
    "4.2",
    "Sends a HEADERS frame larger than the server's SETTINGS_MAX_FRAME_SIZE",
    "An oversized frame that carries a field block is a connection FRAME_SIZE_ERROR.",
)
def headers_too_big(t: Target) -> str:
    with open_probe(t) as p:
        size = p.server_settings.get(0x5, 16384) + 1
        base = p.base_fields()
        filler = size - len(base)
        block = base + literal(b"x-pad", b"a" * filler)
        block = base + literal(b"x-pad", b"a" * (filler - (len(block) - size)))
        p.send(p.headers_frame(1, block))
        return p.expect_connection_error("FRAME_SIZE_ERROR")


@case(
    "http2",
    "4.3",
    "Sends a header block that cannot be decoded",
    "A field block that fails to decode is a connection COMPRESSION_ERROR.",
)
def bad_block(t: Target) -> str:
    with open_probe(t) as p:
        # A literal with incremental indexing whose name claims 5 octets but has 2.
        p.send(p.headers_frame(1, p.base_fields() + b"\x40\x05ab"))
        return p.expect_connection_error("COMPRESSION_ERROR")


@case(
    "http2",
    "4.3",
    "Sends a PRIORITY frame in the middle of a header block",
    "A field block is one contiguous sequence of frames: anything else is a PROTOCOL_ERROR.",
)
def priority_inside_block(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block()
        p.send(
            p.headers_frame(1, block[:3], end_headers=False),
            raw_frame(PRIORITY, 0, 1, bytes(4) + b"\x0f"),
            raw_frame(CONTINUATION, END_HEADERS, 1, block[3:]),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "4.3",
    "Sends HEADERS on another stream in the middle of a header block",
    "No frame of another stream may interleave a field block: PROTOCOL_ERROR.",
)
def headers_inside_block(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block()
        p.send(
            p.headers_frame(1, block[:3], end_headers=False),
            p.headers_frame(3, p.base_fields()),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


# -- §5.1 Stream states ------------------------------------------------------


def _idle(t: Target, frame: bytes) -> str:
    with open_probe(t) as p:
        p.send(frame)
        return p.expect_connection_error("PROTOCOL_ERROR")


@case("http2", "5.1", "idle: sends DATA", "DATA on an idle stream is a connection PROTOCOL_ERROR.")
def idle_data(t: Target) -> str:
    return _idle(t, raw_frame(DATA, END_STREAM, 1, b"x"))


@case(
    "http2",
    "5.1",
    "idle: sends RST_STREAM",
    "RST_STREAM on an idle stream is a connection PROTOCOL_ERROR.",
)
def idle_rst(t: Target) -> str:
    return _idle(t, raw_frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")))


@case(
    "http2",
    "5.1",
    "idle: sends WINDOW_UPDATE",
    "WINDOW_UPDATE on an idle stream is a connection PROTOCOL_ERROR.",
)
def idle_window_update(t: Target) -> str:
    return _idle(t, raw_frame(WINDOW_UPDATE, 0, 1, (100).to_bytes(4, "big")))


@case(
    "http2",
    "5.1",
    "idle: sends CONTINUATION",
    "CONTINUATION on an idle stream is a connection PROTOCOL_ERROR.",
)
def idle_continuation(t: Target) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(CONTINUATION, END_HEADERS, 1, p.block()))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "5.1",
    "idle: sends PRIORITY",
    "PRIORITY is allowed on an idle stream; a later request on a lower stream is served.",
)
def idle_priority(t: Target) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(PRIORITY, 0, 9, bytes(4) + b"\x0f"), p.headers(3))
        status, _ = p.expect_response(3)
        return f"answered {status}"


@case(
    "http2",
    "5.1",
    "half-closed (remote): sends DATA",
    "After the client's END_STREAM, more DATA on the stream is a STREAM_CLOSED error.",
)
def half_closed_data(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(1), raw_frame(DATA, END_STREAM, 1, b"x"))
        return p.expect_stream_error(1, "STREAM_CLOSED")


@case(
    "http2",
    "5.1",
    "half-closed (remote): sends HEADERS",
    "After the client's END_STREAM, a new HEADERS on the stream is a STREAM_CLOSED error.",
)
def half_closed_headers(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(1), p.headers(1))
        return p.expect_stream_error(1, "STREAM_CLOSED", "PROTOCOL_ERROR")


@case(
    "http2",
    "5.1",
    "half-closed (remote): sends CONTINUATION",
    "A CONTINUATION after a complete field block is an error (STREAM_CLOSED or PROTOCOL_ERROR).",
)
def half_closed_continuation(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(1), raw_frame(CONTINUATION, END_HEADERS, 1, b"\x82"))
        return p.expect_stream_error(1, "STREAM_CLOSED", "PROTOCOL_ERROR")


@case(
    "http2",
    "5.1",
    "half-closed (remote): sends WINDOW_UPDATE, PRIORITY and RST_STREAM",
    "These three frames are allowed on a half-closed (remote) stream.",
)
def half_closed_allowed(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            p.headers(1),
            raw_frame(WINDOW_UPDATE, 0, 1, (100).to_bytes(4, "big")),
            raw_frame(PRIORITY, 0, 1, bytes(4) + b"\x0f"),
            raw_frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")),
        )
        return p.expect_alive()


def _after_reset(t: Target, frame: bytes, *codes: str) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")), frame)
        return p.expect_stream_error(1, *codes)


@case(
    "http2",
    "5.1",
    "closed: sends DATA after RST_STREAM",
    "A frame other than PRIORITY after the client's RST_STREAM is a STREAM_CLOSED error.",
)
def closed_data_after_rst(t: Target) -> str:
    return _after_reset(t, raw_frame(DATA, END_STREAM, 1, b"x"), "STREAM_CLOSED")


@case(
    "http2",
    "5.1",
    "closed: sends HEADERS after RST_STREAM",
    "HEADERS on a stream the client reset is an error (STREAM_CLOSED, or reused id).",
)
def closed_headers_after_rst(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")))
        p.send(p.headers(1))
        return p.expect_stream_error(1, "STREAM_CLOSED", "PROTOCOL_ERROR")


@case(
    "http2",
    "5.1",
    "closed: sends CONTINUATION after RST_STREAM",
    "A CONTINUATION on a reset stream is an error (STREAM_CLOSED or PROTOCOL_ERROR).",
)
def closed_continuation_after_rst(t: Target) -> str:
    return _after_reset(
        t, raw_frame(CONTINUATION, END_HEADERS, 1, b"\x82"), "STREAM_CLOSED", "PROTOCOL_ERROR"
    )


@case(
    "http2",
    "5.1",
    "closed: sends DATA after the response ended",
    "DATA on a stream closed by END_STREAM both ways is a STREAM_CLOSED error.",
)
def closed_data(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(1))
        p.expect_response(1)
        p.send(raw_frame(DATA, END_STREAM, 1, b"x"))
        return p.expect_stream_error(1, "STREAM_CLOSED")


@case(
    "http2",
    "5.1",
    "closed: sends HEADERS after the response ended",
    "A stream identifier cannot be reused: STREAM_CLOSED or PROTOCOL_ERROR.",
)
def closed_headers(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(1))
        p.expect_response(1)
        p.send(p.headers(1))
        return p.expect_stream_error(1, "STREAM_CLOSED", "PROTOCOL_ERROR")


@case(
    "http2",
    "5.1",
    "closed: sends PRIORITY after the response ended",
    "PRIORITY is allowed on a closed stream.",
)
def closed_priority(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(1))
        p.expect_response(1)
        p.send(raw_frame(PRIORITY, 0, 1, bytes(4) + b"\x0f"))
        return p.expect_alive()


# -- §5.1.1 Stream identifiers, §5.1.2 concurrency --------------------------------


@case(
    "http2",
    "5.1.1",
    "Sends HEADERS on an even-numbered stream",
    "Client streams are odd-numbered: an even one is a connection PROTOCOL_ERROR.",
)
def even_stream(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(2))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "5.1.1",
    "Sends HEADERS on a stream numbered below the previous one",
    "New stream identifiers only increase: a lower one is a connection PROTOCOL_ERROR.",
)
def decreasing_stream(t: Target) -> str:
    with open_probe(t) as p:
        p.send(p.headers(5))
        p.expect_response(5)
        p.send(p.headers(3))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "5.1.2",
    "Opens one stream more than SETTINGS_MAX_CONCURRENT_STREAMS",
    "A stream over the advertised limit is refused: PROTOCOL_ERROR or REFUSED_STREAM.",
)
def over_concurrency(t: Target) -> str:
    with open_probe(t) as p:
        limit = p.server_settings.get(0x3)
        if limit is None:
            raise Skip("the server advertises no SETTINGS_MAX_CONCURRENT_STREAMS")
        if limit > 1000:
            raise Skip(f"SETTINGS_MAX_CONCURRENT_STREAMS is {limit}; the probe stops at 1000")
        p.send(*(post_headers(p, 1 + 2 * i) for i in range(limit + 1)))
        last = 1 + 2 * limit
        return p.expect_stream_error(last, "PROTOCOL_ERROR", "REFUSED_STREAM")


# -- §5.3 Priority, §5.4 error handling, §5.5 extensions ---------------------------


@case(
    "http2",
    "5.3.1",
    "Sends HEADERS whose priority depends on its own stream",
    "A stream cannot depend on itself (RFC 7540 §5.3.1): stream PROTOCOL_ERROR.",
)
def headers_self_dependency(t: Target) -> str:
    with open_probe(t) as p:
        block = (1).to_bytes(4, "big") + b"\x0f" + p.block()
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1, block))
        return p.expect_stream_error(1, "PROTOCOL_ERROR")


@case(
    "http2",
    "5.3.1",
    "Sends PRIORITY that makes a stream depend on itself",
    "A stream cannot depend on itself (RFC 7540 §5.3.1): stream PROTOCOL_ERROR.",
)
def priority_self_dependency(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1), raw_frame(PRIORITY, 0, 1, (1).to_bytes(4, "big") + b"\x0f"))
        return p.expect_stream_error(1, "PROTOCOL_ERROR")


@case(
    "http2",
    "5.4.1",
    "Sends a PING on a stream (a connection error)",
    "After a connection error the server closes the TCP connection (GOAWAY first).",
)
def connection_error_closes(t: Target) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(PING, 0, 1, bytes(8)))
        goaway = ""
        for frame in p.frames():
            if frame is None:
                return f"{goaway or 'no GOAWAY'}, then connection closed"
            if isinstance(frame, GoAwayFrame):
                goaway = "GOAWAY"
        raise AssertionError("unreachable")


@case(
    "http2",
    "5.5",
    "Sends an extension frame with a payload",
    "Unknown extension frames are ignored.",
)
def extension_frame(t: Target) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(UNKNOWN_TYPE, 0, 0, os.urandom(100)))
        p.send(p.headers(1))
        status, _ = p.expect_response(1)
        return f"ignored; request answered {status}"


@case(
    "http2",
    "5.5",
    "Sends an extension frame in the middle of a header block",
    "An extension frame inside a field block is a connection PROTOCOL_ERROR.",
)
def extension_inside_block(t: Target) -> str:
    with open_probe(t) as p:
        block = p.block()
        p.send(
            p.headers_frame(1, block[:3], end_headers=False),
            raw_frame(UNKNOWN_TYPE, 0, 1, b"x"),
            raw_frame(CONTINUATION, END_HEADERS, 1, block[3:]),
        )
        return p.expect_connection_error("PROTOCOL_ERROR")
