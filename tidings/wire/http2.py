"""The server side of an HTTP/2 connection (RFC 9113), sans I/O: bytes in, events out.

Theory of operation
-------------------
``HTTP2Connection`` is one connection as a server sees it. ``receive_data`` takes what
the client sent and returns the events it carried; whatever the connection has to say
(its SETTINGS, ACKs, WINDOW_UPDATEs, the frames the server sends with ``send_headers``,
``send_data``, ``reset_stream``...) is queued and taken with ``data_to_send``. Nothing
here reads a clock, owns a timer or touches a socket.

Receiving walks the 9-octet frame headers (section 4.1) of the bytes as they come,
keeps a partial frame for the next call, and hands each whole frame to the handler of
its type (``_HANDLERS``, one per type of section 6: methods here for DATA, HEADERS
and CONTINUATION, functions of ``_http2_frames`` for the control frames, which also
holds the wire's constants; unknown types are skipped, section 5.5). A header block
(HEADERS plus CONTINUATION, section 6.10) is collected up to ``max_header_list_size``
octets and then decoded with HPACK (RFC 7541).

Errors (section 5.4): a connection error queues GOAWAY with the code of section 7,
stops all further processing and raises ``HTTP2ProtocolError``; events returned by
earlier calls stay valid, those of the failing call are dropped. A stream error queues
RST_STREAM and comes out as a ``StreamReset`` event with ``remote`` False.

Stream states (section 5.1), for client-initiated streams only (a server that never
pushes has no reserved states): a stream is *open* once its HEADERS arrive, then
*half-closed (remote)* after the client's END_STREAM or *half-closed (local)* after
ours, and *closed* when both sides ended or either reset it. Closed streams leave
``_streams`` and are remembered, bounded, in ``_closed`` with how they closed, which
decides what a late frame on them means: after our RST_STREAM, frames are ignored
(the client may have sent them before it saw ours); after the client's RST_STREAM or
a normal close, DATA and HEADERS are a STREAM_CLOSED stream error. A stream id below
the highest seen and not remembered is a connection error for HEADERS (ids only
increase, section 5.1.1).

Flow control (section 5.2), both ways:

- in: the connection window is replenished by the connection itself once half of it
  has been used (one slow stream must not stop the others); each stream window is
  reopened only by ``open_window``, which the server calls as the application takes
  the data, so an application that does not read holds back only its own client;
- out: ``send_window`` is what ``send_data`` may send now on a stream (the smaller of
  the stream and connection windows); ``WindowUpdated`` and ``SettingsChanged``
  events say when it may have grown.

Counters the server reads and clears after each ``receive_data``: ``resets`` (RST_STREAM
frames received plus stream errors we answered, the rapid-reset measure) and
``control`` (PING and SETTINGS frames that queued an ACK).

What must not be added here: HTTP semantics beyond framing (request field rules,
Content-Length, the ASGI scope belong to ``tidings.server._h2_request``), timers,
logging, asyncio.
"""

from __future__ import annotations

from itertools import islice
from typing import Final, Protocol

from tidings.wire import _http2_frames as _control
from tidings.wire._http2_frames import (
    ACK,
    CLOSED_KEPT,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    DEFAULT_WINDOW,
    ENABLE_CONNECT_PROTOCOL,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENDED,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    LARGEST_FRAME_SIZE,
    LOCAL_CLOSED,
    MAX_CONCURRENT_STREAMS,
    MAX_CONTINUATIONS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    OPEN,
    PADDED,
    PING,
    PRIORITY_FLAG,
    REMOTE_CLOSED,
    RESET_BY_US,
    RST_STREAM,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
    pack_head,
    unpack_head,
)
from tidings.wire.hpack import Decoder, Encoder, HeaderListTooLarge, HpackError
from tidings.wire.http2_events import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    HTTP2Error,
    HTTP2ProtocolError,
    PingAcknowledged,
    RequestReceived,
    SettingsChanged,
    StreamClosedError,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

__all__ = [
    "PREFACE",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "Event",
    "HTTP2Connection",
    "HTTP2Error",
    "HTTP2ProtocolError",
    "HeaderEncoder",
    "PingAcknowledged",
    "RequestReceived",
    "SettingsChanged",
    "StreamClosedError",
    "StreamReset",
    "TrailersReceived",
    "WindowUpdated",
]

