"""The chat app of ``scale.py``: the example chat consumer behind ``AuthMiddlewareStack``.

The same code runs on Tidings and on Channels: ``BENCH_PREFIX`` (``tidings`` or
``channels``) is the only difference, the import prefix, as the migration guide
promises. ``ChatConsumer`` does what ``examples/chat``'s does when a socket opens
(refuses anonymous users, joins the room's group, accepts) and answers
``{"type": "ping"}`` with ``{"type": "pong"}``, so the benchmark can check at the end
that every connection is alive. The stack in front of it is the example's:
``AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(...)))``, with Django's
database sessions in a SQLite file (``BENCH_DB``) and the in-memory channel layer of
the framework under test.

``python scale_chat_app.py setup`` (with ``BENCH_PREFIX`` and ``BENCH_DB`` set) creates
the tables, a user and a logged-in session, and prints the session cookie that every
benchmark client then sends.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import django
from django.conf import settings

__all__ = ["ChatConsumer", "application"]

PREFIX = os.environ.get("BENCH_PREFIX", "tidings")

settings.configure(
    DEBUG=False,
    SECRET_KEY="scale-benchmark-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BENCH_DB"]}},
    SESSION_ENGINE="django.contrib.sessions.backends.db",
    CHANNEL_LAYERS={"default": {"BACKEND": f"{PREFIX}.layers.InMemoryChannelLayer"}},
    USE_TZ=True,
)
django.setup()

from django.urls import path  # noqa: E402

_generic = importlib.import_module(f"{PREFIX}.generic.websocket")
_routing = importlib.import_module(f"{PREFIX}.routing")
_auth = importlib.import_module(f"{PREFIX}.auth")
_origin = importlib.import_module(f"{PREFIX}.security.websocket")


class ChatConsumer(_generic.AsyncJsonWebsocketConsumer):  # type: ignore[misc,name-defined]
    """One browser in one room (``examples/chat``'s connect and disconnect)."""

    group = None

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close()
            return
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = f"chat_{self.room}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "message", **event["message"]})


application = _routing.ProtocolTypeRouter(
    {
        "websocket": _origin.AllowedHostsOriginValidator(
            _auth.AuthMiddlewareStack(
                _routing.URLRouter([path("ws/chat/<str:room>/", ChatConsumer.as_asgi())])
            )
        )
    }
)


def _setup() -> str:
    """Create the tables, a user and its logged-in session; the ``Cookie`` header value."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    user, _ = User.objects.get_or_create(username="bench")
    user.set_unusable_password()
    user.save()
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.set_expiry(24 * 3600)
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


if __name__ == "__main__" and sys.argv[1:] == ["setup"]:
    print(_setup())
