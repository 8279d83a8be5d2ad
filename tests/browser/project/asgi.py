"""The browser test project's ASGI application.

``TransportRouter`` in place of ``ProtocolTypeRouter``: each consumer is reachable
over WebSocket, SSE and long-polling. Around it:

- :func:`refuse_session_websockets` answers the ``tidings=ws`` upgrade under
  ``/ws/nows/`` with 403, as a proxy that blocks WebSocket would make it fail:
  the client must fall back by itself;
- :class:`~tidings.staticfiles.StaticFilesWrapper` serves ``/static/`` (the client
  from the ``tidings`` app, the test pages from ``static/browser/``).

``TIDINGS_BROWSER_TRANSPORT_SETTINGS``, a JSON object, gives ``TransportRouter`` its
settings (e.g. ``{"max_sessions": 1}``) for a test that starts its own server.
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()  # sets Django up before the imports below

from django.urls import path  # noqa: E402

from tests.browser.project.consumers import (  # noqa: E402
    ChatConsumer,
    RefusingConsumer,
    StreamConsumer,
)
from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope  # noqa: E402
from tidings.auth import AuthMiddlewareStack  # noqa: E402
from tidings.routing import URLRouter  # noqa: E402
from tidings.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from tidings.staticfiles import StaticFilesWrapper  # noqa: E402
from tidings.transports import TransportRouter  # noqa: E402

BLOCKED_PREFIX = "/ws/nows/"
TRANSPORT_SETTINGS = json.loads(os.environ.get("TIDINGS_BROWSER_TRANSPORT_SETTINGS", "{}"))


def refuse_session_websockets(app: ASGIApp) -> ASGIApp:
    """Refuse (HTTP 403) session WebSocket upgrades under :data:`BLOCKED_PREFIX`."""

    async def wrapper(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "websocket" and scope["path"].startswith(BLOCKED_PREFIX):
            query = parse_qs(scope["query_string"].decode("latin-1"))
            if query.get("tidings") == ["ws"]:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
                return
        await app(scope, receive, send)

    return wrapper


websocket_routes = URLRouter(
    [
        # django-stubs types path()'s view as a Django view, not an ASGI app.
        path("ws/chat/<str:room>/", ChatConsumer.as_asgi()),  # type: ignore[arg-type]
        path("ws/nows/chat/<str:room>/", ChatConsumer.as_asgi()),  # type: ignore[arg-type]
        path("ws/stream/", StreamConsumer.as_asgi()),  # type: ignore[arg-type]
        path("ws/refuse/", RefusingConsumer.as_asgi()),  # type: ignore[arg-type]
    ]
)

application = StaticFilesWrapper(
    refuse_session_websockets(
        TransportRouter(
            {
                "http": django_application,
                "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(websocket_routes)),
            },
            **TRANSPORT_SETTINGS,
        )
    )
)
