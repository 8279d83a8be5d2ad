# chat/routing.py
"""WebSocket URLs (the HTTP ones are in urls.py); asgi.py mounts them."""

from django.urls import path, re_path

from . import consumers

websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room>[-a-zA-Z0-9_]{1,50})/$", consumers.ChatConsumer.as_asgi()),
    path("ws/notifications/", consumers.NotificationConsumer.as_asgi()),
]
