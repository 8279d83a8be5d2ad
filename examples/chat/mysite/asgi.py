# mysite/asgi.py
"""The ASGI application: HTTP to Django, WebSockets to the chat's consumers.

Served by ``python manage.py runserver`` (with ``"tidings"`` installed) or
``tidings serve mysite.asgi:application``; the worker by ``python manage.py
runworker chat-summaries``. ``TransportRouter`` is ``ProtocolTypeRouter`` that
also serves the consumers over SSE and long-polling to the pages' ``tidings.js``
(see docs/transports.md).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
# Set Django up before importing anything that uses models.
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402
from tidings.auth import AuthMiddlewareStack  # noqa: E402
from tidings.routing import ChannelNameRouter, URLRouter  # noqa: E402
from tidings.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from tidings.staticfiles import StaticFilesWrapper  # noqa: E402
from tidings.transports import TransportRouter  # noqa: E402

from chat.consumers import SummaryConsumer  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.worker import WorkerInServer  # noqa: E402

workers = ChannelNameRouter({settings.CHAT_SUMMARY_CHANNEL: SummaryConsumer.as_asgi()})

application = TransportRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
        # What `manage.py runworker chat-summaries` serves...
        "channel": workers,
        # ...or the server itself, with the in-memory layer (see chat/worker.py).
        "lifespan": WorkerInServer(
            workers, [settings.CHAT_SUMMARY_CHANNEL], enabled=settings.CHAT_WORKER_IN_SERVER
        ),
    }
)

if settings.DEBUG:
    # Static files (tidings.js) for `tidings serve` too, as runserver serves them.
    application = StaticFilesWrapper(application)
