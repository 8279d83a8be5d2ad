"""HTTP/2's wire and its control frames, for ``tidings.wire.http2``.

The wire: frame types, flags, SETTINGS identifiers, RFC 9113's defaults and bounds,
the frame header's layout and stream states, which the connection core imports.
The control frames:
PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY and WINDOW_UPDATE (RFC 9113
section 6): each is a function of the connection, the frame's flags, stream id and
payload, called from the connection's table of handlers by frame type, as its own
DATA, HEADERS and CONTINUATION handlers are. They check the frame, update the
connection's state and queue events and replies on it.

What must not go here: the frame loop, stream bookkeeping and sending (the
connection's own methods), and anything with I/O.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from tidings.wire.http2_events import (
    ConnectionTerminated,
    ErrorCode,
    PingAcknowledged,
    SettingsChanged,
    StreamReset,
    WindowUpdated,
)

if TYPE_CHECKING:
    from tidings.wire.http2 import HTTP2Connection

__all__ = [
    "ACK",
    "CLOSED_KEPT",
    "CONTINUATION",
    "DATA",
    "DEFAULT_FRAME_SIZE",
    "DEFAULT_WINDOW",
    "ENABLE_CONNECT_PROTOCOL",
    "ENABLE_PUSH",
    "ENDED",
    "END_HEADERS",
    "END_STREAM",
    "GOAWAY",
    "HEAD",
    "HEADERS",
    "HEADER_TABLE_SIZE",
    "INITIAL_WINDOW_SIZE",
    "LARGEST_FRAME_SIZE",
    "LOCAL_CLOSED",
    "MAX_CONCURRENT_STREAMS",
    "MAX_CONTINUATIONS",
    "MAX_FRAME_SIZE",
    "MAX_HEADER_LIST_SIZE",
    "MAX_WINDOW",
    "OPEN",
    "PADDED",
    "PING",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "REMOTE_CLOSED",
    "RESET_BY_CLIENT",
    "RESET_BY_US",
    "RST_STREAM",
    "SETTING",
    "SETTINGS",
    "U32",
    "WINDOW_UPDATE",
    "frame",
    "on_goaway",
    "on_ping",
    "on_priority",
    "on_push_promise",
    "on_rst_stream",
    "on_settings",
    "on_window_update",
    "pack_head",
    "settings_acknowledged",
    "unpack_head",
]

# -- the wire (also what tidings.wire.http2 uses) -----------------------------------

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
# Flags.
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# SETTINGS identifiers (section 6.5.2; RFC 8441 section 3 for 0x8).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

DEFAULT_WINDOW: Final = 65535  # section 6.9.2
DEFAULT_FRAME_SIZE: Final = 16384  # section 4.2
LARGEST_FRAME_SIZE: Final = (1 << 24) - 1
MAX_WINDOW: Final = (1 << 31) - 1  # section 6.9.1
# CONTINUATION frames one header block may have: empty ones would grow nothing else
# (CVE-2024-27316 class). A block at the largest list size in frames of the smallest
# size needs a handful.
MAX_CONTINUATIONS: Final = 128
# Closed streams remembered for late frames (section 5.1): at most twice this many.
CLOSED_KEPT: Final = 1024

HEAD: Final = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
pack_head = HEAD.pack
unpack_head = HEAD.unpack_from
U32: Final = struct.Struct(">L")
SETTING: Final = struct.Struct(">HL")

# Stream states (section 5.1): what is still open. Closed streams are not in _streams.
OPEN, REMOTE_CLOSED, LOCAL_CLOSED = 0, 1, 2
# How a remembered stream closed.
RESET_BY_US, RESET_BY_CLIENT, ENDED = 0, 1, 2


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame on the wire (RFC 9113 section 4.1)."""
    n = len(payload)
    return pack_head(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


# -- the control frames ---------------------------------------------------------------


def on_priority(conn: HTTP2Connection, flags: int, sid: int, payload: bytes) -> None:
    # Section 6.3; priority signals themselves are ignored (section 5.3.2).
    if not sid:
        conn._fail(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
    if len(payload) != 5:
        conn._stream_error(sid, ErrorCode.FRAME_SIZE_ERROR)
    elif U32.unpack_from(payload)[0] & MAX_WINDOW == sid:
        conn._stream_error(sid, ErrorCode.PROTOCOL_ERROR)


def on_rst_stream(conn: HTTP2Connection, flags: int, sid: int, payload: bytes) -> None:
    # Section 6.4.
    if not sid:
        conn._fail(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
    if len(payload) != 4:
        conn._fail(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM not of 4 octets")
    conn.resets += 1
    if conn._streams.pop(sid, None) is None:
        if conn._idle(sid):
            conn._fail(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        return
    conn._remember(sid, RESET_BY_CLIENT)
    conn._events.append(StreamReset(sid, U32.unpack(payload)[0], True))


def on_settings(conn: HTTP2Connection, flags: int, sid: int, payload: bytes) -> None:
    # Section 6.5.
    if sid:
        conn._fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
    if flags & ACK:
        if payload:
            conn._fail(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
        settings_acknowledged(conn)
        return
    if len(payload) % 6:
        conn._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 octets")
    conn.control += 1
    changed: dict[int, int] = {}
    for at in range(0, len(payload), 6):
        ident, value = SETTING.unpack_from(payload, at)
        if ident == INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                conn._fail(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too big")
            delta = value - conn._remote_initial
            conn._remote_initial = value
            for stream in conn._streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    conn._fail(ErrorCode.FLOW_CONTROL_ERROR, "a stream window over 2**31-1")
        elif ident == MAX_FRAME_SIZE:
            if not DEFAULT_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
                conn._fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            conn.max_outbound_frame_size = value
        elif ident in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL):
            if value > 1:
                conn._fail(ErrorCode.PROTOCOL_ERROR, f"SETTINGS value {value} for a flag")
        elif ident == HEADER_TABLE_SIZE:
            conn.encoder.set_max_table_size(value)
        changed[ident] = value
    conn.remote_settings.update(changed)
    conn._out.append(frame(SETTINGS, ACK, 0))
    conn._events.append(SettingsChanged(changed))


def settings_acknowledged(conn: HTTP2Connection) -> None:
    """Our SETTINGS apply from their ACK on (section 6.5.3): the stream windows."""
    delta = conn._pending_initial - conn._local_initial
    if delta:
        conn._local_initial = conn._pending_initial
        for stream in conn._streams.values():
            stream.recv_window += delta


def on_push_promise(conn: HTTP2Connection, flags: int, sid: int, payload: bytes) -> None:
    # Section 8.4: a client cannot push.
    conn._fail(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")


def on_ping(conn: HTTP2Connection, flags: int, sid: int, payload: bytes) -> None:
    # Section 6.7.
    if sid:
        conn._fail(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
    if len(payload) != 8:
        conn._fail(ErrorCode.FRAME_SIZE_ERROR, "PING not of 8 octets")
    if flags & ACK:
        conn._events.append(PingAcknowledged(payload))
    else:
        conn.control += 1
        conn._out.append(frame(PING, ACK, 0, payload))


def on_goaway(conn: HTTP2Connection, flags: int, sid: int, payload: bytes) -> None:
    # Section 6.8.
    if sid:
        conn._fail(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
    if len(payload) < 8:
        conn._fail(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 octets")
    last = U32.unpack_from(payload)[0] & MAX_WINDOW
    code = U32.unpack_from(payload, 4)[0]
    conn._events.append(ConnectionTerminated(code, last, payload[8:]))


def on_window_update(conn: HTTP2Connection, flags: int, sid: int, payload: bytes) -> None:
    # Section 6.9.
    if len(payload) != 4:
        conn._fail(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE not of 4 octets")
    increment = U32.unpack(payload)[0] & MAX_WINDOW
    if not sid:
        if not increment:
            conn._fail(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
        conn._send_window += increment
        if conn._send_window > MAX_WINDOW:
            conn._fail(ErrorCode.FLOW_CONTROL_ERROR, "the connection window over 2**31-1")
        conn._events.append(WindowUpdated(0))
        return
    stream = conn._streams.get(sid)
    if stream is None:
        if conn._idle(sid):
            conn._fail(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        return  # a closed stream: it may have been sent before the client saw the end
    if not increment:
        conn._stream_error(sid, ErrorCode.PROTOCOL_ERROR)
        return
    stream.send_window += increment
    if stream.send_window > MAX_WINDOW:
        conn._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR)
        return
    conn._events.append(WindowUpdated(sid))
