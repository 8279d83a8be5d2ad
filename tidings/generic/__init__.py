"""Generic consumers, in submodules as in Channels.

WebSocket consumers live in :mod:`tidings.generic.websocket`, HTTP ones in
:mod:`tidings.generic.http`; import the classes from there.
"""

from __future__ import annotations

__all__: list[str] = []
