"""The clients of the multi-host runs, and what their records say.

A :class:`FeedClient` holds one WebSocket to the feed of one host at a time,
either plain or as a session of the fallback transports (wire protocol v1,
``?tidings=ws``, with resume). It knows every host, in its own order (its
home host first): when its connection ends or fails, it tries the next one,
after a delay with jitter, as ``tidings.js`` does (``INITIAL_DELAY``, doubling
per failed attempt up to ``MAX_DELAY``, less up to ``JITTER`` of it at random;
the first attempt after a connection that had opened waits only the initial
delay). It pings every ``PING_INTERVAL``, to notice a host that went silent. It
records what it got, with the wall-clock time of arrival:

- ``arrivals``: ``(n, time, host)`` for every numbered message;
- ``readies``: ``(time, host, channel)`` for every time it joined the group;
- sessions only: ``opens`` (every ``open`` envelope, with whether it asked to
  resume) and ``duplicates`` (envelopes whose ``seq`` it already had).

The helpers below it turn records into the figures the tests assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

__all__ = [
    "CLOSE_TIMEOUT",
    "INITIAL_DELAY",
    "JITTER",
    "MAX_DELAY",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "FeedClient",
    "Open",
    "largest_gap",
    "order_problems",
]

INITIAL_DELAY = 0.25
MAX_DELAY = 5.0
JITTER = 0.5
OPEN_TIMEOUT = 3.0
PING_INTERVAL = 1.0
"""Seconds between the client's WebSocket pings: a host cut off the network sends
no reset, so a client notices it only by a ping that gets no answer."""
PING_TIMEOUT = 1.0
CLOSE_TIMEOUT = 1.0
"""Seconds the client waits for the closing handshake (a silent host never answers)."""
ACK_EVERY = 20


@dataclass
class Open:
    """An ``open`` envelope a session client got."""

    time: float
    host: str
    sid: str
    resumed: bool
    asked: bool  # the request carried a sid: the client asked to resume


@dataclass
class FeedClient:
    """One client of the feed (see the module docstring)."""

    name: str
    hosts: list[tuple[str, str]]  # (host name, "ws://address:port"), home host first
    session: bool = False
    rng: random.Random = field(default_factory=random.Random)
    arrivals: list[tuple[int, float, str]] = field(default_factory=list)
    readies: list[tuple[float, str, str]] = field(default_factory=list)
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    opens: list[Open] = field(default_factory=list)
    duplicates: int = 0
    seq_gaps: int = 0
    index: int = 0
    sid: str | None = None
    last: int = 0
    cookie: str | None = None
    stopping: bool = False
    ws: ClientConnection | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def home(self) -> str:
        return self.hosts[0][0]

    @property
    def host(self) -> str:
        """The host of the current (or last) connection."""
        return self.hosts[self.index % len(self.hosts)][0]

    @property
    def channel(self) -> str:
        """The channel of the consumer that serves this client now."""
        return self.readies[-1][2]

    async def run(self) -> None:
        """Stay connected to some host until :meth:`stop`."""
        failed = 0
        while not self.stopping:
            host, base = self.hosts[self.index % len(self.hosts)]
            opened = len(self.readies) + len(self.opens)
            try:
                await self._connection(host, base)
            except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
                self.failures.append((time.time(), host, type(exc).__name__))
            if self.stopping:
                return
            healthy = len(self.readies) + len(self.opens) > opened
            failed = 0 if healthy else failed + 1
            self.index += 1
            delay = min(MAX_DELAY, INITIAL_DELAY * 2**failed)
            await asyncio.sleep(delay * (1 - JITTER * self.rng.random()))

    async def move(self) -> None:
        """Drop the connection: the client goes on with the next host."""
        if self.ws is not None:
            await self.ws.close()

    async def stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            await self.ws.close()

    async def _connection(self, host: str, base: str) -> None:
        params: dict[str, Any] = {}
        headers: dict[str, str] = {}
        asked = False
        if self.session:
            params["tidings"] = "ws"
            if self.sid is not None:
                params.update(sid=self.sid, last=self.last)
                asked = True
            if self.cookie is not None:
                headers["Cookie"] = self.cookie
        url = f"{base}/feed/" + (f"?{urlencode(params)}" if params else "")
        async with connect(
            url,
            additional_headers=headers,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
        ) as ws:
            self.ws = ws
            if self.session and self.cookie is None and ws.response is not None:
                for value in ws.response.headers.get_all("set-cookie"):
                    self.cookie = value.split(";", 1)[0]
            async for raw in ws:
                now = time.time()
                if not self.session:
                    self._text(str(raw), now, host)
                elif not await self._envelope(ws, json.loads(raw), now, host, asked):
                    return

    async def _envelope(
        self, ws: ClientConnection, envelope: dict[str, Any], now: float, host: str, asked: bool
    ) -> bool:
        """Handle one envelope of protocol v1; False to drop the connection and resume."""
        if envelope.get("type") == "open":
            self.opens.append(Open(now, host, envelope["sid"], envelope["resumed"], asked))
            if not envelope["resumed"]:
                self.last = 0  # a new session numbers from 1
            self.sid = envelope["sid"]
            return True
        seq = envelope.get("seq")
        if seq is None:
            return True  # {"cack": n}, or a close message (the test never closes sessions)
        if seq <= self.last:
            self.duplicates += 1
            return True
        if seq > self.last + 1:
            self.seq_gaps += 1
            return False  # resuming fills the gap
        self.last = seq
        self._text(envelope["text"], now, host)
        if seq % ACK_EVERY == 0:
            await ws.send(json.dumps({"ack": seq}))
        return True

    def _text(self, text: str, now: float, host: str) -> None:
        if text.startswith("{"):
            self.readies.append((now, host, json.loads(text)["channel"]))
            self.ready.set()
        else:
            self.arrivals.append((int(text), now, host))

    def ns(self) -> list[int]:
        """The numbers received, in order of arrival."""
        return [n for n, _, _ in self.arrivals]

    def first_after(self, moment: float, *, not_from: str | None = None) -> float | None:
        """When the first message came after ``moment`` (through a host other than ``not_from``)."""
        return next((t for _, t, host in self.arrivals if t > moment and host != not_from), None)


def largest_gap(client: FeedClient, since: float, until: float) -> float:
    """The longest time without a message for ``client`` between ``since`` and ``until``."""
    times = [since, *(t for _, t, _ in client.arrivals if since < t < until), until]
    return max(b - a for a, b in itertools.pairwise(times))


def order_problems(client: FeedClient) -> tuple[int, int]:
    """``(duplicates, out of order)``: numbers received twice, and arrivals below an earlier one."""
    ns = client.ns()
    duplicates = len(ns) - len(set(ns))
    backwards = sum(1 for a, b in itertools.pairwise(ns) if b <= a)
    return duplicates, backwards


async def gather_stop(clients: list[FeedClient], tasks: list[asyncio.Task[None]]) -> None:
    """Stop every client and wait for its task."""
    for client in clients:
        with contextlib.suppress(Exception):
            await client.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
