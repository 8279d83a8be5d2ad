"""Test helpers for Tidings applications (Channels' ``channels.testing``).

- :class:`ApplicationCommunicator`: drive any ASGI application message by message;
- :class:`WebsocketCommunicator`: act as a WebSocket client of an application;
- :class:`HttpCommunicator`: send one HTTP request and collect the response.

They run the application in the test's event loop, with no server and no
sockets. Submodules mirror Channels': ``tidings.testing.websocket``,
``tidings.testing.http`` and ``tidings.testing.application``.

- :class:`ChannelsLiveServerTestCase` (alias ``TidingsLiveServerTestCase``,
  in ``tidings.testing.live``): a ``TransactionTestCase`` with the Tidings
  server running ``ASGI_APPLICATION`` in another process, for real clients.
  It is imported on first access, so importing ``tidings.testing`` does not
  need Django's test framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.testing.application import ApplicationCommunicator
from tidings.testing.http import HttpCommunicator
from tidings.testing.websocket import WebsocketCommunicator

if TYPE_CHECKING:
    from tidings.testing.live import ChannelsLiveServerTestCase, TidingsLiveServerTestCase

__all__ = [
    "ApplicationCommunicator",
    "ChannelsLiveServerTestCase",
    "HttpCommunicator",
    "TidingsLiveServerTestCase",
    "WebsocketCommunicator",
]

_LAZY = frozenset({"ChannelsLiveServerTestCase", "TidingsLiveServerTestCase"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tidings.testing import live

        return getattr(live, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
