"""tidings.wire.http11: request-head rules and response framing, without a loop."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.wire import http11
from tidings.wire.http11 import (
    CHUNKED,
    CONTINUE,
    LAST_CHUNK,
    NO_BODY,
    REQUEST_CHUNKED,
    REQUEST_LENGTH,
    REQUEST_NO_BODY,
    UNTIL_CLOSE,
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

# -- request head ---------------------------------------------------------------------


def _check(
    version: str = "1.1",
    *,
    host_count: int = 1,
    te: bytes | None = None,
    length: int = -1,
    max_body: int = 100,
) -> RequestHead:
    return check_request_head(
        version,
        host_count=host_count,
        transfer_encoding=te,
        content_length=length,
        max_body_size=max_body,
    )


@pytest.mark.parametrize(
    ("version", "host_count", "te", "length", "head"),
    [
        ("1.1", 1, None, -1, RequestHead("1.1", REQUEST_NO_BODY, -1)),
        ("1.1", 1, None, 0, RequestHead("1.1", REQUEST_LENGTH, 0)),
        ("1.1", 1, None, 100, RequestHead("1.1", REQUEST_LENGTH, 100)),  # exactly the limit
        ("1.0", 0, None, -1, RequestHead("1.0", REQUEST_NO_BODY, -1)),  # 1.0 may omit Host
        ("1.0", 1, None, 5, RequestHead("1.0", REQUEST_LENGTH, 5)),
        ("1.1", 1, b"chunked", -1, RequestHead("1.1", REQUEST_CHUNKED, -1)),
        ("1.1", 1, b"Chunked , chunked", -1, RequestHead("1.1", REQUEST_CHUNKED, -1)),
        # Transfer-Encoding overrides Content-Length (RFC 9112 section 6.3 item 3).
        ("1.1", 1, b"chunked", 5000, RequestHead("1.1", REQUEST_CHUNKED, -1)),
    ],
)
def test_acceptable_request_heads_pass(
    version: str, host_count: int, te: bytes | None, length: int, head: RequestHead
) -> None:
    assert _check(version, host_count=host_count, te=te, length=length) == head


def test_a_request_head_is_frozen() -> None:
    head = _check()
    with pytest.raises(AttributeError):
        head.version = "1.0"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("version", "host_count", "te", "length", "status", "reason"),
    [
        ("2.0", 1, None, -1, 505, "HTTP/2.0 is not supported"),
        ("0.9", 1, None, -1, 505, "not supported"),
        ("1.1", 0, None, -1, 400, "missing or repeated Host"),
        ("1.1", 2, None, -1, 400, "missing or repeated Host"),
        ("1.0", 2, None, -1, 400, "missing or repeated Host"),
        ("1.0", 1, b"chunked", -1, 400, "HTTP/1.0"),
        ("1.1", 1, b"chunked, gzip", -1, 400, "not the final"),
        ("1.1", 1, b"identity", -1, 400, "not the final"),
        ("1.1", 1, b"gzip, chunked", -1, 501, "unsupported transfer coding"),
        ("1.1", 1, None, 101, 413, "--max-body-size"),
    ],
)
def test_refused_request_heads_carry_their_status(
    version: str, host_count: int, te: bytes | None, length: int, status: int, reason: str
) -> None:
    with pytest.raises(RequestError, match=reason) as info:
        _check(version, host_count=host_count, te=te, length=length)
    assert info.value.status == status
    assert reason in info.value.reason


# -- response head --------------------------------------------------------------------


def _frame(
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    declared: int = -1,
    body_length: int = -1,
    is_head: bool = False,
    http10: bool = False,
    trailers: bool = False,
    keep_alive: bool = True,
    date: bytes = b"",
) -> tuple[bytes, int, bool]:
    return frame_response(
        status,
        headers or [],
        declared_length=declared,
        body_length=body_length,
        is_head=is_head,
        http10=http10,
        trailers=trailers,
        keep_alive=keep_alive,
        date=date,
    )


def test_status_lines() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"  # no reason phrase known
    assert _frame(599, body_length=0)[0].startswith(b"HTTP/1.1 599 \r\n")


def test_known_length_is_declared_and_the_date_follows_the_status_line() -> None:
    head, framing, keep = _frame(body_length=5, date=b"date: D\r\n")
    assert head == b"HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 5\r\n\r\n"
    assert (framing, keep) == (5, True)


def test_the_app_content_length_is_kept_and_written_once() -> None:
    fields = [(b"Content-Length", b"3"), (b"x-a", b"1"), (b"content-length", b"3")]
    head, framing, _ = _frame(headers=fields, declared=3, body_length=-1)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nx-a: 1\r\n\r\n"
    assert framing == 3


def test_streamed_body_is_chunked_and_app_framing_fields_are_dropped() -> None:
    fields = [(b"Transfer-Encoding", b"chunked"), (b"Connection", b"keep-alive")]
    head, framing, keep = _frame(headers=fields)
    assert head == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert (framing, keep) == (CHUNKED, True)


def test_app_transfer_encoding_means_chunked_even_with_a_known_body() -> None:
    head, framing, _ = _frame(headers=[(b"transfer-encoding", b"chunked")], body_length=4)
    assert framing == CHUNKED
    assert b"content-length" not in head


def test_announced_trailers_force_chunked() -> None:
    head, framing, _ = _frame(body_length=4, trailers=True)
    assert framing == CHUNKED
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")


def test_connection_close_from_the_app_ends_the_connection() -> None:
    head, framing, keep = _frame(headers=[(b"Connection", b"Close")], body_length=0)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert (framing, keep) == (0, False)


def test_no_keep_alive_is_announced() -> None:
    head, _, keep = _frame(body_length=0, keep_alive=False)
    assert head.endswith(b"connection: close\r\n\r\n")
    assert not keep


@pytest.mark.parametrize("status", [100, 103, 204, 304])
def test_statuses_without_a_body(status: int) -> None:
    head, framing, keep = _frame(status, [(b"content-length", b"9")], declared=9, body_length=-1)
    assert framing == NO_BODY
    assert keep
    assert b"transfer-encoding" not in head
    assert head.count(b"content-length") == 1  # the app's, as it sent it


def test_head_keeps_the_declared_length_and_sends_no_body() -> None:
    head, framing, _ = _frame(headers=[(b"content-length", b"7")], declared=7, is_head=True)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n"
    assert framing == NO_BODY


def test_head_with_an_empty_body_claims_no_length() -> None:
    head, framing, _ = _frame(body_length=0, is_head=True)
    assert head == b"HTTP/1.1 200 OK\r\n\r\n"
    assert framing == NO_BODY


def test_head_with_a_body_declares_its_length() -> None:
    head, framing, _ = _frame(body_length=3, is_head=True)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"
    assert framing == NO_BODY


def test_head_with_a_streamed_body_is_not_chunked() -> None:
    head, framing, keep = _frame(is_head=True)
    assert head == b"HTTP/1.1 200 OK\r\n\r\n"
    assert (framing, keep) == (NO_BODY, True)


def test_http10_stream_ends_with_the_connection() -> None:
    head, framing, keep = _frame(http10=True)
    assert head == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert (framing, keep) == (UNTIL_CLOSE, False)


def test_http10_keep_alive_is_announced() -> None:
    head, framing, keep = _frame(http10=True, body_length=2)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
    assert (framing, keep) == (2, True)


def test_the_memo_of_plain_names_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http11, "_PLAIN_NAMES_MAX", 0)
    head, _, _ = _frame(headers=[(b"X-Never-Seen-Before", b"1")], body_length=0)
    assert b"X-Never-Seen-Before: 1\r\n" in head
    assert b"X-Never-Seen-Before" not in http11._PLAIN_NAMES
    monkeypatch.undo()
    _frame(headers=[(b"X-Never-Seen-Before", b"1")], body_length=0)
    assert b"X-Never-Seen-Before" in http11._PLAIN_NAMES


# -- body framing ---------------------------------------------------------------------


def test_chunks_and_trailers() -> None:
    assert encode_chunk(b"") == []
    assert b"".join(encode_chunk(b"x" * 26)) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert last_chunk(trailers=False) == LAST_CHUNK == b"0\r\n\r\n"
    assert last_chunk(trailers=True) == b"0\r\n"
    fields = [(b"x-sum", b"1"), (b"x-b", b"")]
    assert encode_trailers(fields, more=True) == b"x-sum: 1\r\nx-b: \r\n"
    assert encode_trailers(fields, more=False) == b"x-sum: 1\r\nx-b: \r\n\r\n"
    assert encode_trailers((), more=False) == b"\r\n"
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_simple_response() -> None:
    assert simple_response(400) == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 12\r\nconnection: close\r\n\r\nBad Request\n"
    )
    assert simple_response(503, "Busy \u2026", close=False) == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 9\r\n\r\nBusy \xe2\x80\xa6\n"
    )


# -- property: what we frame, a parser reads back -------------------------------------


class _Reader:
    """Collects what httptools' response parser reports."""

    parser: httptools.HttpResponseParser

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.head_done = False
        self.complete = False
        self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.head_done else self.headers).append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        # llhttp's answer is only meaningful until the message is done.
        self.keep_alive = self.parser.should_keep_alive()


