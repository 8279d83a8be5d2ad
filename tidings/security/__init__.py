"""Security middleware; the WebSocket origin checks live in :mod:`tidings.security.websocket`."""

from __future__ import annotations

__all__: list[str] = []
