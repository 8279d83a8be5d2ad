"""Which presence tracker serves a call: one per event loop and channel layer alias.

A tracker's tasks live on one event loop, and layers may be bound to one too,
so trackers are kept per running loop (weakly: a closed loop's trackers go with
it). ``TIDINGS_PRESENCE`` is read once and checked; changing it or
``CHANNEL_LAYERS`` (``override_settings`` in tests) forgets every tracker.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from tidings._presence_state import SETTING, PresenceSettings, parse_settings
from tidings._presence_tracker import Tracker
from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import get_channel_layer

__all__ = ["close_trackers", "presence_settings", "tracker_for"]

_lock = threading.Lock()
_trackers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Tracker]] = (
    weakref.WeakKeyDictionary()
)
_settings: PresenceSettings | None = None


def presence_settings() -> PresenceSettings:
    """``TIDINGS_PRESENCE``, read and checked once.

    Raises:
        ImproperlyConfigured: the setting is wrong (the message names the key).
    """
    global _settings
    if _settings is None:
        _settings = parse_settings(getattr(settings, "TIDINGS_PRESENCE", None))
    return _settings


def tracker_for(alias: str) -> Tracker:
    """The tracker of ``alias`` on the running loop (made, not yet started, if new).

    Raises:
        InvalidChannelLayerError: the alias has no channel layer.
        ImproperlyConfigured: ``TIDINGS_PRESENCE`` is wrong.
    """
    loop = asyncio.get_running_loop()
    with _lock:
        trackers = _trackers.setdefault(loop, {})
        tracker = trackers.get(alias)
        if tracker is None:
            layer = get_channel_layer(alias)
            if layer is None:
                raise InvalidChannelLayerError(f"presence needs a channel layer ({alias!r})")
            tracker = trackers[alias] = Tracker(layer, presence_settings())
        return tracker


async def close_trackers() -> None:
    """Close the running loop's trackers (the other nodes drop their members at once)."""
    with _lock:
        trackers = _trackers.pop(asyncio.get_running_loop(), {})
    for tracker in trackers.values():
        await tracker.aclose()


def _forget(*, setting: str, **kwargs: Any) -> None:
    global _settings
    if setting not in (SETTING, "CHANNEL_LAYERS"):
        return
    with _lock:
        _settings = None
        for trackers in [*_trackers.values()]:
            for tracker in trackers.values():
                tracker.abandon()
        _trackers.clear()


setting_changed.connect(_forget)
