"""The worker project's application: one consumer on the ``jobs`` channel."""

from __future__ import annotations

from tidings.consumer import AsyncConsumer
from tidings.routing import ChannelNameRouter, ProtocolTypeRouter


class JobConsumer(AsyncConsumer):
    """Answers ``job`` messages on the channel named in ``reply_to``."""

    async def job(self, message: dict[str, object]) -> None:
        assert self.channel_layer is not None
        await self.channel_layer.send(str(message["reply_to"]), {"type": "done"})


application = ProtocolTypeRouter({"channel": ChannelNameRouter({"jobs": JobConsumer.as_asgi()})})
