"""A small Python client of wire protocol v1, over real sockets (httpx, websockets).

Only what the tests need: open an SSE stream and read envelopes, poll, POST,
open a session WebSocket. Every wait has a timeout so a broken server fails a
test instead of hanging it. Reading the next envelope skips ``{"cack": n}``
envelopes (they come whenever a timer says so) unless ``cacks=True``.

Cookies: anonymous sessions are bound to a cookie (the browser key). An
``httpx`` client keeps its cookies; a session WebSocket shares the cookie jar
``JAR`` points to (the harness sets it to its HTTP client's), as a browser's
WebSockets share its cookies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tidings.wire.sse import EventStreamParser, ServerSentEvent

TIMEOUT = 5.0

#: The cookies session WebSockets send and keep (``None``: none).
JAR: httpx.Cookies | None = None


@dataclass
class Endpoint:
    """Where a server listens, and how to spell its URLs."""

    port: int
    host: str = "127.0.0.1"

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str, **params: Any) -> str:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.origin}{path}" + (f"?{query}" if query else "")

    def ws_url(self, path: str, **params: Any) -> str:
        return "ws" + self.url(path, **params).removeprefix("http")


@dataclass
class SSE:
    """An open event stream."""

    response: httpx.Response
    parser: EventStreamParser = field(default_factory=EventStreamParser)
    events: deque[ServerSentEvent] = field(default_factory=deque)
    raw: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self._chunks = self.response.aiter_raw()

    async def event(self, timeout: float = TIMEOUT) -> ServerSentEvent:
        """The next event (heartbeat comments are skipped by the parser)."""
        while not self.events:
            chunk = await asyncio.wait_for(anext(self._chunks), timeout)
            self.raw += chunk
            self.events.extend(self.parser.feed(chunk))
        return self.events.popleft()

    async def next(self, timeout: float = TIMEOUT, *, cacks: bool = False) -> dict[str, Any]:
        """The next envelope (``{"cack": n}`` ones only if ``cacks``)."""
        while True:
            value: dict[str, Any] = json.loads((await self.event(timeout)).data)
            if cacks or not is_cack(value):
                return value

    async def ended(self, timeout: float = TIMEOUT) -> bool:
        """Read to the end of the stream; whether it ended (rather than timing out)."""
        async with asyncio.timeout(timeout):
            async for chunk in self._chunks:
                self.raw += chunk
                self.events.extend(self.parser.feed(chunk))
        return True


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SSE]:
    """Open an SSE stream; leaving the block cuts the connection."""
    async with client.stream("GET", url, headers=headers or {}) as response:
        yield SSE(response)


async def poll(client: httpx.AsyncClient, url: str, **kwargs: Any) -> list[dict[str, Any]]:
    """One long-poll; asserts 200 and returns the envelopes."""
    response = await client.get(url, **kwargs)
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    value: list[dict[str, Any]] = response.json()
    return value


def is_cack(envelope: dict[str, Any]) -> bool:
    """Whether ``envelope`` is a ``{"cack": n}`` (and nothing else)."""
    return envelope.keys() == {"cack"}


def messages(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The message envelopes (not open/close/cack), in order."""
    return [e for e in envelopes if "seq" in e and "type" not in e]


def texts(envelopes: list[dict[str, Any]]) -> list[str]:
    """The ``text`` of the message envelopes, in order."""
    return [e["text"] for e in messages(envelopes)]


def last_seq(envelopes: list[dict[str, Any]]) -> int:
    """The highest ``seq`` of the message envelopes (0 if none)."""
    return max((e["seq"] for e in messages(envelopes)), default=0)


@contextlib.asynccontextmanager
async def session_ws(
    url: str, origin: str | None = None, *, jar: httpx.Cookies | None = None
) -> AsyncIterator[ClientConnection]:
    """Open a session WebSocket (``url`` carries ``tidings=ws``), with ``jar`` or ``JAR``."""
    jar = JAR if jar is None else jar
    headers = {"Origin": origin} if origin else {}
    http_url = "http" + url.removeprefix("ws")
    if jar is not None:
        request = httpx.Request("GET", http_url)
        jar.set_cookie_header(request)
        if "cookie" in request.headers:
            headers["Cookie"] = request.headers["cookie"]
    async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
        if jar is not None and ws.response is not None:
            set_cookies = ws.response.headers.get_all("set-cookie")
            if set_cookies:
                response = httpx.Response(
                    101,
                    headers=[("set-cookie", value) for value in set_cookies],
                    request=httpx.Request("GET", http_url),
                )
                jar.extract_cookies(response)
        yield ws


async def ws_next(
    ws: ClientConnection, timeout: float = TIMEOUT, *, cacks: bool = False
) -> dict[str, Any]:
    """The next envelope on a session WebSocket (``{"cack": n}`` ones only if ``cacks``)."""
    while True:
        value: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if cacks or not is_cack(value):
            return value


async def send_items(
    client: httpx.AsyncClient,
    url: str,
    items: list[dict[str, Any]],
    origin: str,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST client items (``url`` carries ``tidings=send&sid=...``)."""
    headers = {"Origin": origin, **(headers or {})}
    return await client.post(url, content=json.dumps(items), headers=headers)


def msg(cseq: int, text: str) -> dict[str, Any]:
    """A client message item."""
    return {"cseq": cseq, "text": text}
