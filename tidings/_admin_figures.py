"""What the live admin page shows, read once a second for every admin socket of a process.

Theory of operation
-------------------
One :class:`Sampler` per event loop and channel layer alias (:func:`sampler_for`) runs
while at least one admin socket watches it. Once every ``INTERVAL`` seconds it reads:

- **metrics** (``tidings._metrics.figures()``: every worker's totals, which the
  supervisor of ``tidings serve --metrics-bind`` sends each worker once a second; None
  when metrics are off): open connections by kind, and per-second rates of WebSocket
  messages in and out, HTTP responses and ``group_send`` calls, from the difference of
  two successive totals;
- **workers** (``tidings._metrics.workers()``, sent with the totals): every worker's
  pid, uptime and open connections, the one serving the page marked. Without a
  supervisor (metrics off, or before its first totals) the panel shows this process
  alone, with its own open connections (``tidings._metrics.ACTIVE``);
- **the busiest groups**: :mod:`tidings._admin_groups` (every second in memory, every
  ``REDIS_GROUPS_INTERVAL`` seconds on Redis, where each refresh costs a bounded slice);
- **presence**: ``tidings.presence.topics()`` (this process's replica), the
  ``TOP_TOPICS`` largest;
- **layer health**: for Redis a ``PING`` per host with its round trip (bounded by
  ``PING_TIMEOUT``), and the outages and reconnects that metrics counted.

Each reading becomes one JSON object, encoded once and sent to every socket; a socket
that opens gets the last reading with the rates of the last ``HISTORY`` seconds. The
work per second is the same whatever the number of sockets, groups or topics; nothing
here changes any state of the layer, presence or server.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from tidings import _metrics, presence
from tidings._admin_groups import GroupCounts, RedisGroups, memory_top
from tidings.layers import get_channel_layer
from tidings.layers.inmemory import InMemoryChannelLayer
from tidings.layers.redis import RedisChannelLayer

__all__ = [
    "HISTORY",
    "INTERVAL",
    "PANEL_TIMEOUT",
    "PING_TIMEOUT",
    "RATES",
    "REDIS_GROUPS_INTERVAL",
    "TOP_TOPICS",
    "Sampler",
    "sampler_for",
]

#: Seconds between two readings.
INTERVAL: Final = 1.0
#: Readings of the rates a newly opened page gets (its chart's width).
HISTORY: Final = 60
#: Seconds between two refreshes of the busiest groups of a Redis layer.
REDIS_GROUPS_INTERVAL: Final = 5.0
#: Seconds a Redis ``PING`` may take before the host is shown unreachable.
PING_TIMEOUT: Final = 1.0
#: Seconds one panel (groups, presence, health) may take before it shows "unavailable".
PANEL_TIMEOUT: Final = 2.0
#: Presence topics listed.
TOP_TOPICS: Final = 10
#: The rate series: name -> how to read its counter from a metrics snapshot (complete:
#: ``tidings._metrics.figures()`` never returns a partial one).
RATES: Final[dict[str, Callable[[_metrics.Snapshot], int]]] = {
    "ws_in": lambda s: int(s["ws_messages_in"]),
    "ws_out": lambda s: int(s["ws_messages_out"]),
    "http": lambda s: sum(sum(h["counts"]) for h in s["http_duration"]),
    "group_send": lambda s: sum(s["layer_group_send"]["counts"]),
}

logger = logging.getLogger("tidings.admin")
_STARTED: Final = time.time()


def _process_started() -> float:
    """This process's start, Unix time (Linux: /proc; elsewhere this module's import)."""
    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            # Field 22, after the parenthesised command name: start, in ticks after boot.
            ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
            since_boot = float(uptime.read().split()[0])
        return time.time() - since_boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _STARTED


def _connections(snapshot: _metrics.Snapshot) -> dict[str, int]:
    return {kind: int(snapshot[f"open_{kind}"]) for kind in _metrics.KINDS}


def _own_connections(metrics: _metrics.Metrics) -> dict[str, int]:
    return {kind: int(getattr(metrics, f"open_{kind}")) for kind in _metrics.KINDS}


class Sampler:
    """The readings of one alias in one event loop, shared by its admin sockets."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.latest: dict[str, Any] | None = None
        self.latest_text = ""
        self.seq = 0
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY)
        self.watchers = 0
        self.started = _process_started()
        self._task: asyncio.Task[None] | None = None
        self._tick: asyncio.Future[None] | None = None
        self._redis_groups: RedisGroups | None = None
        self._groups = GroupCounts()
        self._groups_at = 0.0
        self._previous: tuple[float, dict[str, int]] | None = None
        self._counted: _metrics.Snapshot | None = None
        self._rate: dict[str, float] | None = None
        self._warned: set[str] = set()

    # -- watchers ---------------------------------------------------------------------

    def watch(self) -> None:
        """One more admin socket; the first starts the readings."""
        self.watchers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def unwatch(self) -> None:
        """One admin socket fewer; the last stops the readings and closes connections."""
        self.watchers -= 1
        if self.watchers > 0 or self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Nobody watched meanwhile: the next page starts from a fresh reading.
        self.latest, self._previous, self._counted, self._rate = None, None, None, None
        self.history.clear()
        if self._redis_groups is not None:
            groups, self._redis_groups = self._redis_groups, None
            await groups.aclose()

    async def first(self) -> tuple[str, int]:
        """The last reading with the rate history (the page's first message), and its number."""
        while self.latest is None:
            await self.next_after(self.seq)
        assert self.latest is not None
        message = {**self.latest, "history": list(self.history)}
        return json.dumps(message, separators=(",", ":")), self.seq

    async def next_after(self, seq: int) -> tuple[str, int]:
        """The first reading after number ``seq`` (waits for it), and its number."""
        while self.seq <= seq:
            if self._tick is None or self._tick.done():
                self._tick = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._tick)
        return self.latest_text, self.seq

    # -- readings ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                reading = await self.read()
            except Exception:
                if "read" not in self._warned:  # once, not once a second
                    self._warned.add("read")
                    logger.exception("the live admin page could not read its figures")
            else:
                self._warned.discard("read")
                self.latest = reading
                self.latest_text = json.dumps(reading, separators=(",", ":"))
                self.seq += 1
                if self._tick is not None and not self._tick.done():
                    self._tick.set_result(None)
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

    async def read(self) -> dict[str, Any]:
        """One reading (see the module docstring for where each figure comes from)."""
        now = time.time()
        totals = _metrics.figures()
        own = _metrics.ACTIVE
        rate = self._rates(totals, time.monotonic())
        if rate is not None:
            self.history.append({"t": round(now, 3), **rate})
        layer = get_channel_layer(self.alias)
        # Concurrently: a Redis that does not answer costs one PANEL_TIMEOUT, not three.
        groups, topics, health = await asyncio.gather(
            self._groups_of(layer), self._presence(), self._health(layer, totals)
        )
        return {
            "type": "figures",
            "at": round(now, 3),
            "interval": INTERVAL,
            "metrics": totals is not None,
            "connections": _connections(totals) if totals is not None else None,
            "workers": self._workers(now, own),
            "rates": None if rate is None else {"t": round(now, 3), **rate},
            "groups": groups.as_json(),
            "presence": topics,
            "layer": health,
        }

    def _workers(self, now: float, own: _metrics.Metrics | None) -> list[dict[str, Any]]:
        """The workers panel: every worker from the supervisor's figures, else this process."""
        pid = os.getpid()
        workers = _metrics.workers()
        if not workers:
            return [
                {
                    "pid": pid,
                    "uptime": round(now - self.started, 1),
                    "connections": None if own is None else _own_connections(own),
                    "this": True,
                }
            ]
        return [
            {
                "pid": worker_pid,
                "uptime": round(max(0.0, now - worker["started"]), 1),
                "connections": worker["connections"],
                "this": worker_pid == pid,
            }
            for worker_pid, worker in sorted(workers.items())
        ]

    def _rates(self, totals: _metrics.Snapshot | None, now: float) -> dict[str, float] | None:
        """Per-second rates since the previous distinct totals (None with metrics off)."""
        if totals is None:
            self._previous = self._counted = self._rate = None
            return None
        if totals is self._counted and self._rate is not None:
            return self._rate  # the supervisor has not sent new totals yet
        counts = {name: read(totals) for name, read in RATES.items()}
        previous, self._previous, self._counted = self._previous, (now, counts), totals
        if previous is None:
            return None
        elapsed = max(now - previous[0], 1e-3)
        self._rate = {
            name: round(max(0, counts[name] - previous[1][name]) / elapsed, 2) for name in counts
        }
        return self._rate

    async def _groups_of(self, layer: object) -> GroupCounts:
        try:
            async with asyncio.timeout(PANEL_TIMEOUT):
                return await self._read_groups(layer)
        except Exception as exc:
            self._warn("groups", exc)
            self._groups = GroupCounts(note="unavailable (see the server log)")
            return self._groups

    async def _read_groups(self, layer: object) -> GroupCounts:
        if isinstance(layer, InMemoryChannelLayer):
            self._warned.discard("groups")
            return memory_top(layer.groups)
        if isinstance(layer, RedisChannelLayer):
            now = time.monotonic()
            if now - self._groups_at >= REDIS_GROUPS_INTERVAL:
                self._groups_at = now
                self._groups = await self._redis(layer).refresh()
                self._warned.discard("groups")
            return self._groups
        return GroupCounts(note="this channel layer does not list its groups")

    async def _presence(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(PANEL_TIMEOUT):
                topics = await presence.topics(alias=self.alias)
            self._warned.discard("presence")
        except Exception as exc:
            self._warn("presence", exc)
            return {"top": [], "total": 0, "note": "unavailable (see the server log)"}
        top = heapq.nlargest(TOP_TOPICS, topics.items(), key=lambda item: (item[1], item[0]))
        return {"top": [[t, n] for t, n in top], "total": len(topics), "note": ""}

    async def _health(self, layer: object, totals: _metrics.Snapshot | None) -> dict[str, Any]:
        health: dict[str, Any] = {
            "backend": type(layer).__name__ if layer is not None else None,
            "hosts": [],
            "outages": None,
            "reconnects": None,
        }
        if isinstance(layer, RedisChannelLayer):
            health["hosts"] = await self._redis(layer).ping(PING_TIMEOUT)
            if totals is not None:
                health["outages"] = int(totals["redis_outages"])
                health["reconnects"] = int(totals["redis_reconnects"])
        return health

    def _redis(self, layer: RedisChannelLayer) -> RedisGroups:
        if self._redis_groups is None:
            self._redis_groups = RedisGroups(
                layer.hosts, prefix=layer.prefix, group_expiry=layer.group_expiry
            )
        return self._redis_groups

    def _warn(self, what: str, exc: Exception) -> None:
        """Log a failing figure once until it works again (never sent to the page)."""
        if what not in self._warned:
            self._warned.add(what)
            logger.warning("live admin page: %s failed: %r", what, exc)


_samplers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Sampler]] = (
    weakref.WeakKeyDictionary()
)


def sampler_for(alias: str) -> Sampler:
    """The sampler of ``alias`` in the running event loop (made on first use)."""
    samplers = _samplers.setdefault(asyncio.get_running_loop(), {})
    sampler = samplers.get(alias)
    if sampler is None:
        sampler = samplers[alias] = Sampler(alias)
    return sampler
