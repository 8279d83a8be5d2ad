"""HTTP/1.1 rules as a sans-I/O core: request-head checks and response framing.

Theory of operation
-------------------
The server's transport tokenizes requests (httptools, in ``tidings.server``) and
hands the few facts the protocol cares about to ``check_request_head``, which
applies the request rules of RFC 9112 and RFC 9110 (version, ``Host``, the
``Transfer-Encoding``/``Content-Length`` framing, the body size limit) and either
returns a frozen ``RequestHead`` (the version and how the body is delimited) or
raises ``RequestError`` carrying the status to answer with.

On the way out, ``frame_response`` is the one writer of response heads: from the
status, the application's header fields (already checked by
``tidings.wire.headers.check_fields``) and what is known of the body, it decides
how the body is delimited (RFC 9112 section 6.3) and whether the connection can
be reused (RFC 9112 section 9.6), and returns the head bytes with that decision.
The body then goes out as it is, or through ``encode_chunk``, ``LAST_CHUNK`` and
``encode_trailers`` when it is chunked (RFC 9112 section 7.1).

Invariants:
- Framing is ours: an application's ``Transfer-Encoding`` and ``Connection``
  fields are never copied to the wire; a repeated identical ``Content-Length``
  is written once.
- A response that has no body (1xx, 204, 304, any answer to HEAD) is never
  chunked, so chunk framing and trailers only ever follow a chunked head.

The hot path is one call to ``check_request_head`` per request and one to
``frame_response`` per response, arguments by position, and a tuple back from each
(``RequestHead`` is a named tuple). Nothing here knows about asyncio, sockets or ASGI
messages.
"""

from __future__ import annotations

import http
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "CHUNKED",
    "CONTINUE",
    "LAST_CHUNK",
    "NO_BODY",
    "REQUEST_CHUNKED",
    "REQUEST_LENGTH",
    "REQUEST_NO_BODY",
    "UNTIL_CLOSE",
    "RequestError",
    "RequestHead",
    "check_request_head",
    "encode_chunk",
    "encode_trailers",
    "frame_response",
    "last_chunk",
    "simple_response",
    "status_line",
]

# -- request side ---------------------------------------------------------------------


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestHead(NamedTuple):
    """A request head that passed the rules of RFC 9112: immutable, made once per request.

    ``body`` says how the request body is delimited (RFC 9112 section 6.3):
    ``REQUEST_NO_BODY``, ``REQUEST_CHUNKED`` or ``REQUEST_LENGTH`` (then
    ``content_length`` bytes; otherwise ``content_length`` is -1).
    """

    version: str
    body: int
    content_length: int


#: How a request body is delimited (``RequestHead.body``).
REQUEST_NO_BODY: Final = 0
REQUEST_CHUNKED: Final = 1
REQUEST_LENGTH: Final = 2


# Heads without a length are the same for every request: made once, so that the common
# request (a GET) costs no allocation here.
_NO_BODY_HEADS: Final = {v: RequestHead(v, REQUEST_NO_BODY, -1) for v in ("1.1", "1.0")}
_CHUNKED_HEADS: Final = {v: RequestHead(v, REQUEST_CHUNKED, -1) for v in ("1.1", "1.0")}


def check_request_head(
    version: str,
    host_count: int,
    transfer_encoding: bytes | None,
    content_length: int,
    max_body_size: int,
) -> RequestHead:
    """Apply the request-head rules of RFC 9112 to what the tokenizer found.

    The server passes the arguments by position (once per request: cheaper).

    Args:
        version: the request's HTTP version, ``"1.1"`` or ``"1.0"`` for ones we serve.
        host_count: how many ``Host`` fields the request has.
        transfer_encoding: its ``Transfer-Encoding`` values joined by commas, or None.
        content_length: its ``Content-Length`` (validated digits), or -1.
        max_body_size: the largest request body accepted.

    Returns:
        The checked head, with how its body is delimited.

    Raises:
        RequestError: with the status to answer: 505 for a version we don't
            serve, 400 for a missing or repeated ``Host`` or a faulty framing,
            501 for a transfer coding we don't implement, 413 for a declared
            body over ``max_body_size``.
    """
    if version != "1.1" and version != "1.0":
        # RFC 9110 section 15.6.6: 505 for a major version we don't support.
        raise RequestError(505, f"HTTP/{version} is not supported")
    # RFC 9112 section 3.2: a server MUST respond with 400 to an HTTP/1.1
    # request without Host, or to any request with more than one Host field.
    if host_count != 1 and (host_count > 1 or version == "1.1"):
        raise RequestError(400, "missing or repeated Host header")
    if transfer_encoding is not None:
        # RFC 9112 section 6.3 item 3: Transfer-Encoding overrides Content-Length
        # (llhttp refuses a request with both unless lenient; the coding decides).
        _check_transfer_coding(version, transfer_encoding)
        return _CHUNKED_HEADS[version]
    if content_length > max_body_size:
        raise RequestError(413, "request body larger than --max-body-size")
    if content_length < 0:
        # RFC 9112 section 6.3 item 7: a request without either has no body.
        return _NO_BODY_HEADS[version]
    return RequestHead(version, REQUEST_LENGTH, content_length)


