"""The ASGI lifespan protocol: startup and shutdown events for the app.

``--lifespan auto`` (the default) treats an app that raises on the lifespan
scope before answering as one that does not support it, logs that once, and
serves anyway. ``on`` makes that an error; ``off`` never sends the scope.
The ``state`` dict the app fills during startup is shallow-copied into every
request's scope (ASGI lifespan state extension).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tidings._types import ASGIApp, Message
from tidings.server.config import LifespanMode
from tidings.server.errors import ServerError

__all__ = ["Lifespan", "LifespanError"]

logger = logging.getLogger("tidings.error")


class LifespanError(ServerError):
    """Startup or shutdown failed; the message is the app's."""


class Lifespan:
    """Runs the lifespan scope of one app in one event loop."""

    def __init__(self, app: ASGIApp, mode: LifespanMode, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self._receive_queue: asyncio.Queue[Message] = asyncio.Queue()
        self._startup = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._failure: str | None = None
        self._unsupported = False
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the answer.

        Raises:
            LifespanError: the app answered ``lifespan.startup.failed``, or raised
                while ``--lifespan on``.
        """
        if self.mode == "off":
            return
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._receive_queue.put({"type": "lifespan.startup"})
        waiter = asyncio.ensure_future(self._startup.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._failure is not None:
            raise LifespanError(self._failure)
        if self._unsupported:
            return
        if not self._startup.is_set():
            if self.mode == "auto":
                # An app that just returns on scopes it doesn't handle.
                self._unsupported = True
                logger.info("the application does not support the ASGI lifespan protocol")
                return
            raise LifespanError("the application returned during lifespan startup")

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the answer (errors are logged)."""
        if self._task is None or self._unsupported or self._task.done():
            return
        self._failure = None
        await self._receive_queue.put({"type": "lifespan.shutdown"})
        waiter = asyncio.ensure_future(self._shutdown.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        failure = self.failure()
        if failure is not None:
            logger.error("lifespan shutdown failed: %s", failure)

    def failure(self) -> str | None:
        """The app's failure message from the last startup or shutdown, if any."""
        return self._failure

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            if not self._startup.is_set() and self.mode == "auto":
                self._unsupported = True
                logger.info("the application does not support the ASGI lifespan protocol")
                logger.debug("lifespan error", exc_info=exc)
            elif not self._startup.is_set():
                self._failure = f"exception during startup: {exc!r}"
                logger.error("exception in lifespan startup", exc_info=exc)
            else:
                self._failure = f"exception during shutdown: {exc!r}"
                logger.error("exception in lifespan protocol", exc_info=exc)

    async def _receive(self) -> Message:
        return await self._receive_queue.get()

    async def _send(self, message: Message) -> None:
        mtype = message.get("type")
        if mtype == "lifespan.startup.complete":
            self._startup.set()
        elif mtype == "lifespan.startup.failed":
            self._failure = str(message.get("message", "")) or "startup failed"
            self._startup.set()
        elif mtype == "lifespan.shutdown.complete":
            self._shutdown.set()
        elif mtype == "lifespan.shutdown.failed":
            self._failure = str(message.get("message", "")) or "shutdown failed"
            self._shutdown.set()
        else:
            raise RuntimeError(f"unexpected lifespan message {mtype!r}")
