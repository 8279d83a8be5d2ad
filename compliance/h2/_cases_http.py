"""RFC 9113 §8: HTTP semantics, and the rules that make a request malformed.

A malformed request (§8.1.1) is a stream error of type PROTOCOL_ERROR; the server
may answer it with a 4xx first. Serving it (a 2xx) is the failure these cases catch.
Field blocks are written by hand with ``literal`` so that the probe puts exactly the
bytes it means on the wire, whatever the encoder would think of them.
"""

from __future__ import annotations

from _cases_streams import open_probe, post_headers
from _client import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    Fail,
    Probe,
    Target,
    hpack_int,
    literal,
    raw_frame,
)
from _registry import case

__all__: list[str] = []

PUSH_PROMISE = 0x5
GET, POST, PATH = b"\x82", b"\x83", b"\x84"  # RFC 7541 Appendix A static indexes 2, 3, 4


def _scheme(t: Target) -> bytes:
    return b"\x87" if t.tls else b"\x86"


def _authority(t: Target) -> bytes:
    value = f"{t.host}:{t.port}".encode()
    return b"\x01" + hpack_int(len(value), 7) + value


def _malformed(t: Target, block: bytes) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        return p.expect_stream_error(1, "PROTOCOL_ERROR", malformed=True)


def _with_field(t: Target, name: bytes, value: bytes) -> str:
    return _malformed(t, GET + _scheme(t) + PATH + _authority(t) + literal(name, value))


def _served(p: Probe, stream_id: int) -> str:
    status, _ = p.expect_response(stream_id)
    if not status.startswith("2"):
        raise Fail(f"answered {status}, expected a 2xx")
    return f"answered {status}"


# -- §8.1 Message framing, §8.1.1 malformed messages ------------------------------


@case(
    "http2",
    "8.1",
    "Sends a second HEADERS (trailers) without END_STREAM",
    "HEADERS after the request head must end the stream; otherwise it is malformed.",
)
def trailers_without_end_stream(t: Target) -> str:
    with open_probe(t) as p:
        trailers = literal(b"x-trailer", b"1")
        p.send(
            post_headers(p, 1),
            raw_frame(DATA, 0, 1, b"body"),
            raw_frame(HEADERS, END_HEADERS, 1, trailers),
        )
        return p.expect_stream_error(1, "PROTOCOL_ERROR", malformed=True)


@case(
    "http2",
    "8.1",
    "Sends a POST with a body and trailers",
    "A request may end with a trailer field block; it is served.",
)
def trailers_ok(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            post_headers(p, 1, [("te", "trailers")]),
            raw_frame(DATA, 0, 1, b"body"),
            raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, literal(b"x-trailer", b"1")),
        )
        return _served(p, 1)


@case(
    "http2",
    "8.1.1",
    "Sends content-length: 4 with 5 octets of DATA",
    "A content-length that differs from the DATA received makes the request malformed.",
)
def content_length_over(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            post_headers(p, 1, [("content-length", "4")]), raw_frame(DATA, END_STREAM, 1, b"abcde")
        )
        return p.expect_stream_error(1, "PROTOCOL_ERROR", malformed=True)


@case(
    "http2",
    "8.1.1",
    "Sends content-length: 10 with two DATA frames of 5 octets in all",
    "content-length must equal the sum of all DATA payloads; otherwise malformed.",
)
def content_length_sum(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            post_headers(p, 1, [("content-length", "10")]),
            raw_frame(DATA, 0, 1, b"abc"),
            raw_frame(DATA, END_STREAM, 1, b"de"),
        )
        return p.expect_stream_error(1, "PROTOCOL_ERROR", malformed=True)


@case(
    "http2",
    "8.1.1",
    "Sends content-length: 3 on HEADERS that end the stream",
    "A declared body that never comes makes the request malformed.",
)
def content_length_no_data(t: Target) -> str:
    with open_probe(t) as p:
        block = POST + _scheme(t) + PATH + _authority(t) + literal(b"content-length", b"3")
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        return p.expect_stream_error(1, "PROTOCOL_ERROR", malformed=True)


# -- §8.2 Fields ---------------------------------------------------------------------


@case(
    "http2",
    "8.2",
    "Sends a field name with uppercase letters",
    "Field names are lowercase in HTTP/2: an uppercase one makes the request malformed.",
)
def uppercase_name(t: Target) -> str:
    return _with_field(t, b"X-Probe", b"1")


@case(
    "http2",
    "8.2.1",
    "Sends a field name containing a space",
    "Field names exclude 0x00-0x20: a space makes the request malformed.",
)
def name_with_space(t: Target) -> str:
    return _with_field(t, b"x probe", b"1")


@case(
    "http2",
    "8.2.1",
    "Sends a regular field name containing a colon",
    "Only pseudo-header names may contain a colon: otherwise malformed.",
)
def name_with_colon(t: Target) -> str:
    return _with_field(t, b"x:probe", b"1")


@case(
    "http2",
    "8.2.1",
    "Sends a field value containing NUL",
    "A field value must not contain NUL: the request is malformed.",
)
def value_with_nul(t: Target) -> str:
    return _with_field(t, b"x-probe", b"a\x00b")


@case(
    "http2",
    "8.2.1",
    "Sends a field value containing CR",
    "A field value must not contain CR: the request is malformed.",
)
def value_with_cr(t: Target) -> str:
    return _with_field(t, b"x-probe", b"a\rb")


@case(
    "http2",
    "8.2.1",
    "Sends a field value containing LF",
    "A field value must not contain LF: the request is malformed.",
)
def value_with_lf(t: Target) -> str:
    return _with_field(t, b"x-probe", b"a\nx-injected: 1")


