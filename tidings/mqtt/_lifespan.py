"""``MqttLifespan``: start the MQTT runtime on ASGI lifespan startup, stop it on shutdown.

``ProtocolTypeRouter`` installs it as its ``"lifespan"`` application when it
has an ``"mqtt"`` entry, around the ``"lifespan"`` application it was given,
if any: startup runs the inner application's startup first, then connects the
brokers; shutdown stops MQTT first (so no handler runs against a closed
database pool), then the inner application's shutdown. A start-up failure (a
bad setting, a broker that refuses the credentials) answers
``lifespan.startup.failed`` with the message, and ``tidings serve`` exits
naming the setting.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tidings._types import ASGIApp, ASGIReceive, ASGISend, Message, Scope
from tidings.mqtt._errors import MqttError
from tidings.mqtt._runtime import running

__all__ = ["MqttLifespan"]


class MqttLifespan:
    """The ASGI lifespan application that runs MQTT for ``router``.

    Args:
        router: the ``"mqtt"`` application (a :class:`TopicRouter`).
        inner: the project's own lifespan application, or ``None``.
    """

    def __init__(self, router: Any, inner: ASGIApp | None = None) -> None:
        self.router = router
        self.inner = inner

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        stack = contextlib.AsyncExitStack()

        async def start() -> str | None:
            try:
                await stack.enter_async_context(running(self.router))
            except MqttError as exc:
                return str(exc)
            return None

        if self.inner is None:
            async with stack:
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        failure = await start()
                        if failure is not None:
                            await send({"type": "lifespan.startup.failed", "message": failure})
                            return
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await stack.aclose()
                        await send({"type": "lifespan.shutdown.complete"})
                        return

        async def inner_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await stack.aclose()
            return message

        async def inner_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                failure = await start()
                if failure is not None:
                    message = {"type": "lifespan.startup.failed", "message": failure}
            await send(message)

        async with stack:
            await self.inner(scope, inner_receive, inner_send)
