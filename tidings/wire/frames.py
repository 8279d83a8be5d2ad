"""WebSocket framing (RFC 6455 §5): opcodes, close codes, the client-frame parser, frame encoders.

Theory of operation
-------------------
This module knows about *frames* only; messages (fragmentation, UTF-8, the closing
handshake) are ``websocket.py``'s business. It holds:

* the error tree of the wire package (``WebSocketError`` and its subclasses);
* ``Opcode`` and ``CloseCode`` and the rule for which close codes may appear on the wire;
* ``FrameParser``: an incremental parser for frames sent by a *client* to a server.
  Every rule that can be checked on one frame in isolation is checked here and raised as
  ``ProtocolError`` carrying the close code to answer with (masking, reserved bits,
  reserved opcodes, control frame size and fragmentation, the 64-bit length MSB, the
  frame size limit). It raises as soon as the offending header bytes arrive: a bad
  first byte fails without waiting for the rest of the frame, and an oversized length
  fails before the payload is buffered;
* encoders for frames sent by the *server* (never masked, RFC 6455 §5.1).

Hot path: unmasking runs in the optional C extension ``_speedups`` (8 bytes per step)
when it was built; otherwise with one big-integer XOR (``int.from_bytes`` of the payload
against the 4-byte mask repeated), which also runs in C, but allocates. The tables
``MASK_REPEAT`` and ``LOW_BITS`` precompute the repeat multiplier and truncation mask
for payloads of up to 125 bytes; ``websocket.py`` uses them for its single-frame fast path.

What must not be added here: message state, UTF-8 decoding, I/O of any kind.

Error tree::

    WebSocketError                       root of every error raised by tidings.wire
     +-- ProtocolError(code, reason)     the peer broke RFC 6455/7692; answer with close `code`
     +-- ConnectionClosedError           local misuse: sending after the closing handshake began
     +-- HandshakeError(status, ...)     (handshake.py) the opening handshake is refused
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import NamedTuple

__all__ = [
    "BINARY_HEADERS",
    "HAVE_SPEEDUPS",
    "LOW_BITS",
    "MASK_REPEAT",
    "MAX_CLOSE_REASON",
    "MAX_CONTROL_PAYLOAD",
    "TEXT_HEADERS",
    "CloseCode",
    "ConnectionClosedError",
    "Frame",
    "FrameParser",
    "Opcode",
    "ProtocolError",
    "WebSocketError",
    "apply_mask",
    "encode_bytes",
    "encode_close_payload",
    "encode_frame",
    "encode_message",
    "encode_text",
    "is_valid_close_code",
    "parse_close_payload",
]

#: RFC 6455 §5.5: all control frames MUST have a payload length of 125 bytes or less.
MAX_CONTROL_PAYLOAD = 125
#: A close payload is a 2-byte code plus the reason, within the 125-byte control limit.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2


class WebSocketError(Exception):
    """Root of every error raised by ``tidings.wire``."""


class ProtocolError(WebSocketError):
    """The peer violated RFC 6455 or RFC 7692.

    Attributes:
        code: the close code to fail the connection with (1002, 1007, 1009, ...).
        reason: a short human-readable explanation (our own words, safe to send).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        # A plain int, not a CloseCode member, so events carry plain ints to the app.
        self.code = int(code)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (close code {self.code})"


class ConnectionClosedError(WebSocketError):
    """Raised when sending on a connection whose closing handshake has begun or ended."""


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 §5.2, §11.8). 0x3-0x7 and 0xB-0xF are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    """Close status codes (RFC 6455 §7.4.1, IANA "WebSocket Close Code Number Registry")."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    # 1004 is reserved; 1005, 1006 and 1015 must never be sent in a close frame (§7.4.1).
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 §7.4).

    1000-1003 and 1007-1011 are defined by RFC 6455; 1012-1014 were registered later
    with IANA and are accepted too. 3000-3999 are registered for libraries and
    frameworks, 4000-4999 are private use. 1004, 1005, 1006, 1015 and everything else
    below 3000 (or from 5000 up) are invalid.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Decode a received close frame payload into ``(code, reason)``.

    An empty payload means "no status code" and yields ``(1005, "")`` (RFC 6455 §7.1.5).

    Raises:
        ProtocolError: 1002 for a 1-byte payload or an invalid code (§5.5.1, §7.4),
            1007 for a reason that is not valid UTF-8 (§5.5.1, §8.1).
    """
    if not payload:
        return int(CloseCode.NO_STATUS_RCVD), ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame payload of 1 byte")
    code = (payload[0] << 8) | payload[1]
    if not is_valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "close reason is not UTF-8")
    return code, reason


