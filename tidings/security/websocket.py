"""Refusing WebSocket connections from other sites (Channels' ``security.websocket``).

Theory of operation
-------------------
A browser opens a WebSocket to any site it is told to, with that site's
cookies, and the same-origin policy does not apply: the only defence against
cross-site WebSocket hijacking is for the server to check the ``Origin``
header that browsers send with the opening handshake (RFC 6455 section 10.2,
RFC 6454 section 7). :class:`OriginValidator` does that check before the
wrapped application ever sees the connection; a refused connection goes to
:class:`WebsocketDenier`, which closes it before accepting, and the server
then answers the handshake with HTTP 403.

Patterns (the ``allowed_origins`` list), matched case-insensitively:

``"*"``
    Any origin, including none at all.
``"example.com"`` / ``".example.com"``
    A host: exactly that host / that domain and all its subdomains (Django's
    ``is_same_domain`` rule, as in ``ALLOWED_HOSTS``), any scheme and port.
``"example.com:8080"``
    A host and port: the origin's port, explicit or its scheme's default
    (80 for ``http``/``ws``, 443 for ``https``/``wss``), must be that port.
    (Channels ignores a port given without a scheme; we enforce it.)
``"https://example.com"`` / ``"https://.example.com:8443"``
    A full origin: scheme, host (with the same leading-dot rule) and port
    (explicit or default) must all match.

IPv6 hosts are written in brackets (``"[::1]"``, ``"http://[::1]:8000"``); a
bare ``"::1"`` is read as a host too. Unless ``"*"`` is allowed, these are
refused: no ``Origin`` header, the opaque origin ``null`` (sandboxed frames,
``file:`` pages), more than one ``Origin`` header, and any value that is not
a ``scheme://host[:port]`` origin.

Only ``websocket`` scopes are checked; other scopes pass through untouched.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import ParseResult, urlparse

from django.conf import settings
from django.utils.http import is_same_domain

from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope

__all__ = ["AllowedHostsOriginValidator", "OriginValidator", "WebsocketDenier"]

logger = logging.getLogger("tidings.security")

# Ports implied by a scheme when the origin names none (RFC 6454 section 4;
# RFC 6455 section 3 for ws/wss).
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}

# What Django's host validation allows when DEBUG is on and ALLOWED_HOSTS empty.
_DEBUG_HOSTS = (".localhost", "127.0.0.1", "[::1]")


class _Pattern(NamedTuple):
    """One parsed ``allowed_origins`` entry; ``None`` fields match anything."""

    scheme: str | None
    host: str
    port: int | None


class WebsocketDenier:
    """An ASGI application that refuses every WebSocket connection.

    On ``websocket.connect`` it sends ``websocket.close`` without accepting,
    which the server turns into an HTTP 403 answer to the handshake.
    """

    @classmethod
    def as_asgi(cls) -> WebsocketDenier:
        """Return an instance (for code written against Channels' consumer class)."""
        return cls()

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """Wait for the connection attempt and refuse it."""
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close"})
                return
            if message["type"] == "websocket.disconnect":
                return


def _host_of(parsed: ParseResult) -> str | None:
    """The lower-case host of a parsed URL, without IPv6 brackets or a final dot."""
    host = parsed.hostname
    if not host:
        return None
    return host[:-1] if host.endswith(".") else host


def _port_of(parsed: ParseResult) -> int | None:
    """The explicit port, else the scheme's default, else ``None``.

    Raises:
        ValueError: the port is not a number in 0-65535.
    """
    return parsed.port if parsed.port is not None else _DEFAULT_PORTS.get(parsed.scheme)


@functools.lru_cache(maxsize=512)
def _parse_pattern(pattern: str) -> _Pattern | None:
    """Parse an ``allowed_origins`` entry; ``None`` if it can match nothing."""
    pattern = pattern.strip().lower()
    try:
        if "://" in pattern:
            parsed = urlparse(pattern)
            host = parsed.hostname
            if not host:
                return None
            return _Pattern(parsed.scheme, host, _port_of(parsed))
        if pattern.count(":") > 1 and not pattern.startswith("["):
            return _Pattern(None, pattern, None)  # a bare IPv6 address
        parsed = urlparse("//" + pattern)
        host = parsed.hostname
        if not host:
            return None
        return _Pattern(None, host, parsed.port)
    except ValueError:
        return None


def _origin_header(scope: Scope) -> str | None:
    """The single ``Origin`` header value, or ``None`` if absent or repeated."""
    values: list[bytes] = [
        value for name, value in scope.get("headers", ()) if name.lower() == b"origin"
    ]
    if len(values) != 1:
        return None
    return values[0].decode("latin1").strip()


def _parse_origin(value: str | None) -> ParseResult | None:
    """Parse a serialized origin; ``None`` for ``null`` or anything malformed."""
    if not value or value.lower() == "null":
        return None
    try:
        parsed = urlparse(value)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    if not parsed.scheme or _host_of(parsed) is None:
        return None
    return parsed


class OriginValidator:
    """Refuse WebSocket connections whose ``Origin`` is not allowed.

    Args:
        application: the ASGI application to protect.
        allowed_origins: patterns, see the module docstring; ``["*"]`` allows
            every origin.
    """

    def __init__(self, application: ASGIApp, allowed_origins: Iterable[str]) -> None:
        self.application = application
        self._allowed_origins = [str(pattern) for pattern in allowed_origins]

    @property
    def allowed_origins(self) -> list[str]:
        """The patterns that origins are checked against."""
        return self._allowed_origins

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """Check a WebSocket's origin, then run the application or refuse."""
        if scope.get("type") != "websocket":
            await self.application(scope, receive, send)
            return
        header = _origin_header(scope)
        if self.valid_origin(_parse_origin(header)):
            await self.application(scope, receive, send)
            return
        logger.info("Refused WebSocket %s from origin %r", scope.get("path", ""), header)
        await WebsocketDenier()(scope, receive, send)

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        """Whether an origin (``None``: missing, ``null`` or malformed) is allowed."""
        allowed = self.allowed_origins
        if "*" in allowed:
            return True
        if parsed_origin is None:
            return False
        return self.validate_origin(parsed_origin)

    def validate_origin(self, parsed_origin: ParseResult) -> bool:
        """Whether ``parsed_origin`` matches any of the allowed patterns."""
        return any(self.match_allowed_origin(parsed_origin, p) for p in self.allowed_origins)

    def match_allowed_origin(self, parsed_origin: ParseResult, pattern: str) -> bool:
        """Whether ``parsed_origin`` matches the single ``pattern``."""
        parsed_pattern = _parse_pattern(pattern)
        host = _host_of(parsed_origin)
        if parsed_pattern is None or host is None:
            return False
        if parsed_pattern.scheme is not None and parsed_pattern.scheme != parsed_origin.scheme:
            return False
        if parsed_pattern.port is not None or parsed_pattern.scheme is not None:
            try:
                origin_port = _port_of(parsed_origin)
            except ValueError:
                return False
            if origin_port != parsed_pattern.port:
                return False
        return is_same_domain(host, parsed_pattern.host)


class AllowedHostsOriginValidator(OriginValidator):
    """An :class:`OriginValidator` whose patterns are ``settings.ALLOWED_HOSTS``.

    The setting is read for every connection, so it follows
    ``override_settings``. As in Django's host validation, with ``DEBUG`` on
    and ``ALLOWED_HOSTS`` empty, ``.localhost``, ``127.0.0.1`` and ``[::1]``
    are allowed; ``"*"`` in ``ALLOWED_HOSTS`` allows every origin.

    Args:
        application: the ASGI application to protect.
    """

    def __init__(self, application: ASGIApp) -> None:
        super().__init__(application, ())

    @property
    def allowed_origins(self) -> list[str]:
        """``ALLOWED_HOSTS`` (or the DEBUG local hosts), read now."""
        hosts: list[str] = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            return list(_DEBUG_HOSTS)
        return hosts
