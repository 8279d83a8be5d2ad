"""Test a WebSocket ASGI application without a server (Channels' ``WebsocketCommunicator``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

from tidings._types import Scope
from tidings.testing.application import ApplicationCommunicator

__all__ = ["WebsocketCommunicator"]


class WebsocketCommunicator(ApplicationCommunicator):
    """Run a WebSocket application for one connection and talk to it like a client.

    The scope has ``type="websocket"``, ``path`` (percent-decoded),
    ``raw_path`` (as given, without the query string), ``query_string``,
    ``headers``, ``subprotocols`` and, if given, ``spec_version``.

    Args:
        application: the ASGI application (usually your router or ``Consumer.as_asgi()``).
        path: the request target, e.g. ``"/ws/chat/lobby/?token=abc"``.
        headers: ``(name, value)`` byte pairs, names lower-case.
        subprotocols: subprotocols the client offers.
        spec_version: the ASGI WebSocket spec version to put in the scope.

    Attributes:
        response_headers: the ``headers`` of the application's
            ``websocket.accept`` (``[]`` when it gave none), once :meth:`connect`
            saw it accept; ``None`` before.
    """

    def __init__(
        self,
        application: Any,
        path: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        subprotocols: list[str] | None = None,
        spec_version: str | None = None,
    ) -> None:
        if not isinstance(path, str):
            raise TypeError(f"Expected str, got {type(path).__name__}")
        parsed = urlsplit(path)
        scope: Scope = {
            "type": "websocket",
            "path": unquote(parsed.path),
            "raw_path": parsed.path.encode("latin-1", "ignore"),
            "query_string": parsed.query.encode("utf-8"),
            "headers": headers or [],
            "subprotocols": subprotocols or [],
        }
        if spec_version:
            scope["spec_version"] = spec_version
        super().__init__(application, scope)
        self.response_headers: list[Any] | None = None

    async def connect(self, timeout: float = 1) -> tuple[bool, Any]:
        """Open the connection.

        Returns:
            ``(True, subprotocol)`` if the application accepted (the
            subprotocol it chose, or ``None``), ``(False, close_code)`` if it
            closed instead (``1000`` when it gave no code).

        Raises:
            TimeoutError: the application answered nothing in ``timeout`` seconds.
            AssertionError: it answered with something other than accept or close.
        """
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return (False, response.get("code", 1000))
        if response["type"] != "websocket.accept":
            raise AssertionError(
                f"Expected 'websocket.accept' or 'websocket.close', got {response['type']!r}"
            )
        self.response_headers = response.get("headers", [])
        return (True, response.get("subprotocol", None))

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send a text or a binary frame to the application.

        Raises:
            ValueError: both or neither of ``text_data`` and ``bytes_data`` given.
            TypeError: the data has the wrong type.
        """
        if (text_data is None) == (bytes_data is None):
            raise ValueError("Pass exactly one of text_data and bytes_data.")
        if text_data is not None:
            if not isinstance(text_data, str):
                raise TypeError(f"text_data must be str, not {type(text_data).__name__}")
            await self.send_input({"type": "websocket.receive", "text": text_data})
        else:
            if not isinstance(bytes_data, bytes):
                raise TypeError(f"bytes_data must be bytes, not {type(bytes_data).__name__}")
            await self.send_input({"type": "websocket.receive", "bytes": bytes_data})

    async def send_json_to(self, data: Any) -> None:
        """Send ``data`` encoded as JSON in a text frame."""
        await self.send_to(text_data=json.dumps(data))

    async def receive_from(self, timeout: float = 1) -> str | bytes:
        """Return the payload of the next frame the application sends.

        Raises:
            TimeoutError: nothing within ``timeout`` seconds.
            AssertionError: the application sent something else (a close, say).
        """
        response = await self.receive_output(timeout)
        if response["type"] != "websocket.send":
            raise AssertionError(f"Expected type 'websocket.send', but was {response['type']!r}")
        text, data = response.get("text"), response.get("bytes")
        if (text is None) == (data is None):
            raise AssertionError("The message needs exactly one of 'text' and 'bytes'.")
        if text is not None:
            if not isinstance(text, str):
                raise AssertionError("Text frame payload is not str")
            return text
        if not isinstance(data, bytes):
            raise AssertionError("Binary frame payload is not bytes")
        return data

    async def receive_json_from(self, timeout: float = 1) -> Any:
        """Return the next frame, which must be a text frame, decoded as JSON.

        Raises:
            AssertionError: the frame is binary.
        """
        payload = await self.receive_from(timeout)
        if not isinstance(payload, str):
            raise AssertionError("JSON data is not a text frame")
        return json.loads(payload)

    async def disconnect(self, code: int = 1000, timeout: float = 1) -> None:
        """Tell the application the client closed with ``code``; wait for it to end."""
        await self.send_input({"type": "websocket.disconnect", "code": code})
        await self.wait(timeout)
