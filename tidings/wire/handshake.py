"""The server side of the WebSocket opening handshake (RFC 6455 §4.2).

Theory of operation
-------------------
The HTTP layer has already parsed the request line and headers (as ASGI gives them:
header names lowercased bytes, values raw bytes). ``parse_request`` checks that the
request is a valid WebSocket upgrade (§4.2.1) and extracts what the application and the
extension negotiation need: the key, the offered subprotocols and the parsed extension
offers. A refused handshake raises ``HandshakeError`` carrying the HTTP status and the
headers to answer with; ``build_error_response`` turns it into response bytes.
``build_accept_response`` writes the ``101 Switching Protocols`` response (§4.2.2).

Everything here is pure: no I/O, no clock. Header values we write are checked for
CR/LF/NUL so that an application cannot inject headers or split the response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from tidings.wire.frames import WebSocketError
from tidings.wire.headers import check_fields

__all__ = [
    "WEBSOCKET_GUID",
    "WEBSOCKET_VERSION",
    "ExtensionOffer",
    "HandshakeError",
    "HandshakeRequest",
    "accept_key",
    "build_accept_response",
    "build_error_response",
    "parse_extensions",
    "parse_request",
]

#: RFC 6455 §1.3: the GUID appended to the client's key to compute the accept value.
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: RFC 6455 §4.1: the only protocol version this server speaks.
WEBSOCKET_VERSION = b"13"

# RFC 7230 §3.2.6: token = 1*tchar.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# One extension parameter after a ";": name [ "=" ( token | quoted-string ) ] (RFC 6455 §9.1).
_PARAM_RE = re.compile(rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_TOKEN}|{_QUOTED}))?[ \t]*")
_NAME_RE = re.compile(rf"({_TOKEN})[ \t]*")
_UNESCAPE_RE = re.compile(r"\\(.)")


class HandshakeError(WebSocketError):
    """The opening handshake is refused; answer with an HTTP error response.

    Attributes:
        status: the HTTP status code to answer with (400, 405, 426).
        reason: a short explanation, our own words; it becomes the response body.
        headers: extra response headers the status calls for (e.g. ``Sec-WebSocket-Version``
            with 426, RFC 6455 §4.4).
    """

    def __init__(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers: list[tuple[bytes, bytes]] = [] if headers is None else headers

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


@dataclass(frozen=True, slots=True)
class ExtensionOffer:
    """One offer from ``Sec-WebSocket-Extensions`` (RFC 6455 §9.1).

    Attributes:
        name: the extension token, lowercased (e.g. ``"permessage-deflate"``).
        params: ``(name, value)`` pairs in order; names lowercased, ``value`` None for a
            parameter without ``=``, quoted-string values unquoted.
    """

    name: str
    params: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What a valid opening handshake request carries for the server to act on.

    Attributes:
        key: the ``Sec-WebSocket-Key`` value as sent (base64 of 16 bytes).
        subprotocols: offered subprotocols in the client's order of preference
            (RFC 6455 §4.1, §11.3.4), from all ``Sec-WebSocket-Protocol`` headers.
        extensions: parsed extension offers in order, from all
            ``Sec-WebSocket-Extensions`` headers.
    """

    key: bytes
    subprotocols: tuple[str, ...] = ()
    extensions: tuple[ExtensionOffer, ...] = ()


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2 5.4)."""
    return base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())


def _split_list(values: Iterable[bytes]) -> list[str]:
    """Elements of a comma-separated header list (RFC 7230 §7), empty elements dropped."""
    items: list[str] = []
    for value in values:
        for item in value.decode("latin-1").split(","):
            item = item.strip(" \t")
            if item:
                items.append(item)
    return items


def parse_extensions(values: Iterable[bytes]) -> tuple[ExtensionOffer, ...]:
    """Parse ``Sec-WebSocket-Extensions`` header values into offers (RFC 6455 §9.1).

    Several headers, several offers per header, parameters with or without a value,
    token or quoted-string values are all supported. A quoted value must unescape to a
    token (§9.1).

    Raises:
        ValueError: a value does not follow the grammar.
    """
    offers: list[ExtensionOffer] = []
    # Splitting on "," first is safe: a quoted value must unescape to a token, and a
    # token has no comma, so a comma inside quotes is an error either way.
    for element in _split_list(values):
        match = _NAME_RE.match(element)
        if match is None:
            raise ValueError(f"invalid extension offer {element!r}")
        pos = match.end()
        params: list[tuple[str, str | None]] = []
        while pos < len(element):
            param = _PARAM_RE.match(element, pos)
            if param is None:
                raise ValueError(f"invalid extension parameters in {element!r}")
            value = param.group(2)
            if value is not None and value.startswith('"'):
                value = _UNESCAPE_RE.sub(r"\1", value[1:-1])
                if _TOKEN_RE.fullmatch(value) is None:
                    raise ValueError(f"quoted extension parameter is not a token: {value!r}")
            params.append((param.group(1).lower(), value))
            pos = param.end()
        offers.append(ExtensionOffer(match.group(1).lower(), tuple(params)))
    return tuple(offers)


def _tokens(values: Iterable[bytes]) -> set[str]:
    """Lowercased tokens of a comma-separated header (``Connection``, ``Upgrade``)."""
    return {item.lower() for item in _split_list(values)}


def _http_version_ok(version: str | bytes) -> bool:
    if isinstance(version, bytes):
        version = version.decode("latin-1")
    version = version.removeprefix("HTTP/")
    major, _, minor = version.partition(".")
    if not major.isdigit() or not (minor.isdigit() or minor == ""):
        return False
    return (int(major), int(minor or 0)) >= (1, 1)


def parse_request(
    *,
    method: str | bytes,
    http_version: str | bytes,
    headers: Sequence[tuple[bytes, bytes]],
) -> HandshakeRequest:
    """Validate a client's opening handshake (RFC 6455 §4.2.1) and extract its offers.

    Args:
        method: the request method (``"GET"``).
        http_version: ``"1.1"`` (ASGI style) or ``"HTTP/1.1"``; 1.1 or later is required.
        headers: ``(name, value)`` pairs, names lowercased, as ASGI gives them.

    Returns:
        The key, offered subprotocols and extension offers.

    Raises:
        HandshakeError: 405 for a method other than GET; 426 (with ``Upgrade`` and
            ``Connection`` headers) when the request is not a WebSocket upgrade; 426 with
            ``Sec-WebSocket-Version: 13`` for another protocol version (§4.4); 400 for an
            old HTTP version, a missing ``Host``, a bad key, or malformed
            subprotocol/extension headers.
    """
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    if method != "GET":
        # §4.1 item 2: the method MUST be GET.
        raise HandshakeError(405, "WebSocket handshake must use GET", [(b"allow", b"GET")])
    if not _http_version_ok(http_version):
        raise HandshakeError(400, "WebSocket handshake requires HTTP/1.1 or later")

    grouped: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)

    upgrade_headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    # §4.2.1 items 3-4: Upgrade contains "websocket", Connection contains "Upgrade"
    # (both case-insensitive token lists).
    if "websocket" not in _tokens(grouped.get(b"upgrade", ())):
        raise HandshakeError(426, "expected Upgrade: websocket", upgrade_headers)
    if "upgrade" not in _tokens(grouped.get(b"connection", ())):
        raise HandshakeError(426, "expected Connection: Upgrade", upgrade_headers)
    if b"host" not in grouped:
        # §4.2.1 item 2 and RFC 7230 §5.4: a request without Host is a bad request.
        raise HandshakeError(400, "missing Host header")

    # §4.2.1 item 6 and §4.4: any version other than 13 gets 426 naming the one we speak.
    versions = grouped.get(b"sec-websocket-version", [])
    if [v.strip(b" \t") for v in versions] != [WEBSOCKET_VERSION]:
        raise HandshakeError(
            426,
            "unsupported WebSocket version",
            [(b"sec-websocket-version", WEBSOCKET_VERSION)],
        )

    # §4.2.1 item 5: exactly one key, base64 of a 16-byte value.
    keys = grouped.get(b"sec-websocket-key", [])
    if len(keys) != 1:
        raise HandshakeError(400, "expected exactly one Sec-WebSocket-Key header")
    key = keys[0].strip(b" \t")
    try:
        raw_key = base64.b64decode(key, validate=True)
    except binascii.Error:
        raise HandshakeError(400, "Sec-WebSocket-Key is not base64")
    if len(raw_key) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key is not 16 bytes")

    # §4.1 item 10, §11.3.4: 1#token, possibly spread over several headers.
    subprotocols = _split_list(grouped.get(b"sec-websocket-protocol", ()))
    for protocol in subprotocols:
        if _TOKEN_RE.fullmatch(protocol) is None:
            raise HandshakeError(400, "invalid Sec-WebSocket-Protocol header")
    try:
        extensions = parse_extensions(grouped.get(b"sec-websocket-extensions", ()))
    except ValueError:
        raise HandshakeError(400, "invalid Sec-WebSocket-Extensions header")
    return HandshakeRequest(key=key, subprotocols=tuple(subprotocols), extensions=extensions)


# Headers the handshake itself writes; an application may not pass them again.
_RESERVED_HEADERS = frozenset(
    (
        b"upgrade",
        b"connection",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
    )
)


def _check_header(name: bytes, value: bytes) -> None:
    # The same rules as every response header (InvalidField is a ValueError).
    check_fields(((name, value),))


def build_accept_response(
    request: HandshakeRequest,
    *,
    subprotocol: str | None = None,
    extensions_header: bytes | None = None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """The complete ``101 Switching Protocols`` response bytes (RFC 6455 §4.2.2).

    Args:
        request: the request returned by ``parse_request``.
        subprotocol: the chosen subprotocol; it must be one the client offered (§4.2.2
            item 5.4: the client fails the connection otherwise).
        extensions_header: the negotiated ``Sec-WebSocket-Extensions`` value, e.g. from
            ``deflate.negotiate_deflate``.
        extra_headers: more ``(name, value)`` headers (e.g. ``set-cookie``) from the app.

    Raises:
        ValueError: the subprotocol was not offered; a header name is not a token or is
            one the handshake writes itself; a value contains CR, LF or NUL.
    """
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept_key(request.key),
    ]
    if subprotocol is not None:
        if subprotocol not in request.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
    if extensions_header is not None:
        _check_header(b"sec-websocket-extensions", extensions_header)
        lines.append(b"Sec-WebSocket-Extensions: " + extensions_header)
    for name, value in extra_headers:
        _check_header(name, value)
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the WebSocket handshake itself")
        lines.append(name + b": " + value)
    lines.append(b"")
    lines.append(b"")
    return b"\r\n".join(lines)


def build_error_response(error: HandshakeError) -> bytes:
    """An HTTP/1.1 error response for a refused handshake, closing the connection.

    The body is ``error.reason`` as plain text; ``error.headers`` are included.
    """
    body = error.reason.encode("utf-8") + b"\n"
    try:
        phrase = HTTPStatus(error.status).phrase.encode("ascii")
    except ValueError:
        phrase = b"Error"
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, phrase),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    for name, value in error.headers:
        _check_header(name, value)
        lines.append(name + b": " + value)
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)
