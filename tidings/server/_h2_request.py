"""The request side of an HTTP/2 stream: its header list checked and read in one pass.

``request_scope`` turns a request's header list into its ASGI ``http`` scope (or the
status that refuses it); the checks it relies on are these.

The connection core (``tidings.wire.http2``) knows frames, not fields: ``split_fields``
applies the field rules while it sorts the list, and ``check_trailers`` those of a
trailer section:

- field names: not empty, no upper case, no control, space, DEL or non-ASCII octet, no
  colon except the one that starts a pseudo-header (RFC 9113 section 8.2.1);
- field values: no NUL, CR or LF, no leading or trailing space or tab (8.2.1);
- no connection-specific field, and ``te`` only as ``trailers`` (8.2.2);
- pseudo-headers: only the request ones (plus ``:protocol``, RFC 8441), each once,
  all before the regular fields, none in trailers (8.3); ``:method`` always,
  ``:scheme`` and a non-empty ``:path`` unless a plain CONNECT, which has neither
  (8.5); ``:protocol`` only with CONNECT;
- ``:authority`` or ``Host``, one ``Host`` at most, and the same value when both;
- Cookie fields are joined into one with ``; `` (8.2.3);
- Content-Length is a number, and DATA must agree with it (the protocol checks that).

A violation is a malformed request (``MalformedRequest``): the protocol resets the
stream with PROTOCOL_ERROR (RFC 9113 section 8.1.1). ``forwarded`` applies a trusted
proxy's ``X-Forwarded-*`` fields as ``HttpProtocol`` does for HTTP/1.1
(``tidings.server._proxy``). Nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from tidings.server._proxy import ProxyTrust
from tidings.server.errors import ServerError

if TYPE_CHECKING:
    from tidings.server._http2 import H2Protocol

__all__ = [
    "MALFORMED",
    "MalformedRequest",
    "check_trailers",
    "forwarded",
    "request_scope",
    "split_fields",
]

#: What ``request_scope`` returns for a malformed request (a stream error, not a status).
MALFORMED: Final = -1
_ASGI_VERSIONS: Final = {"version": "3.0", "spec_version": "2.4"}

# A regular field name's octets: visible ASCII but upper case and the colon.
_BAD_NAME: Final = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]")
_BAD_VALUE: Final = re.compile(rb"[\x00\n\r]|\A[ \t]|[ \t]\Z")
_CONNECTION: Final = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
_PSEUDO: Final = frozenset([b":method", b":scheme", b":authority", b":path", b":protocol"])
# Fields whose values split_fields returns or checks across the list.
_WATCHED: Final = frozenset(
    [b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"te", b"cookie"]
)


class MalformedRequest(ServerError, ValueError):
    """A request header list that breaks RFC 9113 section 8: a stream error."""


def split_fields(
    headers: list[tuple[bytes, bytes]],
) -> tuple[
    bytes, bytes, bytes, list[tuple[bytes, bytes]], bool, int, bytes | None, bytes | None, bytes
]:
    """Pseudo-headers and fields of a request, and the fields the server looks at.

    Returns ``(method, path, authority, fields, has_host, content_length, xff, xfp,
    protocol)``; ``protocol`` is the ``:protocol`` of an extended CONNECT (RFC 8441).

    Raises:
        MalformedRequest: the list breaks one of the rules above.
    """
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    watched: dict[bytes, bytes] = {}  # the last value of each _WATCHED field
    xff = None
    cookie = -1  # the index of the Cookie field in fields
    bad_name = _BAD_NAME.search
    bad_value = _BAD_VALUE.search
    for name, value in headers:
        if value and bad_value(value):
            raise MalformedRequest(f"invalid value of {name!r}")
        if name[:1] == b":":
            if fields or name not in _PSEUDO or name in pseudo:
                raise MalformedRequest(f"pseudo-header {name!r} not allowed here")
            pseudo[name] = value
            continue
        if not name or bad_name(name) or name in _CONNECTION:
            raise MalformedRequest(f"field name {name!r} not allowed")
        if name in _WATCHED:
            if name == b"cookie":
                # Section 8.2.3: crumbs split over fields are one Cookie for the app.
                if cookie < 0:
                    cookie = len(fields)
                else:
                    fields[cookie] = (name, fields[cookie][1] + b"; " + value)
                    continue
            elif name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
            elif name == b"host" and name in watched:
                raise MalformedRequest("more than one Host field")
            elif name == b"te" and value.lower() != b"trailers":
                raise MalformedRequest("te other than trailers")
            else:
                watched[name] = value
        fields.append((name, value))
    method, raw, authority, protocol = _request_line(pseudo, watched)
    host = watched.get(b"host")
    length = watched.get(b"content-length")
    if length is None:
        declared = -1
    elif length.isdigit() and len(length) < 19:
        declared = int(length)
    else:
        raise MalformedRequest("invalid content-length")  # RFC 9110 section 8.6
    xfp = watched.get(b"x-forwarded-proto")
    return method, raw, authority, fields, host is not None, declared, xff, xfp, protocol


def _request_line(
    pseudo: dict[bytes, bytes], watched: dict[bytes, bytes]
) -> tuple[bytes, bytes, bytes, bytes]:
    """``(method, path, authority, protocol)``, once the rules across fields hold."""
    method = pseudo.get(b":method")
    raw = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    protocol = pseudo.get(b":protocol")
    host = watched.get(b"host")
    if method is None:
        raise MalformedRequest("no :method")
    if method == b"CONNECT" and protocol is None:
        if raw is not None or b":scheme" in pseudo:
            raise MalformedRequest("a CONNECT with :scheme or :path")
    elif not raw or b":scheme" not in pseudo:
        raise MalformedRequest("no :scheme or an empty :path")
    elif protocol is not None and method != b"CONNECT":
        raise MalformedRequest(":protocol without CONNECT")
    if authority is None and host is None:
        raise MalformedRequest("neither :authority nor Host")
    if authority is not None and host is not None and authority != host:
        raise MalformedRequest(":authority and Host differ")
    return method, raw or b"", authority or b"", protocol or b""


def check_trailers(headers: list[tuple[bytes, bytes]]) -> None:
    """Check a request's trailer section (RFC 9113 section 8.1): fields only.

    Raises:
        MalformedRequest: a pseudo-header, or a name or value that breaks section 8.2.
    """
    for name, value in headers:
        if not name or _BAD_NAME.search(name) or name in _CONNECTION:
            raise MalformedRequest(f"trailer name {name!r} not allowed")
        if value and _BAD_VALUE.search(value):
            raise MalformedRequest(f"invalid value of trailer {name!r}")
        if name == b"te" and value.lower() != b"trailers":
            raise MalformedRequest("te other than trailers")


def forwarded(
    proxy: ProxyTrust,
    client: tuple[str, int] | None,
    scheme: str,
    xff: bytes | None,
    xfp: bytes | None,
) -> tuple[tuple[str, int] | None, str]:
    """Client and scheme as a trusted proxy's X-Forwarded-* fields give them."""
    if xfp is not None:
        proto = xfp.decode("latin-1").split(",")[-1].strip().lower()
        if proto in ("http", "https", "ws", "wss"):
            scheme = "https" if proto in ("https", "wss") else "http"
    if xff is not None:
        forwarded = proxy.client_from(xff)
        if forwarded is not None:
            client = (forwarded, 0)
    return client, scheme