def _check_transfer_coding(version: str, transfer_encoding: bytes) -> None:
    if version == "1.0":
        # RFC 9112 section 6.1: a server MUST treat the framing of an HTTP/1.0
        # message with Transfer-Encoding as faulty.
        raise RequestError(400, "Transfer-Encoding in an HTTP/1.0 request")
    codings = [c.strip().lower() for c in transfer_encoding.split(b",")]
    if codings[-1] != b"chunked":
        # RFC 9112 section 6.3 item 4: the body length can't be determined.
        raise RequestError(400, "chunked is not the final transfer coding")
    if any(c != b"chunked" for c in codings):
        # RFC 9112 section 6.1: 501 for a transfer coding we don't implement.
        raise RequestError(501, "unsupported transfer coding")


# -- response side --------------------------------------------------------------------


class _StatusLines(dict[int, bytes]):
    """Status lines by code (RFC 9112 section 4); a code without a phrase gets none."""

    def __missing__(self, status: int) -> bytes:
        return b"HTTP/1.1 %d \r\n" % status


_STATUS_LINES: Final = _StatusLines(
    (s.value, f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii")) for s in http.HTTPStatus
)

#: Body framing decided by ``frame_response``, besides a fixed length (``>= 0``).
#: ``UNTIL_CLOSE``: the body ends when the connection does (an HTTP/1.0 stream).
UNTIL_CLOSE: Final = -1
#: ``CHUNKED``: the body goes out with ``encode_chunk`` and ends with ``LAST_CHUNK``.
CHUNKED: Final = -2
#: ``NO_BODY``: whatever body the application sends is not written (1xx, 204,
#: 304, or an answer to HEAD; RFC 9112 section 6.3 item 1).
NO_BODY: Final = -3

#: The interim response to ``Expect: 100-continue`` (RFC 9110 section 10.1.1).
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The last chunk and an empty trailer section (RFC 9112 section 7.1).
LAST_CHUNK: Final = b"0\r\n\r\n"
# The last chunk when trailer fields follow (RFC 9112 section 7.1.2).
_LAST_CHUNK_OPEN: Final = b"0\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>`` and CRLF (RFC 9112 section 4); no reason if unknown."""
    return _STATUS_LINES[status]


def frame_response(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    declared_length: int,
    body_length: int,
    is_head: bool,
    http10: bool,
    trailers: bool,
    keep_alive: bool,
    date: bytes = b"",
) -> tuple[bytes, int, bool]:
    """Build a response head and decide how its body is framed.

    It runs once per response: the server passes the arguments by position, which
    costs less than by keyword; tests name them.

    Args:
        status: the response status, 100 to 599.
        headers: the application's fields, checked by ``check_fields``.
        declared_length: the ``Content-Length`` they declare (what ``check_fields``
            returned), or -1.
        body_length: the whole body's length when it is known now, or -1 when it
            streams.
        is_head: the request's method is HEAD.
        http10: the request is HTTP/1.0.
        trailers: the application announced trailer fields.
        keep_alive: whether the connection may serve another request, as far
            as the request and the server are concerned.
        date: a ready ``date: ...`` field line, or nothing.

    Returns:
        ``(head, framing, keep_alive)``: the head bytes; the body's framing, a
        length (``>= 0``), ``UNTIL_CLOSE``, ``CHUNKED`` or ``NO_BODY``; and
        whether the connection may be reused after this response.
    """
    lines = [_STATUS_LINES[status], date]
    length_seen = False
    app_chunked = False
    plain = _PLAIN_NAMES
    for name, value in headers:
        if name not in plain:
            lname = name.lower()
            if lname == b"content-length":
                if length_seen:
                    continue  # a repeated identical value (check_fields): send it once
                length_seen = True
            elif lname == b"transfer-encoding":
                # Framing is ours to choose (RFC 9112 section 6.1); the app asking
                # for chunked only means it doesn't want a length computed for it.
                app_chunked = True
                continue
            elif lname == b"connection":
                # RFC 9112 section 9.6: "close" means this is the last response.
                # The field itself is hop-by-hop: we write our own.
                if b"close" in value.lower():
                    keep_alive = False
                continue
            elif len(plain) < _PLAIN_NAMES_MAX:
                plain.add(name)
        lines += (name, b": ", value, b"\r\n")
    if status in _BODYLESS:
        framing = NO_BODY
    elif declared_length >= 0:
        framing = declared_length
    elif body_length >= 0 and not app_chunked and not trailers:
        if body_length or not is_head:
            # An empty body to HEAD is no claim about what GET would send
            # (RFC 9110 section 9.3.2): leave the length out rather than say 0.
            lines.append(b"content-length: %d\r\n" % body_length)
        framing = body_length
    elif is_head:
        framing = NO_BODY
    elif http10:
        # RFC 9112 section 6.3 item 8: an HTTP/1.0 client knows no chunked
        # coding; the body ends when the connection does.
        framing = UNTIL_CLOSE
        keep_alive = False
    else:
        framing = CHUNKED
        lines.append(b"transfer-encoding: chunked\r\n")
    if is_head:
        # RFC 9110 section 9.3.2: the answer to HEAD has the head of the answer
        # to GET, and no body.
        framing = NO_BODY
    lines += (_CONNECTION[keep_alive][http10], b"\r\n")
    return b"".join(lines), framing, keep_alive


# Names of fields seen that are none of the three above, in the case they were
# sent: a set lookup is cheaper than lowering and comparing each time. Bounded,
# like the memo of tidings.wire.headers.
_PLAIN_NAMES: set[bytes] = set()
_PLAIN_NAMES_MAX: Final = 1024

# RFC 9112 section 6.3 item 1: responses that never have a body.
_BODYLESS: Final = frozenset([*range(100, 200), 204, 304])

# The Connection field we write, by [keep_alive][http10]: "close" when this is the
# last response (RFC 9112 section 9.6); HTTP/1.0 persistence must be announced
# (RFC 9112 section 9.3), HTTP/1.1's is the default.
_CONNECTION: Final = (
    (b"connection: close\r\n", b"connection: close\r\n"),
    (b"", b"connection: keep-alive\r\n"),
)


def encode_chunk(data: bytes) -> list[bytes]:
    """``data`` as one chunk (RFC 9112 section 7.1): size line, data, CRLF.

    Empty data gives no parts: a zero-size chunk would end the body.
    """
    if not data:
        return []
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def encode_trailers(fields: Iterable[tuple[bytes, bytes]], *, more: bool) -> bytes:
    """Trailer field lines (RFC 9112 section 7.1.2), closing the section unless ``more``.

    They follow ``last_chunk(trailers=True)``; ``fields`` are checked by ``check_fields``.
    With no fields and not ``more``, this is the empty trailer section that ends
    a chunked body whose announced trailers never came.
    """
    lines = [b"%s: %s\r\n" % (n, v) for n, v in fields]
    if not more:
        lines.append(b"\r\n")
    return b"".join(lines)


def last_chunk(*, trailers: bool) -> bytes:
    """The last chunk; left open for trailer fields when ``trailers`` (RFC 9112 section 7.1)."""
    return _LAST_CHUNK_OPEN if trailers else LAST_CHUNK


def simple_response(status: int, body: str | None = None, *, close: bool = True) -> bytes:
    """A complete small plain-text response, for answers no application gives.

    The body is ``body`` (the status's reason phrase by default) and a newline.
    """
    phrase = http.HTTPStatus(status).phrase
    payload = (body if body is not None else phrase).encode("utf-8") + b"\n"
    fields = [(b"content-type", b"text/plain; charset=utf-8")]
    fields.append((b"content-length", b"%d" % len(payload)))
    head, _, _ = frame_response(
        status,
        fields,
        declared_length=len(payload),
        body_length=len(payload),
        is_head=False,
        http10=False,
        trailers=False,
        keep_alive=not close,
    )
    return head + payload
