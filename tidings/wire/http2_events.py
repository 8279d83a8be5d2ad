"""What the HTTP/2 connection core reports: error codes, errors and events.

The vocabulary of ``tidings.wire.http2`` (which re-exports every name here): the error
codes of RFC 9113 section 7, the exceptions ``HTTP2Connection`` raises, and the events
``receive_data`` returns. Events are plain classes with ``__slots__``: one is made per
request or DATA frame, so they are kept as cheap to build as a tuple. Nothing here
parses or keeps state.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "Event",
    "HTTP2Error",
    "HTTP2ProtocolError",
    "PingAcknowledged",
    "RequestReceived",
    "SettingsChanged",
    "StreamClosedError",
    "StreamReset",
    "TrailersReceived",
    "WindowUpdated",
]


class ErrorCode(IntEnum):
    """Error codes of RST_STREAM and GOAWAY (RFC 9113 section 7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class HTTP2Error(Exception):
    """Root of this module's errors.

    ::

        HTTP2Error
         +-- HTTP2ProtocolError(error_code, reason)  the client broke the protocol: GOAWAY queued
         +-- StreamClosedError                       sending on a stream that can't carry it
    """


class HTTP2ProtocolError(HTTP2Error):
    """A connection error (RFC 9113 section 5.4.1): GOAWAY ``error_code`` is queued."""

    def __init__(self, error_code: ErrorCode, reason: str) -> None:
        super().__init__(f"{error_code.name}: {reason}")
        self.error_code = error_code
        self.reason = reason


class StreamClosedError(HTTP2Error):
    """The stream is closed (or our side of it ended): nothing more can be sent on it."""


# -- events -------------------------------------------------------------------------------


class RequestReceived:
    """A new stream's header block; ``ended`` when the HEADERS frame had END_STREAM."""

    __slots__ = ("ended", "headers", "stream_id")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.ended = ended


class DataReceived:
    """A DATA frame's content; ``flow_controlled_length`` counts its padding too."""

    __slots__ = ("data", "ended", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes, flow: int, ended: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow
        self.ended = ended


class TrailersReceived:
    """A request's trailer section (RFC 9113 section 8.1): it always ends the stream."""

    __slots__ = ("headers", "stream_id")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class StreamReset:
    """The stream is closed by RST_STREAM: the client's (``remote``) or ours, for its error."""

    __slots__ = ("error_code", "remote", "stream_id")

    def __init__(self, stream_id: int, error_code: int, remote: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote


class WindowUpdated:
    """The client opened a send window: a stream's, or the connection's (``stream_id`` 0)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class SettingsChanged:
    """The client's SETTINGS were applied (and acknowledged); ``changed`` by identifier."""

    __slots__ = ("changed",)

    def __init__(self, changed: dict[int, int]) -> None:
        self.changed = changed


class PingAcknowledged:
    """The client acknowledged one of our PINGs."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class ConnectionTerminated:
    """The client sent GOAWAY (RFC 9113 section 6.8)."""

    __slots__ = ("additional_data", "error_code", "last_stream_id")

    def __init__(self, error_code: int, last_stream_id: int, additional_data: bytes) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.additional_data = additional_data


Event = (
    RequestReceived
    | DataReceived
    | TrailersReceived
    | StreamReset
    | WindowUpdated
    | SettingsChanged
    | PingAcknowledged
    | ConnectionTerminated
)
