# iot/asgi.py
"""HTTP to Django, WebSockets to the dashboard, MQTT to the ack consumer.

``tidings serve iot.asgi:application``: the "mqtt" entry makes the server
connect to ``MQTT_BROKERS`` on startup and run ``MQTT_BRIDGES``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iot.settings")
django_asgi_app = get_asgi_application()

from django.urls import path  # noqa: E402
from tidings.mqtt import TopicRouter, topic  # noqa: E402
from tidings.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from tidings.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from iot.consumers import AckConsumer, DashboardConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            URLRouter([path("ws/dashboard/", DashboardConsumer.as_asgi())])
        ),
        "mqtt": TopicRouter([topic("devices/<device>/ack", AckConsumer.as_asgi(), qos=1)]),
    }
)
