"""Tests for tidings.wire.http2_events: the error codes, the error tree, the events."""

from __future__ import annotations

from tidings.wire import http2, http2_events
from tidings.wire.http2_events import (
    ErrorCode,
    HTTP2Error,
    HTTP2ProtocolError,
    StreamClosedError,
    StreamReset,
)


def test_error_codes_are_those_of_rfc_9113_section_7() -> None:
    assert [(c.name, c.value) for c in ErrorCode][:3] == [
        ("NO_ERROR", 0),
        ("PROTOCOL_ERROR", 1),
        ("INTERNAL_ERROR", 2),
    ]
    assert ErrorCode.ENHANCE_YOUR_CALM == 0xB
    assert ErrorCode.HTTP_1_1_REQUIRED == 0xD
    assert len(ErrorCode) == 14


def test_a_protocol_error_carries_its_code_and_reason() -> None:
    exc = HTTP2ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING not of 8 octets")
    assert (exc.error_code, exc.reason) == (ErrorCode.FRAME_SIZE_ERROR, "PING not of 8 octets")
    assert str(exc) == "FRAME_SIZE_ERROR: PING not of 8 octets"
    assert isinstance(exc, HTTP2Error)
    assert issubclass(StreamClosedError, HTTP2Error)


def test_events_have_slots_only() -> None:
    event = StreamReset(3, ErrorCode.CANCEL, True)
    assert (event.stream_id, event.error_code, event.remote) == (3, 8, True)
    assert not hasattr(event, "__dict__")


def test_http2_re_exports_every_name() -> None:
    assert set(http2_events.__all__) <= set(http2.__all__)
    for name in http2_events.__all__:
        assert getattr(http2, name) is getattr(http2_events, name)
