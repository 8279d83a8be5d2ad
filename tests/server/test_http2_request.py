"""The request header rules of ``_h2_request`` (RFC 9113 section 8), with no event loop.

``h2``'s own inbound checks are off in the server: each rule here is the only thing
that enforces it. The probe (``compliance/h2``) checks the same rules over the wire.
"""

from __future__ import annotations

import pytest

from tidings.server._h2_request import MalformedRequest, check_trailers, split_fields

_GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")]


def test_a_request_is_split_into_what_the_server_uses() -> None:
    headers = [
        *_GET,
        (b"content-length", b"3"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"x-forwarded-proto", b"https"),
        (b"te", b"Trailers"),
        (b"empty", b""),
    ]
    method, path, authority, fields, host, declared, xff, xfp, protocol = split_fields(headers)
    assert (method, path, authority, host, declared) == (b"GET", b"/", b"a.test", False, 3)
    assert (xff, xfp, protocol) == (b"1.1.1.1,2.2.2.2", b"https", b"")
    assert fields == headers[4:]


def test_host_alone_and_connect_forms_are_accepted() -> None:
    no_authority = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")]
    assert split_fields(no_authority)[4] is True
    assert split_fields([*_GET, (b"host", b"a.test")])[4] is True
    tunnel = [(b":method", b"CONNECT"), (b":authority", b"a.test:443")]
    assert split_fields(tunnel)[0] == b"CONNECT"
    websocket = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *_GET[1:]]
    assert split_fields(websocket)[8] == b"websocket"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([*_GET, (b"Upper", b"x")], id="uppercase name"),
        pytest.param([*_GET, (b"", b"x")], id="empty name"),
        pytest.param([*_GET, (b"a b", b"x")], id="space in name"),
        pytest.param([*_GET, (b"a:b", b"x")], id="colon in name"),
        pytest.param([*_GET, (b"\xc3\xa9", b"x")], id="non-ASCII name"),
        pytest.param([*_GET, (b"x", b"a\x00b")], id="NUL in value"),
        pytest.param([*_GET, (b"x", b"a\r\nb")], id="CRLF in value"),
        pytest.param([*_GET, (b"x", b" a")], id="leading space"),
        pytest.param([*_GET, (b"x", b"a\t")], id="trailing tab"),
        pytest.param([(b":method", b"GET\n"), *_GET[1:]], id="LF in a pseudo-header"),
        pytest.param([*_GET, (b"connection", b"close")], id="connection field"),
        pytest.param([*_GET, (b"transfer-encoding", b"chunked")], id="transfer-encoding"),
        pytest.param([*_GET, (b"te", b"gzip")], id="te not trailers"),
        pytest.param([*_GET, (b"te", b"gzip"), (b"te", b"trailers")], id="te, twice"),
        pytest.param([*_GET, (b":status", b"200")], id="pseudo after a field"),
        pytest.param([*_GET[:3], (b"x", b"1"), _GET[3]], id="pseudo after regular"),
        pytest.param([(b":status", b"200"), *_GET], id="response pseudo-header"),
        pytest.param([(b":custom", b"1"), *_GET], id="unknown pseudo-header"),
        pytest.param([*_GET, (b":path", b"/again")], id="duplicate :path"),
        pytest.param(_GET[1:], id="no :method"),
        pytest.param([_GET[0], _GET[2], _GET[3]], id="no :scheme"),
        pytest.param(_GET[:3], id="no :path"),
        pytest.param([*_GET[:3], (b":path", b"")], id="empty :path"),
        pytest.param([_GET[0], _GET[1], _GET[3]], id="no :authority or host"),
        pytest.param([*_GET, (b"host", b"b.test")], id="host differs"),
        pytest.param([*_GET, (b"host", b"a.test"), (b"host", b"a.test")], id="two hosts"),
        pytest.param([(b":method", b"CONNECT"), *_GET[1:]], id="plain CONNECT with a path"),
        pytest.param([*_GET, (b":protocol", b"websocket")], id=":protocol after fields"),
        pytest.param([*_GET[:1], (b":protocol", b"websocket"), *_GET[1:]], id=":protocol on GET"),
    ],
)
def test_malformed_requests_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedRequest):
        split_fields(headers)


def test_trailers() -> None:
    check_trailers([(b"x-checksum", b"abc"), (b"te", b"trailers")])
    for bad in ([(b":path", b"/")], [(b"X", b"1")], [(b"x", b"1\r")], [(b"upgrade", b"h2c")]):
        with pytest.raises(MalformedRequest):
            check_trailers(bad)
