"""Tests for tidings.security.websocket: Origin checks on WebSocket handshakes."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

import tidings.security
import tidings.security.websocket
from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.security.websocket import (
    AllowedHostsOriginValidator,
    OriginValidator,
    WebsocketDenier,
)
from tidings.testing import ApplicationCommunicator, WebsocketCommunicator

TIMEOUT = 5


def test_public_names() -> None:
    assert tidings.security.__all__ == []
    assert sorted(tidings.security.websocket.__all__) == [
        "AllowedHostsOriginValidator",
        "OriginValidator",
        "WebsocketDenier",
    ]


class AcceptingApp:
    """Accepts every WebSocket and counts the connections it saw."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"


def origin_headers(*origins: str) -> list[tuple[bytes, bytes]]:
    return [(b"origin", origin.encode("latin1")) for origin in origins]


async def connects(app: Any, *origins: str) -> bool:
    """Whether a WebSocket sending these Origin headers gets accepted by ``app``."""
    communicator = WebsocketCommunicator(app, "/ws/", headers=origin_headers(*origins))
    connected, detail = await communicator.connect(timeout=TIMEOUT)
    if connected:
        await communicator.disconnect(timeout=TIMEOUT)
    else:
        assert detail == 1000  # a plain close, which the server turns into HTTP 403
        await communicator.wait(timeout=TIMEOUT)
    return connected


# Channels' documented example list.
DOCUMENTED = [".goodsite.com", "http://.goodsite.com:80", "http://other.site.com"]


@pytest.mark.parametrize(
    ("allowed", "origin", "expected"),
    [
        # The documented example.
        (DOCUMENTED, "http://goodsite.com", True),
        (DOCUMENTED, "https://goodsite.com", True),
        (DOCUMENTED, "http://www.goodsite.com", True),
        (DOCUMENTED, "https://deep.sub.goodsite.com:8443", True),
        (DOCUMENTED, "http://other.site.com", True),
        (DOCUMENTED, "http://other.site.com:80", True),
        (DOCUMENTED, "https://other.site.com", False),
        (DOCUMENTED, "http://other.site.com:8080", False),
        (DOCUMENTED, "http://sub.other.site.com", False),
        (DOCUMENTED, "http://site.com", False),
        (DOCUMENTED, "http://evilgoodsite.com", False),
        (DOCUMENTED, "http://goodsite.com.evil.com", False),
        # Exact hosts: any scheme and port, no subdomains, case-insensitive.
        (["example.com"], "http://example.com", True),
        (["example.com"], "https://EXAMPLE.com:9000", True),
        (["Example.COM"], "http://example.com", True),
        (["example.com"], "http://www.example.com", False),
        (["example.com"], "http://example.com.", True),
        # Host and port, no scheme: the port is enforced (defaults by scheme).
        (["example.com:8080"], "http://example.com:8080", True),
        (["example.com:8080"], "https://example.com:8080", True),
        (["example.com:8080"], "http://example.com", False),
        (["example.com:8080"], "http://example.com:8081", False),
        (["example.com:443"], "https://example.com", True),
        (["example.com:80"], "https://example.com", False),
        # Full origins: scheme, host and port must all match.
        (["https://example.com"], "https://example.com", True),
        (["https://example.com"], "https://example.com:443", True),
        (["https://example.com"], "http://example.com", False),
        (["https://example.com"], "https://example.com:8443", False),
        (["https://example.com:8443"], "https://example.com:8443", True),
        (["http://example.com:80"], "http://example.com", True),
        (["https://.example.com"], "https://a.example.com", True),
        (["https://.example.com"], "http://a.example.com", False),
        (["chrome-extension://abcdef"], "chrome-extension://abcdef", True),
        (["chrome-extension://abcdef"], "chrome-extension://other", False),
        # IPv6 and IPv4 literals.
        (["[::1]"], "http://[::1]:8000", True),
        (["::1"], "http://[::1]", True),
        (["[::1]:8000"], "http://[::1]:8000", True),
        (["[::1]:8000"], "http://[::1]:9000", False),
        (["http://[::1]:8000"], "http://[::1]:8000", True),
        (["http://[::1]:8000"], "https://[::1]:8000", False),
        (["[::1]"], "http://[::2]", False),
        (["127.0.0.1"], "http://127.0.0.1:8000", True),
        (["127.0.0.1"], "http://127.0.0.2", False),
        # Missing, null and malformed origins are refused unless "*" is allowed.
        (["example.com"], None, False),
        (["example.com"], "null", False),
        (["null"], "null", False),
        (["example.com"], "example.com", False),
        (["example.com"], "http://", False),
        (["example.com"], "http://example.com:99999", False),
        (["example.com"], "http://example.com:port", False),
        (["example.com"], "http://[::1", False),
        (["example.com"], "http://example.com http://evil.com", False),
        (["*"], None, True),
        (["*"], "null", True),
        (["*"], "http://anything.example", True),
        (["example.com", "*"], "http://evil.com", True),
        # Nothing allowed, or patterns that match nothing.
        ([], "http://example.com", False),
        ([""], "http://example.com", False),
        (["http://"], "http://example.com", False),
        (["example.com:notaport"], "http://example.com", False),
    ],
)
async def test_origin_matrix(allowed: list[str], origin: str | None, expected: bool) -> None:
    inner = AcceptingApp()
    origins = () if origin is None else (origin,)
    assert await connects(OriginValidator(inner, allowed), *origins) is expected
    assert len(inner.scopes) == (1 if expected else 0)


