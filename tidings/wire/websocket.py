"""A sans-I/O WebSocket connection, server side, after the opening handshake (RFC 6455).

Theory of operation
-------------------
``WebSocketConnection`` is driven by its transport with three calls::

    conn.receive_data(chunk)        # bytes from the socket; b"" on EOF
    for event in conn.events(): ... # what the client did
    transport.write(conn.data_to_send())

and the send methods (``send_text``, ``send_bytes``, ``send_ping``, ``send_pong``,
``close``, ``send_encoded``), which only append to the output buffer. It never blocks,
sleeps or owns a timer: the closing-handshake timeout belongs to the transport.

States (RFC 6455 §7)::

    OPEN --close()--> CLOSING --client's close frame--> CLOSED
    OPEN --client's close frame (we echo it, §5.5.1)--> CLOSED
    OPEN/CLOSING --protocol error (we send a close frame, §7.1.7)--> CLOSED
    OPEN/CLOSING --EOF (receive_data(b"")), §7.1.5 code 1006--> CLOSED

In CLOSED the transport flushes ``data_to_send()`` and closes the TCP connection (the
server closes first, §7.1.1). In CLOSING, data frames from the client are discarded until
its close frame arrives (§5.5.1: no more data once we sent close).

Every event is produced by ``receive_data``; the last event of a connection is always one
of ``CloseReceived``, ``ConnectionFailed`` or ``ConnectionLost``, after which ``state`` is
CLOSED and further input is ignored.

Hot path: ``receive_data`` first tries a fast path for the overwhelmingly common chunk
"exactly one complete, masked, unfragmented, uncompressed text or binary frame with a
7-bit or 16-bit length" while no fragmented message is pending. The C ``apply_mask``
unmasks it (without the C build, for a 7-bit length one ``int.from_bytes`` of the whole
chunk yields the mask and the payload and one XOR unmasks it), and one ``bytes.decode``
validates UTF-8; events are built without the frozen-dataclass
``__init__`` detour. Everything else goes through ``FrameParser`` and the message
assembly below. ``_fast_max``/``_fast_max16`` are the largest payloads the fast path may
take now (within the frame limit), or -1 when it must not run (not OPEN, a partial frame
buffered, or a fragmented message pending).
UTF-8 of fragmented text is validated incrementally so an invalid fragment fails at once
(§8.1); a whole message is decoded in one ``bytes.decode`` call.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from tidings.wire.deflate import PerMessageDeflate
from tidings.wire.frames import (
    BINARY_HEADERS,
    HAVE_SPEEDUPS,
    LOW_BITS,
    MASK_REPEAT,
    MAX_CONTROL_PAYLOAD,
    TEXT_HEADERS,
    CloseCode,
    ConnectionClosedError,
    FrameParser,
    Opcode,
    ProtocolError,
    apply_mask,
    encode_close_payload,
    encode_frame,
    parse_close_payload,
)

#: Unmask fast-path frames with the C ``apply_mask`` (a module global so tests can turn
#: the pure-Python branch back on).
_FAST_UNMASK = HAVE_SPEEDUPS

__all__ = [
    "DEFAULT_MAX_FRAGMENTS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "BytesMessage",
    "CloseReceived",
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionState",
    "Event",
    "PingReceived",
    "PongReceived",
    "TextMessage",
    "WebSocketConnection",
]

#: 1 MiB, as websockets and uvicorn use: generous for chat/JSON, small enough that a
#: thousand connections each holding one maximal message stay within a gigabyte.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

#: Frames one message may span (RFC 6455 §5.4 sets no limit). Without a cap, a message of
#: empty continuation frames never ends and costs the parser work per frame for ever;
#: 4,096 lets a 1 MiB message arrive in 256-byte fragments, far smaller than any client
#: library sends.
DEFAULT_MAX_FRAGMENTS = 4096


class ConnectionState(Enum):
    """Where a connection is in the closing handshake (RFC 6455 §7)."""

    OPEN = "OPEN"
    CLOSING = "CLOSING"  # we sent a close frame and wait for the client's
    CLOSED = "CLOSED"  # nothing more to receive; flush and close the transport


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A complete text message (opcode 0x1, possibly reassembled from fragments)."""

    data: str


