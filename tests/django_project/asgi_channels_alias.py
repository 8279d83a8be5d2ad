"""An ASGI application written against ``channels``, for the live server's alias test.

It imports only through ``tidings.alias``: the server process can load it only when
the alias is installed there as in the test process.
"""

from channels.generic.http import AsyncHttpConsumer


class ChannelsHello(AsyncHttpConsumer):
    """Answers every request with a fixed text."""

    async def handle(self, body: bytes) -> None:
        await self.send_response(
            200, b"served through the channels alias", headers=[(b"content-type", b"text/plain")]
        )


application = ChannelsHello.as_asgi()
