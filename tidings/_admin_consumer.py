"""The live admin page's WebSocket: staff only, read only, one JSON object a second.

A connection is refused (HTTP 403, before the handshake completes) unless
``scope["user"]`` is an active staff user; the scope gets its user from
``AuthMiddlewareStack``, which the routing must put in front of this consumer
(without it every connection is refused and an error is logged once). The user is
looked up again every ``RECHECK_INTERVAL`` seconds: one who lost staff status, was
deactivated or changed password is disconnected with close code 4003.

Accepted sockets watch the process's :class:`~tidings._admin_figures.Sampler`, which
reads the figures once a second whatever the number of sockets. The client can change
nothing: every frame it sends is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from tidings._admin_figures import sampler_for
from tidings.auth import get_user
from tidings.generic.websocket import AsyncWebsocketConsumer
from tidings.layers import DEFAULT_CHANNEL_LAYER

__all__ = ["RECHECK_INTERVAL", "REVOKED_CLOSE_CODE", "LiveAdminConsumer", "is_staff"]

#: Seconds between two checks that the socket's user is still active staff.
RECHECK_INTERVAL: Final = 30.0
#: Close code of a socket whose user is no longer staff (4000-4999: the application's).
REVOKED_CLOSE_CODE: Final = 4003

logger = logging.getLogger("tidings.admin")
_warned_no_user = False


def is_staff(user: Any) -> bool:
    """Whether ``user`` may see the live admin page: authenticated, active, staff."""
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
    )


class LiveAdminConsumer(AsyncWebsocketConsumer):
    """Pushes the live admin page's figures to staff users; refuses everyone else.

    Attributes:
        channel_layer_alias: the layer whose groups, presence and health are shown.
    """

    channel_layer_alias = DEFAULT_CHANNEL_LAYER

    async def connect(self) -> None:
        global _warned_no_user
        if "user" not in self.scope and not _warned_no_user:
            _warned_no_user = True
            logger.error(
                "the live admin socket has no scope['user']: route it through "
                "AuthMiddlewareStack (every connection is refused until then)"
            )
        if not is_staff(self.scope.get("user")):
            await self.close()  # before accept: the handshake is refused with 403
            return
        await self.accept()
        self._pump = asyncio.get_running_loop().create_task(self._push())

    async def disconnect(self, code: int) -> None:
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Frames from the page are ignored: it can change nothing."""

    async def _push(self) -> None:
        sampler = sampler_for(self.channel_layer_alias)
        sampler.watch()
        try:
            text, seq = await sampler.first()
            await self.send(text_data=text)
            checked = time.monotonic()
            while True:
                text, seq = await sampler.next_after(seq)
                if time.monotonic() - checked >= RECHECK_INTERVAL and "session" in self.scope:
                    checked = time.monotonic()
                    if not is_staff(await get_user(self.scope)):
                        await self.close(REVOKED_CLOSE_CODE)
                        return
                await self.send(text_data=text)
        finally:
            await sampler.unwatch()
