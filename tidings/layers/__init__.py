"""Channel layers: send messages between consumers, in one process or across many.

The public names are Channels' (``channels.layers``), so migrating code only
changes the import prefix::

    from tidings.layers import get_channel_layer

    layer = get_channel_layer()
    await layer.group_send("chat", {"type": "chat.message", "text": "hi"})

- :func:`get_channel_layer` returns the layer of an alias of the
  ``CHANNEL_LAYERS`` setting (an in-memory layer when the setting is unset);
- :data:`channel_layers` is the manager that builds and caches them;
- :class:`BaseChannelLayer` is the contract backends implement;
- :class:`InMemoryChannelLayer` is the one-process backend;
  ``tidings.layers.redis.RedisChannelLayer`` is the multi-process one.
"""

from __future__ import annotations

from tidings.layers._manager import (
    DEFAULT_CHANNEL_LAYER,
    ChannelLayerManager,
    channel_layers,
    get_channel_layer,
)
from tidings.layers.base import BaseChannelLayer, Message
from tidings.layers.inmemory import InMemoryChannelLayer

__all__ = [
    "DEFAULT_CHANNEL_LAYER",
    "BaseChannelLayer",
    "ChannelLayerManager",
    "InMemoryChannelLayer",
    "Message",
    "channel_layers",
    "get_channel_layer",
]
