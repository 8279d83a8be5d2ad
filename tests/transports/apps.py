"""Consumers and routers the transport tests serve (in-process and in subprocesses).

``EchoConsumer`` understands a few commands so that tests can drive it from the
client side; it records its lifecycle in ``EVENTS`` (in-process tests read it)
and can report that record over the session (subprocess tests ask for it).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from django.urls import path

from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.auth import AuthMiddlewareStack
from tidings.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer
from tidings.routing import URLRouter
from tidings.security.websocket import AllowedHostsOriginValidator
from tidings.transports import TransportRouter, fallback

#: (event, instance id, detail) tuples, in the order they happened in this process.
EVENTS: list[tuple[str, int, Any]] = []


def scope_summary(scope: Scope) -> dict[str, Any]:
    """What the tests check of a consumer's scope, as JSON."""
    user = scope.get("user")
    return {
        "type": scope["type"],
        "transport": scope.get("transport"),
        "path": scope["path"],
        "query_string": scope["query_string"].decode("latin-1"),
        "subprotocols": scope.get("subprotocols"),
        "url_route": {
            "args": list(scope["url_route"]["args"]),
            "kwargs": scope["url_route"]["kwargs"],
        },
        "user": None if user is None else user.pk,
        "authenticated": bool(getattr(user, "is_authenticated", False)),
        "session": scope.get("session") is not None,
        "origin": dict(scope["headers"]).get(b"origin", b"").decode("latin-1"),
        "handle": any(isinstance(k, str) and "transport_session" in k for k in scope),
        "pid": os.getpid(),
    }


class EchoConsumer(AsyncWebsocketConsumer):
    """Echoes messages; commands: ``count N``, ``scope``, ``events``, ``close CODE``, ``pid``."""

    async def connect(self) -> None:
        EVENTS.append(("connect", id(self), self.scope.get("transport")))
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        EVENTS.append(("receive", id(self), text_data if text_data is not None else bytes_data))
        if bytes_data is not None:
            await self.send(bytes_data=bytes_data)
            return
        assert text_data is not None
        command, _, argument = text_data.partition(" ")
        if command == "count":  # "count N [PAUSE]": N numbered messages, a pause every 50
            n, _, pause = argument.partition(" ")
            for i in range(int(n)):
                await self.send(text_data=str(i))
                if i % 50 == 0:
                    await asyncio.sleep(float(pause or 0))  # let transports write meanwhile
        elif command == "scope":
            await self.send(text_data=json.dumps(scope_summary(self.scope)))
        elif command == "events":
            mine = [[e[0], e[2]] for e in EVENTS if e[1] == id(self) and e[0] != "receive"]
            await self.send(text_data=json.dumps({"pid": os.getpid(), "events": mine}))
        elif command == "close":
            await self.close(int(argument or 1000))
        elif command == "big":
            await self.send(text_data="x" * int(argument))
        else:
            await self.send(text_data=text_data)

    async def disconnect(self, code: int) -> None:
        EVENTS.append(("disconnect", id(self), code))


class RefusingConsumer(AsyncWebsocketConsumer):
    """Closes before accepting."""

    async def connect(self) -> None:
        EVENTS.append(("refuse", id(self), None))
        await self.close()


class SyncEchoConsumer(WebsocketConsumer):
    """A synchronous consumer: echoes text."""

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=f"sync:{text_data}")


class FailingConsumer(AsyncWebsocketConsumer):
    """Raises in ``connect``."""

    async def connect(self) -> None:
        raise RuntimeError("consumer bug (must not reach the client)")


async def raw_echo(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """A plain ASGI WebSocket application."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "raw:" + str(message.get("text"))})


async def denying_app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Refuses with its own HTTP response (the ``websocket.http.response`` extension)."""
    assert (await receive())["type"] == "websocket.connect"
    headers = [(b"content-type", b"text/plain"), (b"x-why", b"no ticket")]
    await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": b"ticket", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b" please"})


async def undecided_app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Never accepts nor refuses."""
    await receive()
    await asyncio.Event().wait()


def websocket_routes() -> URLRouter:
    return URLRouter(
        [
            path("ws/echo/<str:room>/", EchoConsumer.as_asgi()),  # type: ignore[arg-type]
            path("ws/refuse/", RefusingConsumer.as_asgi()),  # type: ignore[arg-type]
            path("ws/sync/", SyncEchoConsumer.as_asgi()),  # type: ignore[arg-type]
            path("ws/fail/", FailingConsumer.as_asgi()),  # type: ignore[arg-type]
            path("ws/raw/", fallback(raw_echo)),  # type: ignore[arg-type]
            path("ws/plain/", raw_echo),  # type: ignore[arg-type]
            path("ws/gate/", denying_app),  # type: ignore[arg-type]
            path("ws/deny/", fallback(denying_app)),  # type: ignore[arg-type]
            path("ws/undecided/", fallback(undecided_app)),  # type: ignore[arg-type]
        ]
    )


async def http_hello(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """The ``"http"`` application: plain requests (no ``tidings`` parameter) get this."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


def make_router(**settings: Any) -> TransportRouter:
    """The router of the tests: origin check and auth in front of the routes."""
    return TransportRouter(
        {
            "http": http_hello,
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(websocket_routes())),
        },
        **settings,
    )