async def test_refusal_is_a_close_before_accept() -> None:
    communicator = ApplicationCommunicator(
        OriginValidator(AcceptingApp(), ["example.com"]),
        {"type": "websocket", "path": "/ws/", "headers": origin_headers("http://evil.com")},
    )
    await communicator.send_input({"type": "websocket.connect"})
    assert await communicator.receive_output(timeout=TIMEOUT) == {"type": "websocket.close"}
    await communicator.wait(timeout=TIMEOUT)
    assert communicator.output_queue.empty()


async def test_several_origin_headers_are_refused() -> None:
    app = OriginValidator(AcceptingApp(), ["example.com"])
    assert await connects(app, "http://example.com") is True
    assert await connects(app, "http://example.com", "http://example.com") is False


async def test_non_websocket_scopes_pass_through() -> None:
    inner = AcceptingApp()
    scope = {"type": "http", "path": "/", "headers": origin_headers("http://evil.com")}
    communicator = ApplicationCommunicator(OriginValidator(inner, []), scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    assert (await communicator.receive_output(timeout=TIMEOUT))["status"] == 204
    await communicator.receive_output(timeout=TIMEOUT)
    await communicator.wait(timeout=TIMEOUT)
    assert inner.scopes == [scope]


async def test_allowed_scope_reaches_the_app_unchanged() -> None:
    inner = AcceptingApp()
    assert await connects(OriginValidator(inner, ["example.com"]), "http://example.com")
    assert inner.scopes[0]["headers"] == origin_headers("http://example.com")


def test_allowed_origins_attribute() -> None:
    validator = OriginValidator(AcceptingApp(), ("a.com", "b.com"))
    assert validator.allowed_origins == ["a.com", "b.com"]


# -- WebsocketDenier -----------------------------------------------------------


async def test_denier_refuses() -> None:
    communicator = WebsocketCommunicator(WebsocketDenier.as_asgi(), "/ws/")
    assert await communicator.connect(timeout=TIMEOUT) == (False, 1000)
    await communicator.wait(timeout=TIMEOUT)


async def test_denier_ends_on_early_disconnect() -> None:
    communicator = ApplicationCommunicator(WebsocketDenier(), {"type": "websocket"})
    await communicator.send_input({"type": "websocket.disconnect", "code": 1006})
    await communicator.wait(timeout=TIMEOUT)
    assert communicator.future.done()
    assert not communicator.future.cancelled()
    assert communicator.output_queue.empty()


# -- AllowedHostsOriginValidator -----------------------------------------------


async def test_allowed_hosts_from_settings() -> None:
    # tests.django_settings: ["testserver", "localhost", "127.0.0.1", "example.com", ".example.org"]
    app = AllowedHostsOriginValidator(AcceptingApp())
    assert await connects(app, "http://example.com") is True
    assert await connects(app, "https://example.org") is True
    assert await connects(app, "https://www.example.org:8443") is True
    assert await connects(app, "http://localhost:8000") is True
    assert await connects(app, "http://www.example.com") is False
    assert await connects(app, "http://evil.com") is False
    assert await connects(app) is False


async def test_allowed_hosts_follow_override_settings() -> None:
    app = AllowedHostsOriginValidator(AcceptingApp())
    with override_settings(ALLOWED_HOSTS=["chat.example.net"]):
        assert app.allowed_origins == ["chat.example.net"]
        assert await connects(app, "https://chat.example.net") is True
        assert await connects(app, "http://example.com") is False
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert await connects(app, "http://evil.com") is True
        assert await connects(app) is True


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("http://localhost:8000", True),
        ("http://sub.localhost", True),
        ("http://127.0.0.1:8000", True),
        ("http://[::1]:8000", True),
        ("http://127.0.0.2", False),
        ("http://example.com", False),
        (None, False),
    ],
)
async def test_debug_with_empty_allowed_hosts_allows_local(
    origin: str | None, expected: bool
) -> None:
    app = AllowedHostsOriginValidator(AcceptingApp())
    origins = () if origin is None else (origin,)
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        assert await connects(app, *origins) is expected
    with override_settings(DEBUG=False, ALLOWED_HOSTS=[]):
        assert await connects(app, *origins) is False
