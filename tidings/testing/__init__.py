"""Test helpers for Tidings applications (Channels' ``channels.testing``).

- :class:`ApplicationCommunicator`: drive any ASGI application message by message;
- :class:`WebsocketCommunicator`: act as a WebSocket client of an application;
- :class:`HttpCommunicator`: send one HTTP request and collect the response.

They run the application in the test's event loop, with no server and no
sockets. Submodules mirror Channels': ``tidings.testing.websocket``,
``tidings.testing.http`` and ``tidings.testing.application``.
"""

from __future__ import annotations

from tidings.testing.application import ApplicationCommunicator
from tidings.testing.http import HttpCommunicator
from tidings.testing.websocket import WebsocketCommunicator

__all__ = ["ApplicationCommunicator", "HttpCommunicator", "WebsocketCommunicator"]
