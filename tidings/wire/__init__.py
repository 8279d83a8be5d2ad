"""Sans-I/O protocol cores: bytes in, events out, bytes to send (stdlib only).

``tidings.wire`` never imports asyncio, sockets, Django or any third-party package; the
server's transports drive it. WebSocket pieces:

* ``handshake``: validate the opening handshake, build the 101 or error response;
* ``deflate``: permessage-deflate negotiation and per-message (de)compression;
* ``frames``: opcodes, close codes, the client-frame parser, server-frame encoders;
* ``websocket``: ``WebSocketConnection``, the per-connection state machine.

HTTP pieces: ``headers`` checks the header fields an application sends
(``check_fields``; ``InvalidField``, a ``ValueError``, says what was wrong);
``http11`` holds the HTTP/1.1 request-head rules (``check_request_head``) and the
one writer of response heads (``frame_response``) with chunk and trailer framing.
``http2`` is the server side of an HTTP/2 connection (``HTTP2Connection``; its error
codes, errors and events in ``http2_events``), with HPACK in ``hpack``; import them
from their modules.

Error tree (all importable from here)::

    WebSocketError
     +-- ProtocolError(code, reason)            answer with WebSocket close `code`
     +-- ConnectionClosedError                  sending after the closing handshake began
     +-- HandshakeError(status, reason, headers)  answer with HTTP `status`
    RequestError(status, reason)                an HTTP/1.1 request refused with `status`
    InvalidField                                a response field we must not send (ValueError)
"""

from __future__ import annotations

from tidings.wire.deflate import DeflateConfig, PerMessageDeflate, negotiate_deflate
from tidings.wire.frames import (
    CloseCode,
    ConnectionClosedError,
    Frame,
    FrameParser,
    Opcode,
    ProtocolError,
    WebSocketError,
    apply_mask,
    encode_bytes,
    encode_frame,
    encode_message,
    encode_text,
    is_valid_close_code,
)
from tidings.wire.handshake import (
    ExtensionOffer,
    HandshakeError,
    HandshakeRequest,
    accept_key,
    build_accept_response,
    build_error_response,
    parse_extensions,
    parse_request,
)
from tidings.wire.headers import InvalidField, check_fields
from tidings.wire.http11 import (
    RequestError,
    RequestHead,
    check_request_head,
    encode_chunk,
    encode_trailers,
    frame_response,
    last_chunk,
    simple_response,
    status_line,
)
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

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "BytesMessage",
    "CloseCode",
    "CloseReceived",
    "ConnectionClosedError",
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionState",
    "DeflateConfig",
    "Event",
    "ExtensionOffer",
    "Frame",
    "FrameParser",
    "HandshakeError",
    "HandshakeRequest",
    "InvalidField",
    "Opcode",
    "PerMessageDeflate",
    "PingReceived",
    "PongReceived",
    "ProtocolError",
    "RequestError",
    "RequestHead",
    "TextMessage",
    "WebSocketConnection",
    "WebSocketError",
    "accept_key",
    "apply_mask",
    "build_accept_response",
    "build_error_response",
    "check_fields",
    "check_request_head",
    "encode_bytes",
    "encode_chunk",
    "encode_frame",
    "encode_message",
    "encode_text",
    "encode_trailers",
    "frame_response",
    "is_valid_close_code",
    "last_chunk",
    "negotiate_deflate",
    "parse_extensions",
    "parse_request",
    "simple_response",
    "status_line",
]