#: The client connection preface (RFC 9113 section 3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class HeaderEncoder(Protocol):
    """What the connection needs of an HPACK encoder (``tidings.wire.hpack.Encoder``).

    The client's header blocks are decoded with ``tidings.wire.hpack.Decoder``.
    """

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes: ...

    def set_max_table_size(self, size: int) -> None: ...


class _Stream:
    __slots__ = ("recv_window", "send_window", "state", "taken")

    def __init__(self, state: int, send_window: int, recv_window: int) -> None:
        self.state = state
        self.send_window = send_window
        self.recv_window = recv_window
        self.taken = 0  # octets the application took, not yet given back


class HTTP2Connection:
    """One HTTP/2 connection, server side; our SETTINGS are queued on creation.

    Args:
        encoder: the HPACK encoder of our header blocks (by default
            ``tidings.wire.hpack.Encoder``); the client's blocks are decoded by a
            ``tidings.wire.hpack.Decoder`` with the default table size of 4096.
        max_concurrent_streams: SETTINGS_MAX_CONCURRENT_STREAMS; a stream past it is
            refused with REFUSED_STREAM (section 5.1.2).
        initial_window_size: SETTINGS_INITIAL_WINDOW_SIZE, each stream's receive window.
        max_frame_size: SETTINGS_MAX_FRAME_SIZE, the largest frame we accept.
        max_header_list_size: SETTINGS_MAX_HEADER_LIST_SIZE; also the largest encoded
            header block we collect (a longer one is ENHANCE_YOUR_CALM).
        enable_connect_protocol: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
    """

    def __init__(
        self,
        encoder: HeaderEncoder | None = None,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = DEFAULT_WINDOW,
        max_frame_size: int = DEFAULT_FRAME_SIZE,
        max_header_list_size: int = 65536,
        enable_connect_protocol: bool = False,
    ) -> None:
        if not DEFAULT_FRAME_SIZE <= max_frame_size <= LARGEST_FRAME_SIZE:
            raise ValueError("max_frame_size must be between 2**14 and 2**24-1")
        if not 0 <= initial_window_size <= MAX_WINDOW:
            raise ValueError("initial_window_size must be between 0 and 2**31-1")
        self.encoder: HeaderEncoder = Encoder() if encoder is None else encoder
        self.decoder = Decoder(max_header_list_size=max_header_list_size)
        self.max_concurrent_streams = max_concurrent_streams
        self.max_inbound_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        #: The largest frame the client accepts (its SETTINGS_MAX_FRAME_SIZE).
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        #: The highest stream id the client has opened (for GOAWAY).
        self.highest_inbound_stream_id = 0
        #: The client's SETTINGS, as received.
        self.remote_settings: dict[int, int] = {}
        #: RST_STREAM frames received plus stream errors answered (the server clears it).
        self.resets = 0
        #: PING and SETTINGS frames that queued an ACK (the server clears it).
        self.control = 0
        #: A connection error happened: nothing more is processed.
        self.closed = False
        self._streams: dict[int, _Stream] = {}
        self._closed: dict[int, int] = {}
        self._out: list[bytes] = []
        # A frame (or the preface) not yet whole: its pieces, their size, the size it needs.
        # Pieces are joined once, when it is whole: a frame that trickles in octet by
        # octet costs no more than one that arrives in one read.
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._needed = 0
        self._preface = True  # the client preface is still expected
        self._remote_initial = DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self._local_initial = DEFAULT_WINDOW  # ours, once the client acknowledged it
        self._pending_initial = initial_window_size  # ours, until then
        self._send_window = DEFAULT_WINDOW  # the connection's, client side
        self._recv_window = DEFAULT_WINDOW  # the connection's, ours
        self._recv_used = 0  # connection window used since last replenished
        self._block: list[bytes] = []  # the header block being collected
        self._block_size = 0
        self._block_sid = 0  # its stream, 0 when none is in progress
        self._block_flags = 0  # its HEADERS frame's flags (END_STREAM)
        self._block_bad = False  # its HEADERS frame made the stream depend on itself
        self._events: list[Event] = []
        settings = [
            (MAX_CONCURRENT_STREAMS, max_concurrent_streams),
            (INITIAL_WINDOW_SIZE, initial_window_size),
            (MAX_FRAME_SIZE, max_frame_size),
            (MAX_HEADER_LIST_SIZE, max_header_list_size),
            (ENABLE_PUSH, 0),
        ]
        if enable_connect_protocol:
            settings.append((ENABLE_CONNECT_PROTOCOL, 1))
        payload = b"".join(SETTING.pack(k, v) for k, v in settings)
        self._out.append(frame(SETTINGS, 0, 0, payload))

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Process bytes from the client; the events they complete, in order.

        Raises:
            HTTP2ProtocolError: a connection error; GOAWAY is queued, the connection
                processes nothing more.
        """
        if self.closed:
            return []
        if self._buffered:
            self._buffer.append(data)
            self._buffered += len(data)
            if self._buffered < self._needed:
                return []
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
        if self._preface:
            # Section 3.4: the magic octets, then a SETTINGS frame (not an ACK).
            if len(data) < 33:
                if not PREFACE.startswith(data[:24]):
                    self._fail(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
                self._keep(data, 33)
                return []
            if data[:24] != PREFACE or data[27] != SETTINGS or data[28] & ACK:
                self._fail(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
            self._preface = False
            data = data[24:]
        events: list[Event] = []
        self._events = events
        handlers = _HANDLERS
        pos = 0
        size = len(data)
        limit = self.max_inbound_frame_size
        needed = 9
        while size - pos >= 9:
            high, low, kind, flags, sid = unpack_head(data, pos)
            length = high << 16 | low
            if length > limit:
                self._fail(
                    ErrorCode.FRAME_SIZE_ERROR, "a frame larger than SETTINGS_MAX_FRAME_SIZE"
                )
            end = pos + 9 + length
            if end > size:
                needed = end - pos
                break
            payload = data[pos + 9 : end]
            pos = end
            sid &= MAX_WINDOW  # the reserved bit is ignored (section 4.1)
            if self._block_sid and kind != CONTINUATION:
                self._fail(ErrorCode.PROTOCOL_ERROR, "a frame inside a header block")
            if kind < 10:
                handlers[kind](self, flags, sid, payload)
            # Unknown types are ignored (section 5.5).
        if pos < size:
            self._keep(data[pos:] if pos else data, needed)
        return events

    def _keep(self, data: bytes, needed: int) -> None:
        """Hold the start of a frame until ``needed`` octets of it have arrived."""
        self._buffer.append(data)
        self._buffered = len(data)
        self._needed = needed

    def _fail(self, code: ErrorCode, reason: str) -> None:
        """A connection error: GOAWAY, then nothing more is processed."""
        self.send_goaway(code)
        self.closed = True
        self._buffer.clear()
        self._buffered = 0
        raise HTTP2ProtocolError(code, reason)

    def _stream_error(self, sid: int, code: ErrorCode) -> None:
        """RST_STREAM for a client's error on ``sid`` (section 5.4.2)."""
        self.resets += 1
        self._out.append(frame(RST_STREAM, 0, sid, U32.pack(code)))
        if self._streams.pop(sid, None) is not None:
            self._remember(sid, RESET_BY_US)
            self._events.append(StreamReset(sid, code, False))

    def _remember(self, sid: int, how: int) -> None:
        closed = self._closed
        closed[sid] = how
        if len(closed) > 2 * CLOSED_KEPT:
            self._closed = dict(islice(closed.items(), CLOSED_KEPT, None))

    def _idle(self, sid: int) -> bool:
        """Whether ``sid`` names a stream the client has not opened (section 5.1)."""
        return sid > self.highest_inbound_stream_id or (
            not sid & 1 and sid not in self._streams and sid not in self._closed
        )

    def _flow_in(self, n: int) -> None:
        """Count ``n`` octets against the connection window; replenish it at half."""
        self._recv_window -= n
        if self._recv_window < 0:
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, "the connection window was exceeded")
        used = self._recv_used + n
        if used >= DEFAULT_WINDOW // 2:
            self._recv_window += used
            self._out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(used)))
            used = 0
        self._recv_used = used

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        # Section 6.1.
        if not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flags & PADDED:
            if not flow or payload[0] >= flow:
                self._fail(ErrorCode.PROTOCOL_ERROR, "DATA padding longer than the payload")
            data = payload[1 : flow - payload[0]]
        else:
            data = payload
        self._flow_in(flow)
        stream = self._streams.get(sid)
        if stream is None:
            if self._idle(sid):
                self._fail(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            if self._closed.get(sid) != RESET_BY_US:
                self._stream_error(sid, ErrorCode.STREAM_CLOSED)
            return
        if stream.state == REMOTE_CLOSED:
            self._stream_error(sid, ErrorCode.STREAM_CLOSED)
            return
        stream.recv_window -= flow
        if stream.recv_window < 0:
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR)
            return
        ended = bool(flags & END_STREAM)
        if ended:
            self._remote_end(sid, stream)
        self._events.append(DataReceived(sid, data, flow, ended))

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        # Section 6.2.
        if not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if not sid & 1:
            self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS on an even-numbered stream")
        start = 0
        end = len(payload)
        if flags & PADDED:
            if not end or payload[0] >= end:
                self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS padding longer than the payload")
            start = 1
            end -= payload[0]
        bad = False
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            # RFC 7540 section 5.3.1: a stream cannot depend on itself.
            bad = U32.unpack_from(payload, start)[0] & MAX_WINDOW == sid
            start += 5
        fragment = payload[start:end] if start or end < len(payload) else payload
        if flags & END_HEADERS:
            self._header_block(sid, flags, fragment, bad)
            return
        if len(fragment) > self.max_header_list_size:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "a header block larger than allowed")
        self._block = [fragment]
        self._block_size = len(fragment)
        self._block_sid = sid
        self._block_flags = flags
        self._block_bad = bad

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        # Section 6.10.
        if not self._block_sid or sid != self._block_sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "CONTINUATION outside a header block")
        self._block_size += len(payload)
        if self._block_size > self.max_header_list_size:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "a header block larger than allowed")
        self._block.append(payload)
        if len(self._block) > MAX_CONTINUATIONS:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "a header block in too many frames")
        if flags & END_HEADERS:
            block = b"".join(self._block)
            self._block = []
            self._block_sid = 0
            self._header_block(sid, self._block_flags, block, self._block_bad)

    def _header_block(self, sid: int, flags: int, block: bytes, bad: bool) -> None:
        """A complete header block on ``sid``: a request, trailers or an error."""
        try:
            headers = self.decoder.decode(block)
        except HeaderListTooLarge:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "a header list larger than allowed")
        except HpackError:
            self._fail(ErrorCode.COMPRESSION_ERROR, "a header block that cannot be decoded")
        ended = bool(flags & END_STREAM)
        streams = self._streams
        stream = streams.get(sid)
        if stream is None:
            if sid > self.highest_inbound_stream_id:
                self.highest_inbound_stream_id = sid
                if bad:
                    self._stream_error(sid, ErrorCode.PROTOCOL_ERROR)
                    self._remember(sid, RESET_BY_US)
                elif len(streams) >= self.max_concurrent_streams:
                    self._stream_error(sid, ErrorCode.REFUSED_STREAM)
                    self._remember(sid, RESET_BY_US)
                else:
                    streams[sid] = _Stream(
                        REMOTE_CLOSED if ended else OPEN,
                        self._remote_initial,
                        self._local_initial,
                    )
                    self._events.append(RequestReceived(sid, headers, ended))
                return
            how = self._closed.get(sid)
            if how is None:
                self._fail(ErrorCode.PROTOCOL_ERROR, "a stream id lower than one already used")
            if how != RESET_BY_US:
                self._stream_error(sid, ErrorCode.STREAM_CLOSED)
            return
        if bad:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR)
        elif stream.state == REMOTE_CLOSED:
            self._stream_error(sid, ErrorCode.STREAM_CLOSED)
        elif not ended:
            # Section 8.1: a second header section is trailers, which end the stream.
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR)
        else:
            self._remote_end(sid, stream)
            self._events.append(TrailersReceived(sid, headers))

    def _remote_end(self, sid: int, stream: _Stream) -> None:
        if stream.state == LOCAL_CLOSED:
            del self._streams[sid]
            self._remember(sid, ENDED)
        else:
            stream.state = REMOTE_CLOSED

    # -- sending --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes queued for the client since the last call."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _sendable(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.state == LOCAL_CLOSED or self.closed:
            raise StreamClosedError(f"stream {stream_id} is closed")
        return stream

    def send_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> None:
        """Send a header block (a response head or trailers) on an open stream.

        Raises:
            StreamClosedError: the stream is closed, or our side of it has ended.
        """
        stream = self._sendable(stream_id)
        block = self.encoder.encode(headers)
        flags = END_STREAM if end_stream else 0
        size = self.max_outbound_frame_size
        if len(block) <= size:
            self._out.append(frame(HEADERS, flags | END_HEADERS, stream_id, block))
        else:
            # Section 6.10: the rest of the block follows in CONTINUATION frames.
            out = self._out
            out.append(frame(HEADERS, flags, stream_id, block[:size]))
            for at in range(size, len(block), size):
                last = at + size >= len(block)
                out.append(
                    frame(
                        CONTINUATION, END_HEADERS if last else 0, stream_id, block[at : at + size]
                    )
                )
        if end_stream:
            self._local_end(stream_id, stream)

    def send_window(self, stream_id: int) -> int:
        """How many octets of DATA may be sent on the stream now (section 5.2).

        Raises:
            StreamClosedError: the stream is closed, or our side of it has ended.
        """
        stream = self._sendable(stream_id)
        window = stream.send_window
        return window if window < self._send_window else self._send_window

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send one DATA frame; ``data`` must fit ``send_window`` and the frame size.

        Raises:
            StreamClosedError: the stream is closed, or our side of it has ended.
            ValueError: ``data`` is larger than the window or the client's frame size.
        """
        stream = self._sendable(stream_id)
        n = len(data)
        if n > stream.send_window or n > self._send_window or n > self.max_outbound_frame_size:
            raise ValueError("DATA larger than the flow-control window or the frame size")
        stream.send_window -= n
        self._send_window -= n
        out = self._out
        out.append(pack_head(n >> 16, n & 0xFFFF, DATA, END_STREAM if end_stream else 0, stream_id))
        if n:
            out.append(data)
        if end_stream:
            self._local_end(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream with an empty DATA frame.

        Raises:
            StreamClosedError: the stream is closed, or our side of it has ended.
        """
        self.send_data(stream_id, b"", end_stream=True)

    def _local_end(self, sid: int, stream: _Stream) -> None:
        if stream.state == REMOTE_CLOSED:
            del self._streams[sid]
            self._remember(sid, ENDED)
        else:
            stream.state = LOCAL_CLOSED

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Close a stream with RST_STREAM; nothing if it is closed already."""
        if self.closed or self._streams.pop(stream_id, None) is None:
            return
        self._remember(stream_id, RESET_BY_US)
        self._out.append(frame(RST_STREAM, 0, stream_id, U32.pack(error_code)))

    def open_window(self, stream_id: int, n: int) -> None:
        """Reopen a stream's receive window by ``n`` octets the application has taken.

        The WINDOW_UPDATE goes out once half the initial window has been taken, not
        for every message: the client's window then never falls below half of it
        when the application keeps up, and a stream of small messages (a WebSocket)
        costs one WINDOW_UPDATE per half window instead of one each. Nothing if the
        stream is closed or the client has ended its side (no more DATA can come).
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.state == REMOTE_CLOSED or n <= 0 or self.closed:
            return
        taken = stream.taken + n
        if taken < self._local_initial >> 1:
            stream.taken = taken
            return
        stream.taken = 0
        stream.recv_window += taken
        self._out.append(frame(WINDOW_UPDATE, 0, stream_id, U32.pack(taken)))

    def ping(self, data: bytes) -> None:
        """Send a PING with 8 octets of ``data``."""
        if len(data) != 8:
            raise ValueError("PING data must be 8 octets")
        self._out.append(frame(PING, 0, 0, data))

    def send_goaway(self, error_code: int) -> None:
        """Send GOAWAY with the highest stream id received (section 6.8)."""
        if self.closed:
            return
        payload = U32.pack(self.highest_inbound_stream_id) + U32.pack(error_code)
        self._out.append(frame(GOAWAY, 0, 0, payload))

    def close(self, error_code: int) -> None:
        """GOAWAY, and process nothing more (a limit broken, or a timeout)."""
        self.send_goaway(error_code)
        self.closed = True

    @property
    def open_streams(self) -> int:
        """Streams open or half-closed (what SETTINGS_MAX_CONCURRENT_STREAMS counts)."""
        return len(self._streams)


_HANDLERS: Final = (
    HTTP2Connection._on_data,
    HTTP2Connection._on_headers,
    _control.on_priority,
    _control.on_rst_stream,
    _control.on_settings,
    _control.on_push_promise,
    _control.on_ping,
    _control.on_goaway,
    _control.on_window_update,
    HTTP2Connection._on_continuation,
)
