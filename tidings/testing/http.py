"""Test an HTTP ASGI application without a server (Channels' ``HttpCommunicator``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from tidings._types import Scope
from tidings.testing.application import ApplicationCommunicator

__all__ = ["HttpCommunicator"]


class HttpCommunicator(ApplicationCommunicator):
    """Send one HTTP request to an application and collect its response.

    Args:
        application: the ASGI application.
        method: the request method (upper-cased for the scope).
        path: the request target, e.g. ``"/feed/?since=3"``.
        body: the request body.
        headers: ``(name, value)`` byte pairs, names lower-case.
    """

    def __init__(
        self,
        application: Any,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        if not isinstance(body, bytes):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        parsed = urlsplit(path)
        scope: Scope = {
            "type": "http",
            "http_version": "1.1",
            "method": method.upper(),
            "path": unquote(parsed.path),
            "raw_path": parsed.path.encode("latin-1", "ignore"),
            "query_string": parsed.query.encode("utf-8"),
            "headers": headers or [],
        }
        super().__init__(application, scope)
        self.body = body
        self.sent_request = False

    async def send_request(self) -> None:
        """Send the request body (once) as a single ``http.request`` message."""
        if not self.sent_request:
            self.sent_request = True
            await self.send_input({"type": "http.request", "body": self.body})

    async def get_response(self, timeout: float = 1) -> dict[str, Any]:
        """Send the request and return the whole response.

        Returns:
            ``{"status": int, "headers": [...], "body": bytes}``, the body
            joined from all ``http.response.body`` chunks.

        Raises:
            TimeoutError: a part of the response took more than ``timeout`` seconds.
            AssertionError: the application sent messages out of order.
        """
        await self.send_request()
        start = await self.receive_output(timeout)
        if start["type"] != "http.response.start":
            raise AssertionError(f"Expected 'http.response.start', got {start['type']!r}")
        response: dict[str, Any] = {k: v for k, v in start.items() if k != "type"}
        response.setdefault("headers", [])
        body = bytearray()
        while True:
            chunk = await self.receive_output(timeout)
            if chunk["type"] != "http.response.body":
                raise AssertionError(f"Expected 'http.response.body', got {chunk['type']!r}")
            body += chunk.get("body", b"")
            if not chunk.get("more_body", False):
                break
        response["body"] = bytes(body)
        return response
