"""Tests for tidings.wire.handshake: request validation and response building (RFC 6455 §4)."""

from __future__ import annotations

import pytest

from tidings.wire import handshake
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

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

Headers = list[tuple[bytes, bytes]]


def request_headers(**overrides: bytes | None) -> Headers:
    """A valid browser-like upgrade request; ``name=None`` drops a header."""
    base: dict[str, bytes | None] = {
        "host": b"example.com",
        "upgrade": b"websocket",
        "connection": b"Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": b"13",
        "origin": b"http://example.com",
    }
    base.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return [(name.encode(), value) for name, value in base.items() if value is not None]


def parse(
    headers: Headers, method: str | bytes = "GET", version: str | bytes = "1.1"
) -> HandshakeRequest:
    return parse_request(method=method, http_version=version, headers=headers)


def refused(
    headers: Headers, method: str | bytes = "GET", version: str | bytes = "1.1"
) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        parse(headers, method, version)
    return info.value


def test_accept_key_rfc_vector() -> None:
    # RFC 6455 §1.3.
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_parse_minimal_request() -> None:
    request = parse(request_headers())
    assert request == HandshakeRequest(key=KEY, subprotocols=(), extensions=())


@pytest.mark.parametrize(
    ("method", "version"),
    [("GET", "1.1"), (b"GET", b"1.1"), ("GET", "HTTP/1.1"), ("GET", "2"), ("GET", "1.2")],
)
def test_methods_and_versions_accepted(method: str | bytes, version: str | bytes) -> None:
    assert parse(request_headers(), method, version).key == KEY


def test_header_token_lists_are_case_insensitive() -> None:
    headers = request_headers(upgrade=b"h2c, WebSocket", connection=b"keep-alive, UPGRADE")
    assert parse(headers).key == KEY
    # Spread over several headers.
    headers = [*request_headers(connection=b"keep-alive"), (b"connection", b"upgrade")]
    assert parse(headers).key == KEY


def test_subprotocols_from_several_headers_in_order() -> None:
    headers = [
        *request_headers(),
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-protocol", b" v2.json ,,"),
    ]
    assert parse(headers).subprotocols == ("chat", "superchat", "v2.json")


def test_extensions_are_parsed() -> None:
    headers = [
        *request_headers(),
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
        (b"sec-websocket-extensions", b"x-foo"),
    ]
    assert parse(headers).extensions == (
        ExtensionOffer("permessage-deflate", (("client_max_window_bits", None),)),
        ExtensionOffer("x-foo"),
    )


@pytest.mark.parametrize("method", ["POST", b"HEAD", "get"])
def test_method_must_be_get(method: str | bytes) -> None:
    error = refused(request_headers(), method=method)
    assert error.status == 405
    assert error.headers == [(b"allow", b"GET")]


@pytest.mark.parametrize("version", ["1.0", "HTTP/1.0", b"0.9", "abc", "1.x", ""])
def test_http_version_must_be_at_least_1_1(version: str | bytes) -> None:
    assert refused(request_headers(), version=version).status == 400


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"upgrade": None}, "Upgrade"),
        ({"upgrade": b"h2c"}, "Upgrade"),
        ({"connection": None}, "Connection"),
        ({"connection": b"keep-alive"}, "Connection"),
    ],
)
def test_not_an_upgrade_gets_426(overrides: dict[str, bytes | None], reason: str) -> None:
    error = refused(request_headers(**overrides))
    assert error.status == 426
    assert reason in error.reason
    assert (b"upgrade", b"websocket") in error.headers


def test_missing_host_gets_400() -> None:
    error = refused(request_headers(host=None))
    assert (error.status, error.reason) == (400, "missing Host header")


@pytest.mark.parametrize("version", [None, b"8", b"12", b"14", b"13, 8"])
def test_other_websocket_versions_get_426_naming_13(version: bytes | None) -> None:
    error = refused(request_headers(sec_websocket_version=version))
    assert error.status == 426
    assert error.headers == [(b"sec-websocket-version", b"13")]


def test_two_version_headers_get_426() -> None:
    error = refused([*request_headers(), (b"sec-websocket-version", b"13")])
    assert error.status == 426


@pytest.mark.parametrize(
    "key",
    [
        None,
        b"",
        b"not base64!",
        b"dGhlIHNhbXBsZSBub25jZQ",  # missing padding
        b"dGhlIHNhbXBsZSBub25jZXg=",  # 17 bytes
        b"dGhlIHNhbXBsZQ==",  # 10 bytes
    ],
)
def test_bad_keys_get_400(key: bytes | None) -> None:
    error = refused(request_headers(sec_websocket_key=key))
    assert error.status == 400
    assert "Sec-WebSocket-Key" in error.reason


def test_two_keys_get_400() -> None:
    error = refused([*request_headers(), (b"sec-websocket-key", KEY)])
    assert error.status == 400


