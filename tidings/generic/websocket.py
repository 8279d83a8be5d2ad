"""WebSocket consumers (Channels' ``channels.generic.websocket``).

Theory of operation
-------------------
The ASGI WebSocket messages map onto overridable methods:

=========================  ===============================================
ASGI message / call        method
=========================  ===============================================
``websocket.connect``      join ``groups``, then ``connect()`` (default: ``accept()``)
``websocket.receive``      ``receive(text_data=...)`` or ``receive(bytes_data=...)``
``websocket.disconnect``   leave ``groups``, ``disconnect(code)``, then stop
``accept()``               send ``websocket.accept`` (subprotocol, headers)
``send()``                 send ``websocket.send`` (text or bytes), optionally close
``close()``                send ``websocket.close`` (before accept: deny, HTTP 403)
layer ``websocket.send``   send it to the client as is (Tidings extension)
=========================  ===============================================

``connect()`` may raise :class:`~tidings.exceptions.AcceptConnection` or
:class:`~tidings.exceptions.DenyConnection` as signals.

**Errors.** An exception from any handler propagates out of the ASGI
application; the server logs it and closes the socket with 1011 (internal
error, RFC 6455 section 7.4.1). Group memberships are left even then (the
base consumer leaves them when the instance ends for any reason).

**JSON consumers** expect text frames holding JSON. As in Channels, a frame
without text (binary, or empty) raises ``ValueError`` and text that is not
JSON raises ``decode_json``'s error (``json.JSONDecodeError``, a
``ValueError``): the consumer ends as on any application error. To close the
socket instead and keep the consumer running, set the class attributes
``unsupported_data_close_code`` (RFC 6455 section 7.4.1 suggests ``1003``,
"an endpoint that understands only text data MAY send this if it receives a
binary message") and ``invalid_json_close_code`` (``1007``, "data within a
message that was not consistent with the type of the message"); an empty
text frame counts as invalid JSON then. An exception raised by
``receive_json`` is the application's and propagates as above.

The sync classes run every handler in the worker thread (see
:class:`~tidings.consumer.SyncConsumer`); their ``accept``/``send``/``close``
are plain calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync

from tidings._types import Message
from tidings.consumer import AsyncConsumer, SyncConsumer
from tidings.exceptions import AcceptConnection, DenyConnection, StopConsumer

__all__ = [
    "AsyncJsonWebsocketConsumer",
    "AsyncWebsocketConsumer",
    "JsonWebsocketConsumer",
    "WebsocketConsumer",
]

logger = logging.getLogger("tidings.consumer")

#: RFC 6455 section 7.4.1 / ASGI: no status code was present in the close frame.
CLOSE_NO_STATUS = 1005

WebsocketHeaders = Iterable[tuple[bytes, bytes]]


def _accept_message(subprotocol: str | None, headers: WebsocketHeaders | None) -> Message:
    message: Message = {"type": "websocket.accept", "subprotocol": subprotocol}
    if headers:
        message["headers"] = list(headers)
    return message


def _send_message(text_data: str | None, bytes_data: bytes | None) -> Message:
    if text_data is not None:
        return {"type": "websocket.send", "text": text_data}
    if bytes_data is not None:
        return {"type": "websocket.send", "bytes": bytes_data}
    raise ValueError("send() needs text_data or bytes_data.")


def _close_message(code: int | bool | None, reason: str | None) -> Message:
    message: Message = {"type": "websocket.close"}
    # close=True on send() means "close with the default code", as in Channels.
    if code is not None and code is not True:
        message["code"] = code
    if reason:
        message["reason"] = reason
    return message


#: Channels' message for a frame without text, which its tests match on.
_NO_TEXT_ERROR = "No text section for incoming WebSocket frame!"


def _no_text_close_code(text_data: str | None, unsupported: int | None, invalid: int | None) -> int:
    """Return the code to close with for a frame without text (binary, or empty text).

    Raises:
        ValueError: no close code is configured for such a frame (Channels' behaviour).
    """
    code = unsupported if text_data is None else invalid
    if code is None:
        raise ValueError(_NO_TEXT_ERROR)
    logger.debug("JSON consumer got a frame without text; closing with %d", code)
    return code


def _receive_kwargs(message: Message) -> dict[str, Any]:
    text = message.get("text")
    if text is not None:
        return {"text_data": text}
    return {"bytes_data": message.get("bytes")}


class WebsocketConsumer(SyncConsumer):
    """A synchronous WebSocket consumer; override ``connect``, ``receive``, ``disconnect``.

    Attributes:
        groups: group names joined on connect and left on disconnect.
    """

    groups: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.groups is None:
            self.groups = []

    def websocket_connect(self, message: Message) -> None:
        """Join ``groups``, then call ``connect()``, honouring Accept/DenyConnection."""
        for group in self.groups or ():
            async_to_sync(self.join_group)(group)
        try:
            self.connect()
        except AcceptConnection:
            self.accept()
        except DenyConnection:
            self.close()

    def connect(self) -> None:
        """Decide on the connection; the default accepts it."""
        self.accept()

    def accept(
        self, subprotocol: str | None = None, headers: WebsocketHeaders | None = None
    ) -> None:
        """Accept the connection, optionally choosing a subprotocol and adding headers."""
        super().send(_accept_message(subprotocol, headers))
        self._allow_direct_sends()

    def websocket_receive(self, message: Message) -> None:
        """Pass a received frame to ``receive``."""
        self.receive(**_receive_kwargs(message))

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Handle one frame from the client; the default ignores it."""

    def send(  # type: ignore[override]
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send a text or binary frame; ``close`` (True or a code) then closes.

        Raises:
            ValueError: neither ``text_data`` nor ``bytes_data`` was given.
        """
        super().send(_send_message(text_data, bytes_data))
        if close:
            self.close(close)

    def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the connection (before ``accept``: refuse it with HTTP 403)."""
        super().send(_close_message(code, reason))

    def websocket_send(self, message: Message) -> None:
        """A ``websocket.send`` message from the channel layer: send it to the client.

        A Tidings extension: ``group_send(group, {"type": "websocket.send", "text": ...})``
        reaches every member's client (directly from the layer for idle members).
        """
        super().send(_send_message(message.get("text"), message.get("bytes")))

    def websocket_disconnect(self, message: Message) -> None:
        """Leave ``groups``, call ``disconnect(code)``, then stop the consumer."""
        for group in self.groups or ():
            async_to_sync(self.leave_group)(group)
        self.disconnect(message.get("code", CLOSE_NO_STATUS))
        raise StopConsumer()

    def disconnect(self, code: int) -> None:
        """Called when the socket closed, with the close code; the default does nothing."""


class JsonWebsocketConsumer(WebsocketConsumer):
    """A :class:`WebsocketConsumer` that speaks JSON text frames.

    Override ``receive_json(content)``; send with ``send_json(content)``.
    """

    #: Close with this code on text that is not JSON (e.g. 1007), instead of raising.
    invalid_json_close_code: int | None = None
    #: Close with this code on a binary frame (e.g. 1003), instead of raising.
    unsupported_data_close_code: int | None = None

    def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """Decode a text frame and pass it to ``receive_json``.

        Raises:
            ValueError: the frame has no text, or ``decode_json`` failed, and
                no close code is configured for that (see the module docstring).
        """
        if not text_data:
            self.close(
                _no_text_close_code(
                    text_data, self.unsupported_data_close_code, self.invalid_json_close_code
                )
            )
            return
        try:
            content = self.decode_json(text_data)
        except ValueError:
            if self.invalid_json_close_code is None:
                raise
            logger.debug("JSON consumer got undecodable text; closing")
            self.close(self.invalid_json_close_code)
            return
        self.receive_json(content, **kwargs)

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Handle one decoded JSON value; the default ignores it."""

    def send_json(self, content: Any, close: bool | int = False) -> None:
        """Encode ``content`` as JSON and send it as a text frame."""
        super().send(text_data=self.encode_json(content), close=close)

    @classmethod
    def decode_json(cls, text_data: str) -> Any:
        """Decode a JSON text frame (override to use another decoder).

        Raises:
            ValueError: the text is not valid JSON.
        """
        return json.loads(text_data)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        """Encode ``content`` for a text frame (override to use another encoder)."""
        return json.dumps(content)


class AsyncWebsocketConsumer(AsyncConsumer):
    """An async WebSocket consumer; override ``connect``, ``receive``, ``disconnect``.

    Attributes:
        groups: group names joined on connect and left on disconnect.
    """

    groups: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.groups is None:
            self.groups = []

    async def websocket_connect(self, message: Message) -> None:
        """Join ``groups``, then call ``connect()``, honouring Accept/DenyConnection."""
        for group in self.groups or ():
            await self.join_group(group)
        try:
            await self.connect()
        except AcceptConnection:
            await self.accept()
        except DenyConnection:
            await self.close()

    async def connect(self) -> None:
        """Decide on the connection; the default accepts it."""
        await self.accept()

    async def accept(
        self, subprotocol: str | None = None, headers: WebsocketHeaders | None = None
    ) -> None:
        """Accept the connection, optionally choosing a subprotocol and adding headers."""
        await super().send(_accept_message(subprotocol, headers))
        self._allow_direct_sends()

    async def websocket_receive(self, message: Message) -> None:
        """Pass a received frame to ``receive``."""
        await self.receive(**_receive_kwargs(message))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Handle one frame from the client; the default ignores it."""

    async def send(  # type: ignore[override]
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send a text or binary frame; ``close`` (True or a code) then closes.

        Raises:
            ValueError: neither ``text_data`` nor ``bytes_data`` was given.
        """
        await super().send(_send_message(text_data, bytes_data))
        if close:
            await self.close(close)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the connection (before ``accept``: refuse it with HTTP 403)."""
        await super().send(_close_message(code, reason))

    async def websocket_send(self, message: Message) -> None:
        """A ``websocket.send`` message from the channel layer: send it to the client.

        A Tidings extension: ``group_send(group, {"type": "websocket.send", "text": ...})``
        reaches every member's client (directly from the layer for idle members).
        """
        await super().send(_send_message(message.get("text"), message.get("bytes")))

    async def websocket_disconnect(self, message: Message) -> None:
        """Leave ``groups``, call ``disconnect(code)``, then stop the consumer."""
        for group in self.groups or ():
            await self.leave_group(group)
        await self.disconnect(message.get("code", CLOSE_NO_STATUS))
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        """Called when the socket closed, with the close code; the default does nothing."""


class AsyncJsonWebsocketConsumer(AsyncWebsocketConsumer):
    """An :class:`AsyncWebsocketConsumer` that speaks JSON text frames.

    Override ``receive_json(content)``; send with ``send_json(content)``.
    """

    #: Close with this code on text that is not JSON (e.g. 1007), instead of raising.
    invalid_json_close_code: int | None = None
    #: Close with this code on a binary frame (e.g. 1003), instead of raising.
    unsupported_data_close_code: int | None = None

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """Decode a text frame and pass it to ``receive_json``.

        Raises:
            ValueError: the frame has no text, or ``decode_json`` failed, and
                no close code is configured for that (see the module docstring).
        """
        if not text_data:
            await self.close(
                _no_text_close_code(
                    text_data, self.unsupported_data_close_code, self.invalid_json_close_code
                )
            )
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError:
            if self.invalid_json_close_code is None:
                raise
            logger.debug("JSON consumer got undecodable text; closing")
            await self.close(self.invalid_json_close_code)
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Handle one decoded JSON value; the default ignores it."""

    async def send_json(self, content: Any, close: bool | int = False) -> None:
        """Encode ``content`` as JSON and send it as a text frame."""
        await super().send(text_data=await self.encode_json(content), close=close)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        """Decode a JSON text frame (override to use another decoder).

        Raises:
            ValueError: the text is not valid JSON.
        """
        return json.loads(text_data)

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        """Encode ``content`` for a text frame (override to use another encoder)."""
        return json.dumps(content)