@dataclass(frozen=True, slots=True)
class BytesMessage:
    """A complete binary message (opcode 0x2, possibly reassembled from fragments)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A ping; the pong answer is already queued in ``data_to_send`` (RFC 6455 §5.5.2)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A pong, solicited or not (RFC 6455 §5.5.3)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The client's close frame; code 1005 if it carried no code (RFC 6455 §7.1.5).

    If we had not sent a close frame yet, the echo is already queued (§5.5.1). The
    connection is CLOSED: flush and close the transport.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The client broke the protocol; we failed the connection (RFC 6455 §7.1.7).

    A close frame with ``code`` (1002 protocol error, 1007 invalid data, 1009 too big) is
    queued unless we had already sent one. The connection is CLOSED.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """EOF before the closing handshake finished: abnormal closure (RFC 6455 §7.1.5)."""

    code: int = 1006  # CloseCode.ABNORMAL_CLOSURE, as a plain int


Event = (
    TextMessage
    | BytesMessage
    | PingReceived
    | PongReceived
    | CloseReceived
    | ConnectionFailed
    | ConnectionLost
)

# Fast constructors for the hot path. A frozen dataclass's __init__ goes through
# object.__setattr__ by name, which costs about as much as unmasking a small frame;
# setting the slot through its descriptor is the same assignment without the detour.
# The instances are identical and stay frozen for everyone else.
_new_object = object.__new__
_set_text_data: Callable[[TextMessage, str], None] = TextMessage.__dict__["data"].__set__
_set_bytes_data: Callable[[BytesMessage, bytes], None] = BytesMessage.__dict__["data"].__set__

_OPEN = ConnectionState.OPEN
_CLOSING = ConnectionState.CLOSING
_CLOSED = ConnectionState.CLOSED
_TEXT = Opcode.TEXT
#: Marks ``_frag_opcode`` of a compressed fragmented message (RSV1's place in byte 0).
_COMPRESSED = 0x40
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


class WebSocketConnection:
    """The server side of one WebSocket connection, after the handshake (RFC 6455 §5-§7).

    Args:
        max_message_size: largest message accepted, in bytes: the reassembled size of a
            fragmented message and the decompressed size of a compressed one (close code
            1009 beyond it). The wire size of one frame is also bounded by it.
        max_frame_size: largest payload of a single frame, or None for
            ``max_message_size`` (1009 beyond it).
        max_fragments: most frames one message may span (1009 beyond it). A partial
            message is held in one buffer, so the memory it takes is its payload
            bytes, whatever the number of fragments.
        deflate: the negotiated permessage-deflate state, or None without compression.
    """

    __slots__ = (
        "_close_sent",
        "_closed_with",
        "_decoder",
        "_deflate",
        "_events",
        "_fast_max",
        "_fast_max16",
        "_frag_buffer",
        "_frag_count",
        "_frag_opcode",
        "_frame_limit",
        "_max_fragments",
        "_max_message_size",
        "_out",
        "_parser",
        "_state",
    )

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_frame_size: int | None = None,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
        deflate: PerMessageDeflate | None = None,
    ) -> None:
        if max_message_size < 0 or (max_frame_size is not None and max_frame_size < 0):
            raise ValueError("size limits must be >= 0")
        if max_fragments < 1:
            raise ValueError("max_fragments must be >= 1")
        self._max_fragments = max_fragments
        frame_limit = max_message_size
        if max_frame_size is not None:
            frame_limit = min(max_frame_size, max_message_size)
        self._max_message_size = max_message_size
        # Made when a chunk needs it and kept only while it holds a partial frame: the
        # fast path needs none, so an idle connection holds no parser.
        self._parser: FrameParser | None = None
        self._deflate = deflate
        # Events not yet collected by events(); None, not an empty list, while there
        # are none (so an idle connection holds no list).
        self._events: list[Event] | None = None
        # Queued output, one bytes object per frame: appending and joining once is cheaper
        # than growing a bytearray and copying it out. None while nothing is queued (an
        # idle connection holds no list): see _queue.
        self._out: list[bytes] | None = None
        self._state = _OPEN
        self._close_sent = False
        self._closed_with: tuple[int, str] | None = None  # close code and reason
        # The fragmented message being reassembled (RFC 6455 §5.4): its opcode, plus
        # _COMPRESSED if its first frame had RSV1 (RFC 7692 §6); 0 = none.
        # One growing buffer, not a list of fragments: a fragment costs its payload
        # bytes and nothing more, so a flood of tiny or empty ones holds no memory.
        # None between fragmented messages.
        self._frag_opcode = 0
        self._frag_buffer: bytearray | None = None
        self._frag_count = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self._frame_limit = frame_limit
        self._fast_max = self._fast_max16 = -1
        self._set_fast_path(True)

    # --- state ------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """OPEN, CLOSING (we sent close, awaiting the client's) or CLOSED."""
        return self._state

    @property
    def close_code(self) -> int | None:
        """Why the connection ended: the client's code (1005 if none), the code we failed
        it with, or 1006 after EOF; None until then."""
        closed = self._closed_with
        return None if closed is None else closed[0]

    @property
    def close_reason(self) -> str:
        """The reason text matching ``close_code`` ("" if none)."""
        closed = self._closed_with
        return "" if closed is None else closed[1]

    # --- input ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client; ``b""`` signals EOF.

        Never raises for anything the client sends: protocol violations become a
        ``ConnectionFailed`` event. Input after CLOSED is ignored.
        """
        n = len(data) - 6
        # Fast path: the chunk is exactly one masked, final, uncompressed text or binary
        # frame (first byte 0x81 or 0x82: FIN, no RSV bits) while the fast path is on.
        if n >= 0 and 0x81 <= data[0] <= 0x82:
            if n <= self._fast_max and data[1] == 0x80 | n:
                # 7-bit length: bytes 2-5 are the mask and bytes 6.. the payload (§5.2).
                if _FAST_UNMASK:
                    payload = apply_mask(data[6:], data[2:6])
                else:
                    # Without the C unmasker: little-endian, one int holds mask and
                    # payload, so one multiply and one XOR unmask it (§5.3).
                    v = int.from_bytes(data, "little")
                    payload = (
                        ((v >> 48) ^ (((v >> 16) & 0xFFFFFFFF) * MASK_REPEAT[n])) & LOW_BITS[n]
                    ).to_bytes(n, "little")
            elif (
                data[1] == 0xFE  # masked, 16-bit length
                and n - 2 <= self._fast_max16
                and n - 2 == (data[2] << 8 | data[3])  # (so n >= 2 as well)
            ):
                payload = apply_mask(data[8:], data[4:8])
            else:
                self._receive_frames(data)
                return
            event: Event
            if data[0] == 0x82:
                event = _new_object(BytesMessage)
                _set_bytes_data(event, payload)
            else:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    self._fail(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8 in text")
                    return
                event = _new_object(TextMessage)
                _set_text_data(event, text)
            events = self._events
            if events is None:
                self._events = [event]
            else:
                events.append(event)
            return
        self._receive_frames(data)

    def events(self) -> list[Event]:
        """The events produced since the last call, in order (a new list each time)."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    def _event(self, event: Event) -> None:
        events = self._events
        if events is None:
            self._events = [event]
        else:
            events.append(event)

    def _receive_frames(self, data: bytes) -> None:
        """The general path: any chunk, through the incremental frame parser."""
        if self._state is _CLOSED:
            return
        if not data:
            # RFC 6455 §7.1.5: the TCP connection closed without a close frame: 1006.
            self._set_closed(1006, "")  # CloseCode.ABNORMAL_CLOSURE
            self._event(ConnectionLost())
            return
        parser = self._parser
        if parser is None:
            parser = FrameParser(
                max_frame_size=self._frame_limit, allow_rsv1=self._deflate is not None
            )
        try:
            for opcode, fin, rsv1, payload in parser.feed(data):
                if opcode >= 0x8:
                    self._on_control(opcode, payload)
                    if self._state is _CLOSED:
                        break
                elif not self._close_sent:
                    self._on_data(opcode, fin, rsv1, payload)
                # else: §5.5.1, we sent close; data frames are discarded.
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
        buffered = parser.buffered
        self._parser = parser if buffered else None
        self._set_fast_path(self._state is _OPEN and not self._frag_opcode and not buffered)

    def _set_fast_path(self, enabled: bool) -> None:
        """Allow the single-frame fast path (within the frame limit) or turn it off."""
        if enabled:
            self._fast_max = min(MAX_CONTROL_PAYLOAD, self._frame_limit)
            self._fast_max16 = min(0xFFFF, self._frame_limit)
        else:
            self._fast_max = self._fast_max16 = -1

    def _on_data(self, opcode: int, fin: bool, rsv1: bool, payload: bytes) -> None:
        """A data frame (RFC 6455 §5.4 fragmentation rules)."""
        if opcode == Opcode.CONTINUATION:
            if not self._frag_opcode:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue"
                )
            self._add_fragment(payload)
            if fin:
                self._finish_fragmented()
            return
        if self._frag_opcode:
            raise ProtocolError(
                CloseCode.PROTOCOL_ERROR, "new message started before the previous one ended"
            )
        if fin:
            self._deliver(opcode, rsv1, payload)
            return
        self._frag_opcode = (opcode | _COMPRESSED) if rsv1 else opcode
        self._frag_count = 0
        if opcode == _TEXT and not rsv1:
            # Validate as fragments arrive so an invalid one fails at once (§8.1).
            self._decoder = _Utf8Decoder()
        self._add_fragment(payload)

    def _add_fragment(self, payload: bytes) -> None:
        buffer = self._frag_buffer
        if buffer is None:
            buffer = self._frag_buffer = bytearray()
        if len(buffer) + len(payload) > self._max_message_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big")
        self._frag_count += 1
        if self._frag_count > self._max_fragments:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message has too many fragments")
        buffer += payload
        decoder = self._decoder
        if decoder is not None:
            # Validation only: the text is decoded once, whole, when the message ends.
            try:
                decoder.decode(payload)
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8 in text")
            # CPython's decoder rejects every impossible prefix at once except ED A0-BF,
            # the start of a UTF-16 surrogate, which it holds until the third byte.
            pending = decoder.getstate()[0]
            if len(pending) == 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8 in text")

    def _finish_fragmented(self) -> None:
        opcode = self._frag_opcode & ~_COMPRESSED
        compressed = (self._frag_opcode & _COMPRESSED) != 0
        decoder = self._decoder
        payload = bytes(self._frag_buffer or b"")
        self._frag_opcode = 0
        self._decoder = None
        self._frag_buffer = None
        if decoder is not None:
            try:
                decoder.decode(b"", True)
            except UnicodeDecodeError:
                raise ProtocolError(
                    CloseCode.INVALID_FRAME_PAYLOAD_DATA, "text message ends inside a character"
                )
            self._event(TextMessage(payload.decode("utf-8")))
            return
        self._deliver(opcode, compressed, payload)

    def _deliver(self, opcode: int, compressed: bool, payload: bytes) -> None:
        """A complete message, possibly compressed (RFC 7692 §6.2)."""
        if compressed:
            # The parser only lets RSV1 through when deflate was negotiated.
            assert self._deflate is not None
            payload = self._deflate.decompress(payload, max_size=self._max_message_size)
        if opcode == _TEXT:
            try:
                self._event(TextMessage(payload.decode("utf-8")))
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8 in text")
        else:
            self._event(BytesMessage(payload))

    def _on_control(self, opcode: int, payload: bytes) -> None:
        """A control frame; may arrive between fragments of a message (RFC 6455 §5.4)."""
        if opcode == Opcode.PING:
            self._event(PingReceived(payload))
            if not self._close_sent:
                # §5.5.2: answer with a pong carrying the same application data.
                self._queue(encode_frame(Opcode.PONG, payload))
        elif opcode == Opcode.PONG:
            self._event(PongReceived(payload))
        else:
            code, reason = parse_close_payload(payload)
            if not self._close_sent:
                # §5.5.1: echo the status code received (none if there was none).
                echo = b"" if code == CloseCode.NO_STATUS_RCVD else code.to_bytes(2, "big")
                self._queue(encode_frame(Opcode.CLOSE, echo))
                self._close_sent = True
            self._set_closed(code, reason)
            self._event(CloseReceived(code, reason))

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 §7.1.7) with close ``code``."""
        if not self._close_sent:
            self._queue(encode_frame(Opcode.CLOSE, encode_close_payload(code, reason)))
            self._close_sent = True
        self._set_closed(code, reason)
        self._event(ConnectionFailed(code, reason))

    def _set_closed(self, code: int, reason: str) -> None:
        self._state = _CLOSED
        self._closed_with = (code, reason)
        self._set_fast_path(False)
        self._frag_opcode = 0
        self._frag_buffer = None
        self._decoder = None

    # --- output -----------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call (``b""`` if nothing)."""
        out = self._out
        if out is None:
            return b""
        self._out = None
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _queue(self, frame: bytes) -> None:
        """Queue one frame for ``data_to_send``."""
        out = self._out
        if out is None:
            self._out = [frame]
        else:
            out.append(frame)

    def _check_open(self) -> None:
        if self._state is not _OPEN:
            raise ConnectionClosedError(f"cannot send: the connection is {self._state.value}")

    @property
    def compressing(self) -> bool:
        """Whether permessage-deflate was negotiated (messages may be compressed)."""
        return self._deflate is not None

    def send_text(self, data: str) -> None:
        """Queue a text message (compressed if deflate is on and it is long enough).

        Raises:
            ConnectionClosedError: the connection is not OPEN.
            UnicodeEncodeError: ``data`` contains lone surrogates.
        """
        if self._state is not _OPEN:
            self._check_open()
        payload = data.encode("utf-8")
        n = len(payload)
        deflate = self._deflate
        if deflate is not None and n >= deflate.min_size:
            self._send_compressed(Opcode.TEXT, payload)
        elif n < 126:
            frame = TEXT_HEADERS[n] + payload
            out = self._out
            if out is None:
                self._out = [frame]
            else:
                out.append(frame)
        else:
            self._queue(encode_frame(Opcode.TEXT, payload))

    def send_bytes(self, data: bytes) -> None:
        """Queue a binary message (compressed if deflate is on and it is long enough).

        Raises:
            ConnectionClosedError: the connection is not OPEN.
        """
        if self._state is not _OPEN:
            self._check_open()
        n = len(data)
        deflate = self._deflate
        if deflate is not None and n >= deflate.min_size:
            self._send_compressed(Opcode.BINARY, data)
        elif n < 126:
            frame = BINARY_HEADERS[n] + data
            out = self._out
            if out is None:
                self._out = [frame]
            else:
                out.append(frame)
        else:
            self._queue(encode_frame(Opcode.BINARY, data))

    def _send_compressed(self, opcode: int, payload: bytes) -> None:
        # RFC 7692 §6: RSV1 on the (only) frame marks the message as compressed.
        assert self._deflate is not None
        self._queue(encode_frame(opcode, self._deflate.compress(payload), rsv1=True))

    def send_encoded(self, frame: bytes) -> None:
        """Queue bytes that are already one or more complete frames, as is.

        For broadcasts: ``frames.encode_message`` encodes a message once (uncompressed,
        valid with or without deflate) and every member's connection queues the same
        bytes. The caller is responsible for them being valid server frames.

        Raises:
            ConnectionClosedError: the connection is not OPEN.
        """
        if self._state is not _OPEN:
            self._check_open()
        out = self._out
        if out is None:
            self._out = [frame]
        else:
            out.append(frame)

    def send_shared(self, data: str | bytes, frame: bytes) -> bytes:
        """Queue the message ``data``, whose frame ``frame`` is shared; return what to send now.

        For direct delivery of a broadcast, where every member's socket costs one call:
        ``frame`` is ``frames.encode_message(data)``, encoded once for all members. An
        uncompressed connection sends it as is; a compressing one compresses ``data`` as
        ``send_text``/``send_bytes`` do. Returns ``data_to_send()`` afterwards: ``frame``
        itself when nothing else was queued.

        Raises:
            ConnectionClosedError: the connection is not OPEN.
            UnicodeEncodeError: ``data`` contains lone surrogates (compressing only).
        """
        if self._state is not _OPEN:
            self._check_open()
        out = self._out
        if self._deflate is None:
            if not out:
                return frame
            out.append(frame)
        elif isinstance(data, str):
            self.send_text(data)
        else:
            self.send_bytes(data)
        return self.data_to_send()

    def send_ping(self, data: bytes = b"") -> None:
        """Queue a ping (RFC 6455 §5.5.2).

        Raises:
            ConnectionClosedError: the connection is not OPEN.
            ValueError: ``data`` is longer than 125 bytes.
        """
        self._send_control(Opcode.PING, data)

    def send_pong(self, data: bytes = b"") -> None:
        """Queue an unsolicited pong, e.g. as a heartbeat (RFC 6455 §5.5.3).

        Raises:
            ConnectionClosedError: the connection is not OPEN.
            ValueError: ``data`` is longer than 125 bytes.
        """
        self._send_control(Opcode.PONG, data)

    def _send_control(self, opcode: int, data: bytes) -> None:
        self._check_open()
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError("control frame payload longer than 125 bytes")
        self._queue(encode_frame(opcode, data))

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2): queue a close frame, go CLOSING.

        A no-op once a close frame was sent or the connection is CLOSED, so the transport
        can call it unconditionally on shutdown.

        Raises:
            ValueError: ``code`` may not be sent, or ``reason`` is over 123 UTF-8 bytes.
        """
        if self._close_sent or self._state is _CLOSED:
            return
        self._queue(encode_frame(Opcode.CLOSE, encode_close_payload(code, reason)))
        self._close_sent = True
        self._state = _CLOSING
        self._set_fast_path(False)
