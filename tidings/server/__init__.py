"""The Tidings interface server: an ASGI 3 server for HTTP/1.1 and WebSocket.

``tidings serve module:app`` on the command line, or from Python::

    from tidings.server import Config, run
    run(Config(app="myproject.asgi:application", port=8000))

This package never imports Django or the channel layers: it serves any ASGI
application.
"""

from __future__ import annotations

from tidings.server._main import Server, run
from tidings.server.config import Config, Limits, Timeouts, WebSocketSettings

__all__ = ["Config", "Limits", "Server", "Timeouts", "WebSocketSettings", "run"]
