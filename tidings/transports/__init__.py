"""Fallback transports: a WebSocket consumer also served over SSE and long-polling, with resume.

Replace ``ProtocolTypeRouter`` by :class:`TransportRouter` in ``asgi.py``;
``docs/transports.md`` describes what the consumer sees, the settings, and
wire protocol version 1 (which ``tidings/static/tidings/tidings.js`` speaks).

Modules:

* ``router``: :class:`TransportRouter`, :func:`fallback`; session requests
  through the ``"websocket"`` middleware stack; ``request``: parsing them, the
  browser key cookie of anonymous sessions;
* ``manager``: the sessions of one process, signed session ids, owners, limits;
  ``limiter``: how fast one client address may open sessions;
* ``session``: one session: consumer instance, resume buffer, attachment;
* ``inbox``: a session's client messages and their acknowledgement (``cack``);
* ``remote``: sessions of other processes, through the channel layer;
* ``websocket``, ``sse``, ``longpoll``: the three transports (and the POSTs);
* ``protocol``: the JSON envelopes of protocol v1; ``config``: the settings.

This package is above the application layer: it imports routing, consumers,
layers and ``tidings.wire``; nothing in ``tidings.server`` or
``tidings.layers`` imports it.
"""

from __future__ import annotations

from tidings.transports._router import TransportRouter, fallback
from tidings.transports.config import TransportSettings

__all__ = ["TransportRouter", "TransportSettings", "fallback"]
