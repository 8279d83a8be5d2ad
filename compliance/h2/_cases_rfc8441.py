"""RFC 8441: WebSocket over HTTP/2 (extended CONNECT).

Skipped unless the server advertises SETTINGS_ENABLE_CONNECT_PROTOCOL = 1. The
WebSocket helpers here (``websocket_connect``, ``ws_frame``, ``read_ws_message``) are
also what the HTTP/2 benchmark's echo client uses.
"""

from __future__ import annotations

import os

from _cases_streams import open_probe
from _client import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    SETTINGS,
    Fail,
    Probe,
    Skip,
    Target,
    literal,
    raw_frame,
)
from _registry import case
from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame, WindowUpdateFrame

__all__ = ["ENABLE_CONNECT_PROTOCOL", "read_ws_message", "websocket_connect", "ws_frame"]

ENABLE_CONNECT_PROTOCOL = 0x8  # RFC 8441 §3


def _extended_probe(t: Target) -> Probe:
    p = open_probe(t)
    if p.server_settings.get(ENABLE_CONNECT_PROTOCOL) != 1:
        p.close()
        raise Skip("the server does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL")
    return p


def websocket_connect(p: Probe, stream_id: int) -> bytes:
    """HEADERS of an extended CONNECT for a WebSocket (RFC 8441 §4, §5)."""
    block = p.encoder.encode(
        [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https" if p.target.tls else "http"),
            (":path", p.target.path),
            (":authority", f"{p.target.host}:{p.target.port}"),
            ("sec-websocket-version", "13"),
        ]
    )
    return raw_frame(HEADERS, END_HEADERS, stream_id, block)


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked client frame (RFC 6455 §5.2; masking still applies under RFC 8441)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def _parse_ws(buffer: bytearray) -> tuple[int, bytes] | None:
    """Take one whole unmasked server frame off ``buffer``: (opcode, payload)."""
    if len(buffer) < 2:
        return None
    n, offset = buffer[1] & 0x7F, 2
    if n == 126:
        n, offset = int.from_bytes(buffer[2:4], "big"), 4
    elif n == 127:
        n, offset = int.from_bytes(buffer[2:10], "big"), 10
    if len(buffer) < offset + n:
        return None
    opcode, payload = buffer[0] & 0x0F, bytes(buffer[offset : offset + n])
    del buffer[: offset + n]
    return opcode, payload


def read_ws_message(p: Probe, stream_id: int, buffer: bytearray) -> tuple[int, bytes]:
    """The next unfragmented server frame on ``stream_id``: (opcode, payload)."""
    while (message := _parse_ws(buffer)) is None:
        frame = p.read_frame()
        if frame is None:
            raise Fail("the server closed the connection")
        if isinstance(frame, GoAwayFrame | RstStreamFrame):
            raise Fail(f"the server sent {type(frame).__name__} {frame.error_code}")
        if isinstance(frame, DataFrame) and frame.stream_id == stream_id:
            buffer += frame.data
            if frame.flow_controlled_length:
                n = frame.flow_controlled_length
                p.send(WindowUpdateFrame(0, n), WindowUpdateFrame(stream_id, n))
    return message


def wait_accepted(p: Probe, stream_id: int) -> str:
    """The status the server answered the extended CONNECT with."""
    for frame in p.frames():
        if frame is None:
            raise Fail("the server closed the connection")
        if isinstance(frame, GoAwayFrame | RstStreamFrame):
            raise Fail(f"the server sent {type(frame).__name__} {frame.error_code}")
        status = p.status_of(frame) if frame.stream_id == stream_id else ""
        if status:
            return status
    raise AssertionError("unreachable")


@case(
    "rfc8441",
    "3",
    "Sends SETTINGS_ENABLE_CONNECT_PROTOCOL = 2",
    "A value other than 0 or 1 is a connection PROTOCOL_ERROR.",
)
def setting_value(t: Target) -> str:
    with _extended_probe(t) as p:
        p.send(
            raw_frame(
                SETTINGS, 0, 0, ENABLE_CONNECT_PROTOCOL.to_bytes(2, "big") + bytes(3) + b"\x02"
            )
        )
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "rfc8441",
    "4",
    "Opens a WebSocket with an extended CONNECT and echoes a message",
    "An accepted extended CONNECT gets a 2xx, then the stream carries WebSocket frames.",
)
def websocket_echo(t: Target) -> str:
    with _extended_probe(t) as p:
        p.send(websocket_connect(p, 1))
        status = wait_accepted(p, 1)
        if not status.startswith("2"):
            raise Fail(f"the extended CONNECT was answered {status}")
        p.send(raw_frame(DATA, 0, 1, ws_frame(b"h2-probe")))
        opcode, payload = read_ws_message(p, 1, bytearray())
        if (opcode, payload) != (0x1, b"h2-probe"):
            raise Fail(f"echo came back as opcode {opcode} {payload!r}")
        p.send(raw_frame(DATA, END_STREAM, 1, ws_frame(b"\x03\xe8", 0x8)))
        return f"answered {status}; message echoed"


@case(
    "rfc8441",
    "4",
    "Sends :protocol on a GET",
    ":protocol belongs to CONNECT only: on another method the request is malformed.",
)
def protocol_on_get(t: Target) -> str:
    with _extended_probe(t) as p:
        block = p.base_fields() + literal(b":protocol", b"websocket")
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        return p.expect_stream_error(1, "PROTOCOL_ERROR", malformed=True)
