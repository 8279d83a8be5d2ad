"""Write-side flow control shared by the HTTP/1.1 and WebSocket protocols.

The transport calls ``pause_writing`` when its buffer passes the high-water
mark and ``resume_writing`` when it drains; senders wait on a future in
``_drain_waiters`` meanwhile. Connection loss must release the waiters too.
"""

from __future__ import annotations

import asyncio

__all__ = ["WriteFlowControl"]


class WriteFlowControl:
    """Mixin for an ``asyncio.Protocol``; the class sets both attributes in ``__init__``."""

    __slots__ = ("_drain_waiters", "_write_paused")

    _write_paused: bool
    _drain_waiters: list[asyncio.Future[None]]

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain_waiters()

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
