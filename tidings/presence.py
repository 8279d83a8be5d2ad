"""Presence: who is in a topic, across processes and hosts, with join/leave diffs.

In a consumer, mix in :class:`AsyncPresenceMixin` (or :class:`PresenceMixin` for
sync consumers) and call ``presence_track``, ``presence_subscribe``,
``presence_list``; everything is untracked when the consumer ends. Elsewhere
(views, tasks, the admin page), the functions here read and change the same
state::

    from tidings import presence

    members = await presence.list("room.lobby")  # {key: {"metas": [...]}}
    counts = await presence.topics()              # {topic: number of keys}

A user (the key; by default the authenticated user's id, else the connection's
public id) with several connections is one entry with several metas. Each meta
holds what the app gave plus ``ref`` (unique per track), ``conn`` (the
connection's public id, a digest of its channel name) and ``joined_at`` (Unix
time).

The state lives in every process and travels over the channel layer (see
:mod:`tidings._presence_tracker`): the in-memory layer serves one process, the
Redis layer any number. Settings (``TIDINGS_PRESENCE``) and bounds are in
``docs/operations.md``; the setting is checked when this module is imported with
Django's settings loaded (as when the ASGI application loads), else at first use.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings

from tidings._presence_consumer import AsyncPresenceMixin, PresenceMixin
from tidings._presence_registry import close_trackers, presence_settings, tracker_for
from tidings._presence_state import (
    RESERVED_META_KEYS,
    Meta,
    Presences,
    PresenceSettings,
)
from tidings.layers import DEFAULT_CHANNEL_LAYER

__all__ = [
    "RESERVED_META_KEYS",
    "AsyncPresenceMixin",
    "Meta",
    "PresenceMixin",
    "PresenceSettings",
    "Presences",
    "aclose",
    "list",
    "list_sync",
    "presence_settings",
    "subscribe",
    "topics",
    "topics_sync",
    "track",
    "unsubscribe",
    "untrack",
]

# Fail at start-up rather than at the first connection: an app's consumers import this
# module while the ASGI application loads, after Django has read its settings.
if settings.configured:
    presence_settings()


async def track(
    topic: str,
    key: str,
    channel_name: str,
    *,
    meta: dict[str, Any] | None = None,
    alias: str = DEFAULT_CHANNEL_LAYER,
) -> Meta:
    """Track ``channel_name`` in ``topic`` under ``key``; again: replace its meta.

    Consumers use ``presence_track``, which also untracks when they end; a
    connection tracked with this function must be untracked by its owner.

    Returns:
        the full meta (the app's, plus ``ref``, ``conn`` and ``joined_at``).

    Raises:
        TypeError: ``topic`` breaks the group-name rules (the layer's own
            error), a bad key or channel name, meta not a JSON-serializable dict.
        ValueError: meta over ``MAX_META_BYTES`` as JSON, or with a reserved key.
    """
    return await tracker_for(alias).track(topic, key, channel_name, meta)


async def untrack(topic: str, channel_name: str, *, alias: str = DEFAULT_CHANNEL_LAYER) -> bool:
    """Stop tracking ``channel_name`` in ``topic``; False if this process did not track it."""
    return await tracker_for(alias).untrack(topic, channel_name)


async def list(topic: str, *, alias: str = DEFAULT_CHANNEL_LAYER) -> Presences:
    """The members of ``topic`` on every node: ``{key: {"metas": [meta, ...]}}``.

    Raises:
        TypeError: ``topic`` breaks the group-name rules.
    """
    return await tracker_for(alias).list(topic)


def list_sync(topic: str, *, alias: str = DEFAULT_CHANNEL_LAYER) -> Presences:
    """The sync twin of :func:`list`, for sync consumers and views."""
    result: Presences = async_to_sync(list)(topic, alias=alias)
    return result


async def topics(*, alias: str = DEFAULT_CHANNEL_LAYER) -> dict[str, int]:
    """Every topic that has members, with its number of keys (users)."""
    return await tracker_for(alias).topics()


def topics_sync(*, alias: str = DEFAULT_CHANNEL_LAYER) -> dict[str, int]:
    """The sync twin of :func:`topics`."""
    result: dict[str, int] = async_to_sync(topics)(alias=alias)
    return result


async def subscribe(
    topic: str, channel_name: str, *, alias: str = DEFAULT_CHANNEL_LAYER
) -> Presences:
    """Send ``presence.diff`` messages of ``topic`` to ``channel_name``; return the list now.

    Only for channels of this process (the diffs are sent by this process's
    tracker). Consumers use ``presence_subscribe``.
    """
    return await tracker_for(alias).subscribe(topic, channel_name)


async def unsubscribe(topic: str, channel_name: str, *, alias: str = DEFAULT_CHANNEL_LAYER) -> None:
    """Stop the diffs of ``topic`` to ``channel_name``."""
    tracker_for(alias).unsubscribe(topic, channel_name)


async def aclose() -> None:
    """Close this event loop's trackers: the other processes drop their members at once.

    Optional (a process that just exits is dropped after the timeout); for
    tests and orderly shutdowns.
    """
    await close_trackers()