def test_key_surrounding_whitespace_is_ignored() -> None:
    assert parse(request_headers(sec_websocket_key=b" " + KEY + b"\t")).key == KEY


def test_invalid_subprotocol_gets_400() -> None:
    headers = [*request_headers(), (b"sec-websocket-protocol", b"chat, a b")]
    assert refused(headers).status == 400


def test_invalid_extensions_get_400() -> None:
    headers = [*request_headers(), (b"sec-websocket-extensions", b"permessage-deflate;;")]
    assert refused(headers).reason == "invalid Sec-WebSocket-Extensions header"


# --- Sec-WebSocket-Extensions grammar -------------------------------------------------


@pytest.mark.parametrize(
    ("values", "offers"),
    [
        ([], ()),
        ([b""], ()),
        ([b" , ,"], ()),
        ([b"foo"], (ExtensionOffer("foo"),)),
        ([b"Foo ; Bar = 1 ;baz"], (ExtensionOffer("foo", (("bar", "1"), ("baz", None))),)),
        (
            [b'permessage-deflate; client_max_window_bits="10", permessage-deflate'],
            (
                ExtensionOffer("permessage-deflate", (("client_max_window_bits", "10"),)),
                ExtensionOffer("permessage-deflate"),
            ),
        ),
        ([b'a; b="x\\yz"'], (ExtensionOffer("a", (("b", "xyz"),)),)),
        ([b"a", b"b;c"], (ExtensionOffer("a"), ExtensionOffer("b", (("c", None),)))),
    ],
)
def test_parse_extensions(values: list[bytes], offers: tuple[ExtensionOffer, ...]) -> None:
    assert parse_extensions(values) == offers


@pytest.mark.parametrize(
    "value",
    [
        b";a",
        b"a;",
        b"a; b=",
        b"a b",
        b'a; b="two words"',
        b'a; b=""',
        b'a; b="unterminated',
        b"a; b=c d",
        b"(a)",
    ],
)
def test_parse_extensions_rejects_malformed(value: bytes) -> None:
    with pytest.raises(ValueError, match="extension"):
        parse_extensions([value])


# --- responses -----------------------------------------------------------------------


def test_accept_response_bytes() -> None:
    request = parse(request_headers())
    assert build_accept_response(request) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )


def test_accept_response_with_subprotocol_extensions_and_extra_headers() -> None:
    request = parse([*request_headers(), (b"sec-websocket-protocol", b"chat, superchat")])
    response = build_accept_response(
        request,
        subprotocol="superchat",
        extensions_header=b"permessage-deflate; server_no_context_takeover",
        extra_headers=[(b"set-cookie", b"a=b; Path=/"), (b"X-Custom", b"1")],
    )
    assert response.endswith(
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: superchat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        b"set-cookie: a=b; Path=/\r\n"
        b"X-Custom: 1\r\n"
        b"\r\n"
    )


def test_accept_response_rejects_unoffered_subprotocol() -> None:
    request = parse([*request_headers(), (b"sec-websocket-protocol", b"chat")])
    with pytest.raises(ValueError, match="not offered"):
        build_accept_response(request, subprotocol="other")


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ([(b"x-a", b"1\r\nInjected: yes")], "CR, LF or NUL"),
        ([(b"x-a", b"1\nx")], "CR, LF or NUL"),
        ([(b"x-a", b"1\x00")], "CR, LF or NUL"),
        ([(b"x a", b"1")], "invalid header name"),
        ([(b"x-a\r\n", b"1")], "invalid header name"),
        ([(b"Sec-WebSocket-Accept", b"forged")], "set by the WebSocket handshake"),
        ([(b"sec-websocket-protocol", b"chat")], "set by the WebSocket handshake"),
    ],
)
def test_accept_response_rejects_header_injection(headers: Headers, match: str) -> None:
    request = parse(request_headers())
    with pytest.raises(ValueError, match=match):
        build_accept_response(request, extra_headers=headers)


def test_accept_response_rejects_injection_in_extensions_header() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        build_accept_response(parse(request_headers()), extensions_header=b"x\r\nEvil: 1")


def test_error_response_426() -> None:
    error = refused(request_headers(sec_websocket_version=b"8"))
    assert build_error_response(error) == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 30\r\n"
        b"Connection: close\r\n"
        b"sec-websocket-version: 13\r\n"
        b"\r\n"
        b"unsupported WebSocket version\n"
    )


def test_error_response_400_and_unknown_status() -> None:
    response = build_error_response(HandshakeError(400, "bad"))
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert response.endswith(b"Content-Length: 4\r\nConnection: close\r\n\r\nbad\n")
    assert build_error_response(HandshakeError(499, "x")).startswith(b"HTTP/1.1 499 Error\r\n")


def test_handshake_error_str() -> None:
    assert str(HandshakeError(400, "bad")) == "400 bad"


def test_module_all_names_exist() -> None:
    for name in handshake.__all__:
        assert hasattr(handshake, name), name