def encode_close_payload(code: int, reason: str = "") -> bytes:
    """Encode a close frame payload we send (RFC 6455 §5.5.1).

    Raises:
        ValueError: ``code`` may not be sent (see ``is_valid_close_code``) or the reason
            is longer than 123 UTF-8 bytes.
    """
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent in a close frame")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON:
        raise ValueError(f"close reason is {len(encoded)} UTF-8 bytes, at most 123 allowed")
    return code.to_bytes(2, "big") + encoded


# --- masking (RFC 6455 §5.3) -------------------------------------------------------

# For n <= 125: the 32-bit mask as a little-endian int times MASK_REPEAT[n] repeats it
# ceil(n / 4) times; "& LOW_BITS[n]" cuts the repeat to exactly n bytes.
MASK_REPEAT: tuple[int, ...] = tuple(
    sum(1 << (32 * i) for i in range((n + 3) // 4)) for n in range(MAX_CONTROL_PAYLOAD + 1)
)
LOW_BITS: tuple[int, ...] = tuple((1 << (8 * n)) - 1 for n in range(MAX_CONTROL_PAYLOAD + 1))


def _apply_mask_py(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3); its own inverse."""
    n = len(payload)
    if n <= MAX_CONTROL_PAYLOAD:
        key = (int.from_bytes(mask, "little") * MASK_REPEAT[n]) & LOW_BITS[n]
    else:
        key = int.from_bytes((bytes(mask) * ((n + 3) >> 2))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


_apply_mask_c: Callable[[bytes | bytearray, bytes | bytearray], bytes] | None
try:
    # The optional C build of the same function (setup.py; absent without a compiler).
    from tidings.wire._speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - depends on how the package was built
    _apply_mask_c = None

#: True when unmasking runs in the optional C extension (``tidings.wire._speedups``).
HAVE_SPEEDUPS = _apply_mask_c is not None
apply_mask = _apply_mask_py if _apply_mask_c is None else _apply_mask_c


# --- parsing (RFC 6455 §5.2) -------------------------------------------------------


class Frame(NamedTuple):
    """One parsed, unmasked frame. ``opcode`` is a plain int (compare with ``Opcode``)."""

    opcode: int
    fin: bool
    rsv1: bool
    payload: bytes


_DATA_OPCODES = frozenset((Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY))
_CONTROL_OPCODES = frozenset((Opcode.CLOSE, Opcode.PING, Opcode.PONG))


def _first_byte_error(b0: int, allow_rsv1: bool) -> str | None:
    """Why a client frame starting with byte ``b0`` is invalid, or None if it is fine."""
    opcode = b0 & 0x0F
    if b0 & 0x30:
        # RFC 6455 §5.2: RSV2/RSV3 MUST be 0 unless an extension defines them (none here).
        return "reserved bits RSV2/RSV3 set"
    if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
        # RFC 6455 §5.2: unknown opcode => fail the connection.
        return f"reserved opcode 0x{opcode:X}"
    if b0 & 0x40:
        if not allow_rsv1:
            return "reserved bit RSV1 set without a negotiated extension"
        if opcode not in (Opcode.TEXT, Opcode.BINARY):
            # RFC 7692 §6: the "Per-Message Compressed" bit is only set on the first
            # frame of a data message; never on control frames (§6.1) or continuations.
            return "RSV1 set on a control or continuation frame"
    if opcode >= 0x8 and not b0 & 0x80:
        # RFC 6455 §5.5: control frames MUST NOT be fragmented.
        return "fragmented control frame"
    return None


# One table per "RSV1 allowed?" setting: byte value -> None or the reason it is invalid.
_FIRST_BYTE_ERRORS: dict[bool, tuple[str | None, ...]] = {
    allow: tuple(_first_byte_error(b, allow) for b in range(256)) for allow in (False, True)
}


class FrameParser:
    """Incremental parser for client-to-server frames (RFC 6455 §5.2).

    Feed it bytes as they arrive; it yields each complete frame, unmasked. Partial frames
    are buffered. Frame-level rules are enforced (see the module docstring); message-level
    rules (continuation sequencing, UTF-8, close payloads) are the caller's.

    Args:
        max_frame_size: largest payload accepted for one frame, or None for no limit;
            a larger declared length raises ``ProtocolError(1009)`` before the payload
            is buffered.
        allow_rsv1: whether an extension (permessage-deflate, RFC 7692) gave RSV1 a
            meaning. If False, any frame with RSV1 set is a protocol error.
    """

    __slots__ = ("_buf", "_errors", "_limit")

    def __init__(self, *, max_frame_size: int | None = None, allow_rsv1: bool = False) -> None:
        self._buf = bytearray()
        self._errors = _FIRST_BYTE_ERRORS[allow_rsv1]
        # A limit of 2**63 never triggers: larger lengths are already a protocol error.
        self._limit = (1 << 63) if max_frame_size is None else max_frame_size

    @property
    def buffered(self) -> int:
        """Number of bytes of an incomplete frame held back, waiting for more data."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Add ``data`` and yield every frame it completes, in order.

        The iterator must be exhausted for the buffer to be updated; a caller that stops
        early (because the connection failed) simply abandons the remaining bytes.

        Raises:
            ProtocolError: at the first frame that breaks a frame-level rule; frames
                before it have already been yielded.
        """
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        end = len(buf)
        pos = 0
        errors = self._errors
        while end - pos >= 2:
            b0 = buf[pos]
            error = errors[b0]
            if error is not None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, error)
            b1 = buf[pos + 1]
            if not b1 & 0x80:
                # RFC 6455 §5.1: the server MUST close on an unmasked client frame.
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frame is not masked")
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end - start < 2:
                    break
                length = (buf[start] << 8) | buf[start + 1]
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                length = int.from_bytes(buf[start : start + 8], "big")
                start += 8
                if length >> 63:
                    # RFC 6455 §5.2: the most significant bit MUST be 0.
                    raise ProtocolError(
                        CloseCode.PROTOCOL_ERROR, "64-bit payload length has its MSB set"
                    )
            # RFC 6455 §5.2 also says the minimal number of bytes MUST be used for the
            # length; we accept non-minimal encodings, as the brief and most peers do.
            if length > MAX_CONTROL_PAYLOAD and b0 & 0x08:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "control frame payload longer than 125 bytes"
                )
            if length > self._limit:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "frame payload too big")
            stop = start + 4 + length
            if stop > end:
                break
            payload = apply_mask(buf[start + 4 : stop], buf[start : start + 4])
            pos = stop
            yield Frame(b0 & 0x0F, b0 >= 0x80, bool(b0 & 0x40), payload)
        if buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf += buf[pos:]


# --- encoding (RFC 6455 §5.2, server side: never masked) ------------------------------

_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack
TEXT_HEADERS = tuple(bytes((0x81, n)) for n in range(126))
BINARY_HEADERS = tuple(bytes((0x82, n)) for n in range(126))


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """Encode one unmasked server-to-client frame.

    Args:
        opcode: an ``Opcode``.
        payload: the (already compressed, if ``rsv1``) payload.
        fin: whether this is the final fragment of its message.
        rsv1: the RFC 7692 "Per-Message Compressed" bit.
    """
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 0x10000:
        return _PACK_16(b0, 126, n) + payload
    return _PACK_64(b0, 127, n) + payload


def encode_text(data: str) -> bytes:
    """Encode ``data`` as one uncompressed, unfragmented text frame."""
    payload = data.encode("utf-8")
    n = len(payload)
    if n < 126:
        return TEXT_HEADERS[n] + payload
    return encode_frame(Opcode.TEXT, payload)


def encode_bytes(data: bytes) -> bytes:
    """Encode ``data`` as one uncompressed, unfragmented binary frame."""
    n = len(data)
    if n < 126:
        return BINARY_HEADERS[n] + data
    return encode_frame(Opcode.BINARY, data)


def encode_message(data: str | bytes) -> bytes:
    """Encode a message once, as a text (``str``) or binary (``bytes``) frame.

    The result is a complete uncompressed frame that is valid on *any* connection, with
    or without permessage-deflate (RFC 7692 §6: compression is chosen per message), so a
    broadcast can encode once and hand the same bytes to
    ``WebSocketConnection.send_encoded`` for every member.
    """
    if isinstance(data, str):
        return encode_text(data)
    return encode_bytes(data)