def request_scope(
    h2: H2Protocol, headers: list[tuple[bytes, bytes]], ended: bool
) -> tuple[dict[str, Any], int] | int:
    """The ASGI scope of a request's header list and its Content-Length (-1 if none),
    or the status to refuse it with.

    ``h2`` is the connection the request arrived on.

    ``split_fields`` checks the field rules of RFC 9113 section 8; ``ended`` says the
    HEADERS frame ended the stream.
    ``MALFORMED`` is a request to reset.
    """
    try:
        method, raw, authority, fields, host, declared, xff, xfp, protocol = split_fields(headers)
    except MalformedRequest:
        return MALFORMED
    if declared > 0 and ended:
        return MALFORMED  # a Content-Length no DATA can follow (section 8.1.1)
    if method == b"CONNECT" and (protocol != b"websocket" or not h2.connect_protocol):
        return 501  # a tunnel, or a protocol other than RFC 8441's WebSocket
    if len(fields) > h2.limits.max_header_count:
        return 431
    if declared > h2.limits.max_body_size:
        return 413
    if authority:
        # ASGI: :authority becomes the Host field (RFC 9113 section 8.3.1).
        if host:
            fields = [f for f in fields if f[0] != b"host"]
        fields.insert(0, (b"host", authority))
    q = raw.find(b"?")
    raw_path, query = (raw, b"") if q < 0 else (raw[:q], raw[q + 1 :])
    path = raw_path.decode("utf-8", "surrogateescape")
    if "%" in path:
        path = unquote(path)
    root_path = h2.root_path
    if root_path:
        path = root_path + path
        raw_path = root_path.encode("utf-8") + raw_path
    client = h2.client
    # The connection's scheme, not the client's :scheme: the app may base decisions
    # (secure cookies, redirects) on it. A trusted proxy says otherwise below.
    url_scheme = h2.scheme
    proxy = h2.state.proxy
    if proxy is not None and (client is None or proxy.is_trusted(client[0])):
        client, url_scheme = forwarded(proxy, client, url_scheme, xff, xfp)
    return {
        "type": "http",
        "asgi": _ASGI_VERSIONS,
        "http_version": "2",
        "method": method.decode("ascii", "replace"),
        "scheme": url_scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": fields,
        "client": client,
        "server": h2.server,
        "state": h2.state.lifespan_state.copy(),
        "extensions": h2.extensions,
    }, declared
