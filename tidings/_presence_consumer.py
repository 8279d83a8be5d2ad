"""Presence for consumers: track, subscribe, and leave everything when the consumer ends.

The mixins go before the consumer class (``class Room(AsyncPresenceMixin,
AsyncJsonWebsocketConsumer)``). Their ``__call__`` wraps the consumer's whole
life, so every topic the instance tracked is untracked and every subscription
dropped when it ends, however it ends (disconnect, error, cancellation), over a
WebSocket or a fallback transport session alike.

A subscribed consumer gets ``presence.diff`` layer messages, handled by
``presence_diff``; the default hands them to ``presence_forward``, which, on a
WebSocket scope, sends them to the client as JSON text (what tidings.js's
``Presence`` reads); ``presence_subscribe`` forwards the current list the same
way, as ``presence.state``. Override ``presence_forward`` to filter or reshape
what clients see, or to send nothing.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync

from tidings._presence_registry import tracker_for
from tidings._presence_state import Meta, Presences
from tidings._presence_tracker import connection_id
from tidings._types import ASGIReceive, ASGISend, Message, Scope
from tidings.consumer import AsyncConsumer, SyncConsumer

__all__ = ["AsyncPresenceMixin", "PresenceMixin", "default_presence_key", "state_message"]


def default_presence_key(scope: Scope, channel_name: str) -> str:
    """The authenticated user's id, else the connection's public id."""
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        return str(user.pk)
    return connection_id(channel_name)


def state_message(topic: str, state: Presences) -> Message:
    """The ``presence.state`` message a subscriber's client gets first."""
    return {"type": "presence.state", "topic": topic, "state": state}


def _client_frame(scope: Scope, message: Message) -> Message | None:
    if scope.get("type") != "websocket":
        return None
    return {"type": "websocket.send", "text": json.dumps(message, separators=(",", ":"))}


class AsyncPresenceMixin(AsyncConsumer):
    """Presence methods for async consumers; see the module docstring."""

    _presence_topics: set[str]

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self._presence_topics = set()
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._presence_topics:
                await tracker_for(self.channel_layer_alias).untrack_channel(
                    self.channel_name, [*self._presence_topics]
                )

    def presence_key(self) -> str:
        """The key this connection is tracked under (override to choose another)."""
        return default_presence_key(self.scope, self.channel_name)

    async def presence_track(
        self, topic: str, *, meta: dict[str, Any] | None = None, key: str | None = None
    ) -> Meta:
        """Track this connection in ``topic``; again: replace its meta. Returns the full meta.

        Raises:
            TypeError: a bad topic name (group-name rules), key or meta.
            ValueError: meta over ``MAX_META_BYTES`` as JSON, or with a reserved key.
        """
        tracker = tracker_for(self.channel_layer_alias)
        full = await tracker.track(topic, key or self.presence_key(), self.channel_name, meta)
        self._presence_topics.add(topic)
        return full

    async def presence_untrack(self, topic: str) -> bool:
        """Stop tracking this connection in ``topic``; False if it was not tracked."""
        return await tracker_for(self.channel_layer_alias).untrack(topic, self.channel_name)

    async def presence_subscribe(self, topic: str) -> Presences:
        """Get ``presence.diff`` messages of ``topic``; forward and return its list now."""
        tracker = tracker_for(self.channel_layer_alias)
        state = await tracker.subscribe(topic, self.channel_name)
        self._presence_topics.add(topic)
        await self.presence_forward(state_message(topic, state))
        return state

    async def presence_unsubscribe(self, topic: str) -> None:
        """Stop the diffs of ``topic``."""
        tracker_for(self.channel_layer_alias).unsubscribe(topic, self.channel_name)

    async def presence_list(self, topic: str) -> Presences:
        """The members of ``topic``, on every node."""
        return await tracker_for(self.channel_layer_alias).list(topic)

    async def presence_diff(self, message: Message) -> None:
        """A batch of joins and leaves of a subscribed topic: forward it."""
        await self.presence_forward(message)

    async def presence_forward(self, message: Message) -> None:
        """Send a presence message to the client as JSON text (WebSocket scopes only)."""
        frame = _client_frame(self.scope, message)
        if frame is not None:
            await self.base_send(frame)


class PresenceMixin(SyncConsumer):
    """Presence methods for sync consumers (plain calls from handlers)."""

    _presence_topics: set[str]

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self._presence_topics = set()
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._presence_topics:
                await tracker_for(self.channel_layer_alias).untrack_channel(
                    self.channel_name, [*self._presence_topics]
                )

    def presence_key(self) -> str:
        """The key this connection is tracked under (override to choose another)."""
        return default_presence_key(self.scope, self.channel_name)

    def presence_track(
        self, topic: str, *, meta: dict[str, Any] | None = None, key: str | None = None
    ) -> Meta:
        """As :meth:`AsyncPresenceMixin.presence_track`."""
        full: Meta = async_to_sync(self._atrack)(topic, meta, key or self.presence_key())
        return full

    async def _atrack(self, topic: str, meta: dict[str, Any] | None, key: str) -> Meta:
        full = await tracker_for(self.channel_layer_alias).track(
            topic, key, self.channel_name, meta
        )
        self._presence_topics.add(topic)
        return full

    def presence_untrack(self, topic: str) -> bool:
        """As :meth:`AsyncPresenceMixin.presence_untrack`."""
        done: bool = async_to_sync(self._auntrack)(topic)
        return done

    async def _auntrack(self, topic: str) -> bool:
        return await tracker_for(self.channel_layer_alias).untrack(topic, self.channel_name)

    def presence_subscribe(self, topic: str) -> Presences:
        """As :meth:`AsyncPresenceMixin.presence_subscribe`."""
        state: Presences = async_to_sync(self._asubscribe)(topic)
        self.presence_forward(state_message(topic, state))
        return state

    async def _asubscribe(self, topic: str) -> Presences:
        state = await tracker_for(self.channel_layer_alias).subscribe(topic, self.channel_name)
        self._presence_topics.add(topic)
        return state

    def presence_unsubscribe(self, topic: str) -> None:
        """As :meth:`AsyncPresenceMixin.presence_unsubscribe`."""
        async_to_sync(self._aunsubscribe)(topic)

    async def _aunsubscribe(self, topic: str) -> None:
        tracker_for(self.channel_layer_alias).unsubscribe(topic, self.channel_name)

    def presence_list(self, topic: str) -> Presences:
        """As :meth:`AsyncPresenceMixin.presence_list`."""
        state: Presences = async_to_sync(self._alist)(topic)
        return state

    async def _alist(self, topic: str) -> Presences:
        return await tracker_for(self.channel_layer_alias).list(topic)

    def presence_diff(self, message: Message) -> None:
        """A batch of joins and leaves of a subscribed topic: forward it."""
        self.presence_forward(message)

    def presence_forward(self, message: Message) -> None:
        """Send a presence message to the client as JSON text (WebSocket scopes only)."""
        frame = _client_frame(self.scope, message)
        if frame is not None:
            async_to_sync(self.base_send)(frame)
