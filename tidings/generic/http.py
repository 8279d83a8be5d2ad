"""HTTP consumers (Channels' ``channels.generic.http``) and a streaming variant.

Theory of operation
-------------------
:class:`AsyncHttpConsumer` collects the request body from the
``http.request`` messages (ASGI ``more_body`` chunks), then calls
``handle(body)`` once, then ``disconnect()``, then stops: exactly Channels'
life cycle. ``handle`` answers with ``send_response`` or with
``send_headers`` and one or more ``send_body`` calls. A client that goes
away (``http.disconnect``) calls ``disconnect()`` and stops the consumer.

Because the instance stops as soon as ``handle`` returns, Channels' HTTP
consumer cannot keep a response open while it waits for channel-layer
events (the long-poll example in Channels' own documentation does not work).
:class:`AsyncHttpStreamConsumer` fills that gap: after ``handle`` returns it
keeps running *as long as the response is still open* (headers sent, last
body chunk not yet sent). Meanwhile channel-layer messages reach their
handlers (``chat_message`` for ``{"type": "chat.message"}``), which write
more of the response with ``send_body(..., more_body=True)`` and finish it
with ``more_body=False``. It joins ``groups`` before ``handle`` and leaves
them, and any group joined with ``join_group``, when the response finishes,
when the client disconnects, or when the instance fails.

An exception from ``handle`` or a handler propagates out of the ASGI
application (after ``disconnect()`` has run); the server logs it and answers
500 if no response had started, or aborts the connection otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tidings._types import Message
from tidings.consumer import AsyncConsumer
from tidings.exceptions import StopConsumer

__all__ = ["AsyncHttpConsumer", "AsyncHttpStreamConsumer"]

HttpHeaders = Iterable[tuple[bytes, bytes]] | Mapping[bytes, bytes]


class AsyncHttpConsumer(AsyncConsumer):
    """An async HTTP consumer: override ``handle(body)`` to answer one request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body: list[bytes] = []

    async def send_headers(self, *, status: int = 200, headers: HttpHeaders | None = None) -> None:
        """Start the response: status line and headers (sent with the first body chunk)."""
        if headers is None:
            header_list: list[tuple[bytes, bytes]] = []
        elif isinstance(headers, Mapping):
            header_list = list(headers.items())
        else:
            header_list = list(headers)
        await self.send({"type": "http.response.start", "status": status, "headers": header_list})

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None:
        """Send a chunk of the response body; ``more_body=False`` ends the response.

        Raises:
            TypeError: ``body`` is not bytes.
        """
        if not isinstance(body, bytes):
            raise TypeError(f"The response body must be bytes, not {type(body).__name__}.")
        await self.send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def send_response(self, status: int, body: bytes, **kwargs: Any) -> None:
        """Send a whole response: ``send_headers(status=status, **kwargs)`` then the body."""
        await self.send_headers(status=status, **kwargs)
        await self.send_body(body)

    async def handle(self, body: bytes) -> None:
        """Answer the request whose complete body is ``body``; subclasses must override it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement handle(body) (AsyncHttpConsumer subclasses do)."
        )

    async def disconnect(self) -> None:
        """Called once when the request is over (answered or abandoned)."""

    async def http_request(self, message: Message) -> None:
        """Collect one body chunk; on the last one run ``handle``, then stop."""
        if "body" in message:
            self.body.append(message["body"])
        if not message.get("more_body"):
            try:
                await self.handle(b"".join(self.body))
            except OSError:
                if not self._client_gone:  # the handler's own error, not a send's
                    raise
            finally:
                await self.disconnect()
            raise StopConsumer()

    async def http_disconnect(self, message: Message) -> None:
        """The client went away: call ``disconnect()`` and stop."""
        await self.disconnect()
        raise StopConsumer()


class AsyncHttpStreamConsumer(AsyncHttpConsumer):
    """An HTTP consumer whose response can outlive ``handle`` (streaming, long-poll).

    Start the response in ``handle`` and leave it open; write to it from
    channel-layer handlers; finish it with ``send_body(..., more_body=False)``::

        class Feed(AsyncHttpStreamConsumer):
            groups = ["news"]

            async def handle(self, body):
                await self.send_headers(headers=[(b"content-type", b"text/plain")])
                await self.send_body(b"", more_body=True)

            async def news_item(self, event):       # group_send(type="news.item")
                await self.send_body(event["text"].encode(), more_body=True)

    The instance stops (after ``disconnect()``) when ``handle`` returns
    without leaving a response open, when a handler ends the response, or
    when the client disconnects; its groups are left in every case.

    Attributes:
        groups: group names joined before ``handle`` runs.
    """

    groups: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.groups is None:
            self.groups = []
        self._response_started = False
        self._response_finished = False
        self._disconnected = False

    @property
    def response_open(self) -> bool:
        """Whether the response has started and its last body chunk is not yet sent."""
        return self._response_started and not self._response_finished

    async def send(self, message: Message) -> None:
        """Send an ASGI message; ends the instance once the response is complete."""
        await super().send(message)
        if message.get("type") == "http.response.start":
            self._response_started = True
        elif message.get("type") == "http.response.body" and not message.get("more_body"):
            self._response_finished = True

    async def dispatch(self, message: Message) -> None:
        """Dispatch, then stop if the response was finished by this message's handler."""
        await super().dispatch(message)
        if self._response_finished and not self._disconnected:
            await self._finish()

    async def http_request(self, message: Message) -> None:
        """Collect one body chunk; on the last one join groups and run ``handle``."""
        if "body" in message:
            self.body.append(message["body"])
        if message.get("more_body"):
            return
        for group in self.groups or ():
            await self.join_group(group)
        try:
            await self.handle(b"".join(self.body))
        except Exception:
            await self._finish_quietly()
            raise
        if not self.response_open:
            await self._finish()

    async def http_disconnect(self, message: Message) -> None:
        """The client went away: leave groups, call ``disconnect()`` and stop."""
        await self._finish()

    async def _finish(self) -> None:
        if self._disconnected:
            raise StopConsumer()
        self._disconnected = True
        await self._leave_all_groups()
        await self.disconnect()
        raise StopConsumer()

    async def _finish_quietly(self) -> None:
        try:
            await self._finish()
        except StopConsumer:
            pass