_STATUSES = st.sampled_from([100, 103, 200, 201, 204, 206, 304, 400, 404, 500, 599])
_NAMES = st.sampled_from([b"x-a", b"Content-Type", b"Connection", b"Transfer-Encoding", b"vary"])
_VALUES = st.sampled_from([b"", b"close", b"keep-alive", b"chunked", b"text/plain", b"a, b"])


@given(
    status=_STATUSES,
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    body=st.binary(max_size=40),
    declare=st.integers(0, 2),  # how many Content-Length fields the app sends
    streamed=st.booleans(),
    is_head=st.booleans(),
    http10=st.booleans(),
    trailers=st.booleans(),
    keep_alive=st.booleans(),
)
def test_a_parser_reads_back_the_framing(
    status: int,
    fields: list[tuple[bytes, bytes]],
    body: bytes,
    declare: int,
    streamed: bool,
    is_head: bool,
    http10: bool,
    trailers: bool,
    keep_alive: bool,
) -> None:
    fields = fields + [(b"content-length", b"%d" % len(body))] * declare
    head, framing, keep = _frame(
        status,
        fields,
        declared=len(body) if declare else -1,
        body_length=-1 if streamed else len(body),
        is_head=is_head,
        http10=http10,
        trailers=trailers,
        keep_alive=keep_alive,
        date=b"date: Mon, 07 Dec 2026 20:00:00 GMT\r\n",
    )
    reader = _Reader()
    parser = reader.parser = httptools.HttpResponseParser(reader)
    parser.feed_data(head)
    assert reader.head_done
    assert parser.get_status_code() == status
    names = [n for n, _ in reader.headers]
    # Framing is ours: one framing field at most, never both (RFC 9112 section 6.3).
    assert names.count(b"content-length") <= 1
    assert names.count(b"transfer-encoding") <= 1
    assert not (b"content-length" in names and b"transfer-encoding" in names)
    assert (framing == CHUNKED) == (b"transfer-encoding" in names)
    assert names.count(b"connection") == (not keep or http10)
    if any(n.lower() == b"connection" and b"close" in v for n, v in fields):
        assert not keep
    if not keep_alive:
        assert not keep
    if framing == NO_BODY:
        assert is_head or status < 200 or status in (204, 304)
        return
    assert not is_head
    if framing == UNTIL_CLOSE:
        assert http10 and not keep
        return
    if framing == CHUNKED:
        sent = [*encode_chunk(body), last_chunk(trailers=trailers)]
        if trailers:
            sent.append(encode_trailers([(b"x-sum", b"%d" % len(body))], more=False))
        parser.feed_data(b"".join(sent))
        assert reader.trailers == ([(b"x-sum", b"%d" % len(body))] if trailers else [])
    else:
        assert framing == len(body)
        parser.feed_data(body)
    assert reader.complete
    assert reader.body == body
    assert reader.keep_alive == keep
