# chat/notifications.py
"""Push a notification to a user's open pages, from anywhere in the project.

Every page of a logged-in user holds a WebSocket to ``NotificationConsumer``,
which joins the group ``user_<id>``. Sending to that group reaches all of that
user's tabs, in any server process (with the Redis layer).
"""

from asgiref.sync import async_to_sync
from tidings.layers import get_channel_layer


def user_group(user_id: int) -> str:
    """The group that every notifications socket of one user joins."""
    return f"user_{user_id}"


def notification(text: str, url: str = "") -> dict[str, str]:
    """The layer message; ``NotificationConsumer.notification_message`` handles it."""
    return {"type": "notification.message", "text": text, "url": url}


def notify(user_id: int, text: str, url: str = "") -> None:
    """Notify a user from synchronous code: a view, a management command, a task."""
    channel_layer = get_channel_layer()
    async_to_sync(channel_layer.group_send)(user_group(user_id), notification(text, url))
