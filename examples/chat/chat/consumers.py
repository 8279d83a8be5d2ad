# chat/consumers.py
"""The chat's consumers: two WebSocket endpoints and one background job.

- ``ChatConsumer`` (``/ws/chat/<room>/``): saves each message and broadcasts
  it to the room's group; ``@name`` in a message notifies that user.
- ``NotificationConsumer`` (``/ws/notifications/``): logged-in users only;
  pushes whatever is sent to the user's group (see ``notifications.py``).
- ``SummaryConsumer``: runs in the worker (``manage.py runworker
  chat-summaries``) and posts a room's summary back to the room.

Browser and server exchange JSON objects with a ``type``; the layer messages
between consumers have a dotted ``type`` naming the handler that takes them
(``"chat.message"`` calls ``chat_message``).
"""

import asyncio
import re
from collections import Counter

from django.conf import settings
from django.contrib.auth import get_user_model
from tidings.consumer import AsyncConsumer
from tidings.db import database_sync_to_async
from tidings.generic.websocket import AsyncJsonWebsocketConsumer

from .models import Message
from .notifications import notification, user_group

MENTION = re.compile(r"@(\w[\w.+-]*\w|\w)")  # "@alice", "@j.doe"; not the trailing "."


def room_group(room: str) -> str:
    """The group that every socket of one room joins."""
    return f"chat_{room}"


@database_sync_to_async
def save_message(room, user, text):
    """Save a message; return it as JSON and the ids of the other users it mentions."""
    message = Message.objects.create(room=room, author=user, text=text)
    names = set(MENTION.findall(text)) - {user.get_username()}
    mentioned = get_user_model().objects.filter(username__in=names)
    return message.as_json(), list(mentioned.values_list("pk", flat=True))


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser in one room."""

    group = None

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close()  # before accept(): the handshake is refused (HTTP 403)
            return
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = room_group(self.room)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "message":
            await self.post(str(content.get("text", "")).strip()[:1000])
        elif kind == "summarize":
            # A named channel: whichever worker serves it takes the job.
            await self.channel_layer.send(
                settings.CHAT_SUMMARY_CHANNEL,
                {"type": "summarize.room", "room": self.room},
            )
            await self.send_json({"type": "status", "text": "Summary requested."})

    async def post(self, text):
        if not text:
            return
        user = self.scope["user"]
        message, mentioned = await save_message(self.room, user, text)
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "message": message}
        )
        for user_id in mentioned:
            await self.channel_layer.group_send(
                user_group(user_id),
                notification(
                    f"{user.get_username()} mentioned you in {self.room}: {text}",
                    f"/chat/{self.room}/",
                ),
            )

    # Handlers of layer messages sent to the room's group.

    async def chat_message(self, event):
        await self.send_json({"type": "message", **event["message"]})

    async def chat_summary(self, event):
        await self.send_json({"type": "summary", "text": event["text"]})


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    """Every page of a logged-in user; anonymous sockets are refused."""

    group = None

    async def connect(self):
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close()
            return
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def notification_message(self, event):
        await self.send_json({"type": "notification", "text": event["text"], "url": event["url"]})


@database_sync_to_async
def summarize(room):
    """A line about the room's last 200 messages: who talked, about what."""
    messages = list(
        Message.objects.filter(room=room).select_related("author").order_by("-id")[:200]
    )
    if not messages:
        return f"Nothing has been said in {room} yet."
    authors = Counter(m.author.get_username() for m in messages)
    words = Counter(word for m in messages for word in re.findall(r"[a-z]{4,}", m.text.lower()))
    who = ", ".join(f"{name} ({count})" for name, count in authors.most_common(3))
    about = ", ".join(word for word, _ in words.most_common(3)) or "nothing in particular"
    count = f"{len(messages)} message{'s' if len(messages) > 1 else ''}"
    return f"{count} in {room}, from {who}; about {about}."


class SummaryConsumer(AsyncConsumer):
    """The background job: not a socket, a consumer of the named channel."""

    async def summarize_room(self, event):
        room = event["room"]
        text = await summarize(room)
        await asyncio.sleep(settings.CHAT_SUMMARY_DELAY)  # stands in for slow work
        await self.channel_layer.group_send(
            room_group(room), {"type": "chat.summary", "text": text}
        )
