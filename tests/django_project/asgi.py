"""The test project's ASGI application: Tidings consumers in front of Django.

- ``GET /hello/``: an ``AsyncHttpConsumer``;
- ``GET /sessions/<key>/``: answers ``yes`` or ``no``: whether a row of
  ``django.contrib.sessions`` has that key (the live-server test's database
  check; it needs the sessions app, which ``tests.django_settings`` has);
- any other HTTP path: Django's own ASGI handler (``urls.py``);
- WebSocket ``/ws/echo/``: echoes each message back.
"""

from __future__ import annotations

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()  # sets Django up before the imports below

from django.urls import path, re_path  # noqa: E402

from tidings.db import database_sync_to_async  # noqa: E402
from tidings.generic.http import AsyncHttpConsumer  # noqa: E402
from tidings.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from tidings.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

TEXT = [(b"content-type", b"text/plain")]


class HelloConsumer(AsyncHttpConsumer):
    """Says hello."""

    async def handle(self, body: bytes) -> None:
        await self.send_response(200, b"hello from a tidings consumer", headers=TEXT)


def _session_exists(key: str) -> bool:
    from django.contrib.sessions.models import Session

    return Session.objects.filter(session_key=key).exists()


class SessionExistsConsumer(AsyncHttpConsumer):
    """Answers whether the session row named in the URL exists."""

    async def handle(self, body: bytes) -> None:
        key = self.scope["url_route"]["kwargs"]["key"]
        exists = await database_sync_to_async(_session_exists)(key)
        await self.send_response(200, b"yes" if exists else b"no", headers=TEXT)


class EchoConsumer(AsyncWebsocketConsumer):
    """Sends every message back as it came."""

    async def connect(self) -> None:
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                # django-stubs types path()'s view as a Django view, not an ASGI app.
                path("hello/", HelloConsumer.as_asgi()),  # type: ignore[arg-type]
                path("sessions/<str:key>/", SessionExistsConsumer.as_asgi()),  # type: ignore[arg-type]
                re_path(r"", django_application),  # type: ignore[arg-type]
            ]
        ),
        "websocket": URLRouter([path("ws/echo/", EchoConsumer.as_asgi())]),  # type: ignore[arg-type]
    }
)