@case(
    "http2",
    "8.2.1",
    "Sends a field value starting with a space",
    "A field value must not start or end with SP or HTAB: the request is malformed.",
)
def value_leading_space(t: Target) -> str:
    return _with_field(t, b"x-probe", b" a")


@case(
    "http2",
    "8.2.1",
    "Sends a field value ending with a tab",
    "A field value must not start or end with SP or HTAB: the request is malformed.",
)
def value_trailing_tab(t: Target) -> str:
    return _with_field(t, b"x-probe", b"a\t")


def _connection_specific(name: bytes, value: bytes) -> None:
    def run(t: Target) -> str:
        return _with_field(t, name, value)

    case(
        "http2",
        "8.2.2",
        f"Sends the connection-specific field {name.decode()}",
        f"{name.decode()} has no place in HTTP/2: a request carrying it is malformed.",
    )(run)


for _name, _value in [
    (b"connection", b"keep-alive"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"keep-alive"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"websocket"),
]:
    _connection_specific(_name, _value)


@case(
    "http2",
    "8.2.2",
    "Sends te: gzip",
    "TE may only carry 'trailers' in HTTP/2: any other value makes the request malformed.",
)
def te_not_trailers(t: Target) -> str:
    return _with_field(t, b"te", b"gzip")


@case(
    "http2",
    "8.2.2",
    "Sends te: trailers",
    "TE with the value 'trailers' is allowed: the request is served.",
)
def te_trailers(t: Target) -> str:
    with open_probe(t) as p:
        block = GET + _scheme(t) + PATH + _authority(t) + literal(b"te", b"trailers")
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        return _served(p, 1)


# -- §8.3 Pseudo-header fields -----------------------------------------------------


@case(
    "http2",
    "8.3",
    "Sends an unknown pseudo-header field",
    "Undefined pseudo-header fields make the request malformed.",
)
def unknown_pseudo(t: Target) -> str:
    return _with_field(t, b":probe", b"1")


@case(
    "http2",
    "8.3",
    "Sends the response pseudo-header :status in a request",
    "A response pseudo-header in a request makes it malformed.",
)
def status_in_request(t: Target) -> str:
    return _with_field(t, b":status", b"200")


@case(
    "http2",
    "8.3",
    "Sends a pseudo-header field in trailers",
    "Pseudo-header fields never appear in trailers: the request is malformed.",
)
def pseudo_in_trailers(t: Target) -> str:
    with open_probe(t) as p:
        p.send(
            post_headers(p, 1),
            raw_frame(DATA, 0, 1, b"body"),
            raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, literal(b":method", b"GET")),
        )
        return p.expect_stream_error(1, "PROTOCOL_ERROR", malformed=True)


@case(
    "http2",
    "8.3",
    "Sends a pseudo-header field after a regular field",
    "All pseudo-header fields come before regular fields; otherwise malformed.",
)
def pseudo_after_regular(t: Target) -> str:
    return _malformed(t, GET + _scheme(t) + literal(b"x-probe", b"1") + PATH + _authority(t))


@case(
    "http2",
    "8.3.1",
    "Sends an empty :path",
    ":path must not be empty for http and https URIs: the request is malformed.",
)
def empty_path(t: Target) -> str:
    return _malformed(t, GET + _scheme(t) + literal(b":path", b"") + _authority(t))


@case("http2", "8.3.1", "Omits :method", "A request without :method is malformed.")
def no_method(t: Target) -> str:
    return _malformed(t, _scheme(t) + PATH + _authority(t))


@case("http2", "8.3.1", "Omits :scheme", "A request without :scheme is malformed.")
def no_scheme(t: Target) -> str:
    return _malformed(t, GET + PATH + _authority(t))


@case("http2", "8.3.1", "Omits :path", "A request without :path is malformed.")
def no_path(t: Target) -> str:
    return _malformed(t, GET + _scheme(t) + _authority(t))


@case("http2", "8.3.1", "Sends :method twice", "Exactly one :method: a second makes it malformed.")
def two_methods(t: Target) -> str:
    return _malformed(t, GET + _scheme(t) + PATH + _authority(t) + POST)


@case("http2", "8.3.1", "Sends :scheme twice", "Exactly one :scheme: a second makes it malformed.")
def two_schemes(t: Target) -> str:
    return _malformed(t, GET + _scheme(t) + PATH + _authority(t) + _scheme(t))


@case("http2", "8.3.1", "Sends :path twice", "Exactly one :path: a second makes it malformed.")
def two_paths(t: Target) -> str:
    return _malformed(t, GET + _scheme(t) + PATH + _authority(t) + PATH)


# -- §8.4 Server push, §8.5 CONNECT --------------------------------------------------


@case(
    "http2",
    "8.4",
    "Sends a PUSH_PROMISE frame",
    "A client cannot push: PUSH_PROMISE from it is a connection PROTOCOL_ERROR.",
)
def client_push(t: Target) -> str:
    with open_probe(t) as p:
        p.send(post_headers(p, 1))
        promise = (2).to_bytes(4, "big") + GET + _scheme(t) + PATH + _authority(t)
        p.send(raw_frame(PUSH_PROMISE, END_HEADERS, 1, promise))
        return p.expect_connection_error("PROTOCOL_ERROR")


@case(
    "http2",
    "8.5",
    "Sends a CONNECT with :scheme and :path (no :protocol)",
    "A plain CONNECT omits :scheme and :path; with them it is malformed.",
)
def connect_with_path(t: Target) -> str:
    return _malformed(t, literal(b":method", b"CONNECT") + _scheme(t) + PATH + _authority(t))
