"""The busiest groups of a channel layer, for the live admin page, at a bounded cost.

Theory of operation
-------------------
The admin page shows the ``TOP_GROUPS`` groups with the most members. How they are
found depends on where the layer keeps its groups:

- **In-memory layer**: the groups are a dict of this process (``layer.groups``, Channels'
  attribute). :func:`memory_top` copies at most ``MEMORY_SCAN_LIMIT`` of its entries
  and keeps the largest; past that limit the figure is marked ``partial``. Only this
  process's groups are seen, as only this process can use them.
- **Redis layer**: every group is a sorted set ``<prefix>:{<shard>}:gm:<group>`` (and
  ``gp:<group>`` for shared-channel members) on some host. :class:`RedisGroups` walks
  the keys with ``SCAN MATCH <prefix>:{*}:g[mp]:*`` a slice at a time: at most
  ``SCAN_CALLS`` calls of ``COUNT SCAN_COUNT`` per refresh and host, its cursor kept
  from one refresh to the next. It counts each key's live members with ``ZCOUNT``
  (memberships younger than ``group_expiry``, as ``group_send`` sees them) in one Lua
  script per batch of keys of one hash tag (cluster-safe), keeps the largest
  ``KEEP_GROUPS`` of the sweep under way, and publishes them when the sweep ends. The
  groups already published are counted again at every refresh (one script each), so
  their figures stay fresh while a long sweep runs.

Cost on Redis per refresh and host: ``SCAN_CALLS`` SCANs (each O(``SCAN_COUNT``)) and
one short script per batch of matching keys, whatever the number of keys. A keyspace of
``K`` keys takes about ``K / (SCAN_CALLS * SCAN_COUNT)`` refreshes to sweep.

The page's sampler (:mod:`tidings._admin_figures`) owns one :class:`RedisGroups` per
process and event loop, with clients of its own (``HostSpec.connect``): the layer's
connections are never borrowed. Nothing here changes any key.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tidings.layers._redis_hosts import HostClients, HostSpec

__all__ = [
    "KEEP_GROUPS",
    "MEMORY_SCAN_LIMIT",
    "SCAN_CALLS",
    "SCAN_COUNT",
    "TOP_GROUPS",
    "GroupCounts",
    "RedisGroups",
    "group_of",
    "memory_top",
]

#: Groups the page lists.
TOP_GROUPS: Final = 10
#: In-memory groups looked at per refresh; beyond them the list is marked partial.
MEMORY_SCAN_LIMIT: Final = 100_000
#: SCAN calls per refresh and Redis host.
SCAN_CALLS: Final = 10
#: Keys each SCAN call examines (Redis' ``COUNT`` hint).
SCAN_COUNT: Final = 500
#: Largest groups remembered during a Redis sweep (the rest are forgotten at once).
KEEP_GROUPS: Final = 10 * TOP_GROUPS

logger = logging.getLogger("tidings.admin")

# Live members of each key (KEYS, all of one hash tag): ZCOUNT of the scores after
# ``now - group_expiry`` ms, the memberships group_send still sees.
_COUNT_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local after = '(' .. string.format('%.0f', now - tonumber(ARGV[1]))
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZCOUNT', key, after, '+inf')
end
return out
"""


@dataclass
class GroupCounts:
    """The busiest groups as the page shows them.

    Attributes:
        top: ``(group, members)``, largest first, at most ``TOP_GROUPS``.
        total: groups seen (in the last complete sweep, for Redis).
        partial: not every group was looked at yet (a first sweep under way, or more
            in-memory groups than ``MEMORY_SCAN_LIMIT``).
        note: what the figure cannot show, for the page (empty when nothing).
    """

    top: list[tuple[str, int]] = field(default_factory=list)
    total: int = 0
    partial: bool = False
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "top": [[name, count] for name, count in self.top],
            "total": self.total,
            "partial": self.partial,
            "note": self.note,
        }


def _largest(counts: Iterable[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    return heapq.nlargest(n, counts, key=lambda item: (item[1], item[0]))


def memory_top(groups: Mapping[str, Mapping[str, float]]) -> GroupCounts:
    """The busiest of an in-memory layer's ``groups`` (group -> {channel: added at})."""
    for _ in range(3):
        try:
            # One C-level pass (the GIL held): a thread changing the dict meanwhile
            # can only make it fail, and then it is tried again.
            sizes = [(g, len(m)) for g, m in itertools.islice(groups.items(), MEMORY_SCAN_LIMIT)]
            break
        except RuntimeError:
            continue
    else:
        return GroupCounts(partial=True, note="the groups changed too fast to be read")
    total = len(groups)
    return GroupCounts(top=_largest(sizes, TOP_GROUPS), total=total, partial=total > len(sizes))


class _Walk:
    """One host's sweep: its cursor and the largest group keys seen in it so far."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.clients: HostClients | None = None
        self.cursor = 0
        self.seen: dict[str, int] = {}  # key -> live members, the largest KEEP_GROUPS
        self.seen_total = 0
        self.done: dict[str, int] | None = None  # the same, of the last complete sweep
        self.done_total = 0


class RedisGroups:
    """A rolling, bounded sweep of a Redis layer's group keys (see the module docstring).

    Args:
        hosts: the layer's ``hosts`` (parsed ``HostSpec`` entries).
        prefix: the layer's key prefix.
        group_expiry: the layer's ``group_expiry``, seconds.
    """

    def __init__(self, hosts: Iterable[HostSpec], *, prefix: str, group_expiry: float) -> None:
        self.walks = [_Walk(spec) for spec in hosts]
        self.pattern = _glob_escape(prefix) + ":{*}:g[mp]:*"
        self.expiry_ms = int(group_expiry * 1000)
        self.down: set[str] = set()  # hosts whose last ping failed

    async def refresh(self) -> GroupCounts:
        """Advance every host's sweep by one slice; return the busiest groups known.

        Raises:
            OSError, redis errors: a host cannot be reached (the caller reports it).
        """
        if any(walk.spec.kind == "cluster" for walk in self.walks):
            return GroupCounts(note="not listed on a Redis Cluster layer")
        partial = False
        groups: dict[str, int] = {}
        total = 0
        for walk in self.walks:
            await self._step(walk)
            if walk.done is None:
                partial = True
                keys, total = walk.seen, total + walk.seen_total
            else:
                keys, total = walk.done, total + walk.done_total
            for key, members in keys.items():
                group = group_of(key)
                groups[group] = groups.get(group, 0) + members
        return GroupCounts(top=_largest(groups.items(), TOP_GROUPS), total=total, partial=partial)

    async def ping(self, timeout: float) -> list[dict[str, Any]]:
        """Each host: ``{"host", "reachable", "ping_ms"}``, by a one-line script's round trip.

        A host that fails or takes over ``timeout`` seconds is unreachable (logged once
        until it answers again; the error is never shown on the page).
        """
        hosts = []
        for walk in self.walks:
            where = walk.spec.describe()
            if walk.clients is None:
                walk.clients = walk.spec.connect()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    await walk.clients.main.eval("return 1", 0)
            except Exception as exc:  # refused, reset, timed out: unreachable all the same
                if where not in self.down:
                    self.down.add(where)
                    logger.warning("live admin page: Redis %s is unreachable: %r", where, exc)
                hosts.append({"host": where, "reachable": False, "ping_ms": None})
                continue
            self.down.discard(where)
            ms = round((time.perf_counter() - started) * 1000, 2)
            hosts.append({"host": where, "reachable": True, "ping_ms": ms})
        return hosts

    async def aclose(self) -> None:
        """Close this object's own connections (the layer's are never touched)."""
        for walk in self.walks:
            if walk.clients is not None:
                clients, walk.clients = walk.clients, None
                await clients.aclose()

    async def _step(self, walk: _Walk) -> None:
        if walk.clients is None:
            walk.clients = walk.spec.connect()
        client = walk.clients.main
        keys: set[str] = set()
        for _ in range(SCAN_CALLS):
            walk.cursor, found = await _scan(client, walk.cursor, self.pattern)
            keys.update(key.decode("utf-8", "replace") for key in found)
            if walk.cursor == 0:
                break
        counted = await self._count(client, keys)
        walk.seen_total += len(counted.keys() - walk.seen.keys())
        walk.seen.update(counted)
        _trim(walk.seen)
        if walk.done is not None:
            # Fresh figures for the groups on show while the next sweep runs.
            walk.done = await self._count(client, walk.done.keys())
        if walk.cursor == 0:
            walk.done, walk.done_total = walk.seen, walk.seen_total
            walk.seen, walk.seen_total = {}, 0

    async def _count(self, client: Any, keys: Iterable[str]) -> dict[str, int]:
        """Live members of each key that has any, one script per batch of one hash tag."""
        by_tag: dict[str, list[str]] = {}
        for key in keys:
            by_tag.setdefault(key[: key.find("}") + 1], []).append(key)
        counts: dict[str, int] = {}
        for same_slot in by_tag.values():
            for start in range(0, len(same_slot), SCAN_COUNT):
                batch = same_slot[start : start + SCAN_COUNT]
                replies = await client.eval(_COUNT_SCRIPT, len(batch), *batch, self.expiry_ms)
                for key, members in zip(batch, replies, strict=True):
                    if members:
                        counts[key] = int(members)
        return counts


def group_of(key: str) -> str:
    """The group name of a key ``<prefix>:{<shard>}:gm:<group>`` (or ``gp:``)."""
    return key[key.find("}:") + 5 :]


async def _scan(client: Any, cursor: int, pattern: str) -> tuple[int, list[bytes]]:
    """One ``SCAN`` on the lean client (raw reply) or redis-py (parsed reply)."""
    if hasattr(client, "execute"):
        raw = await client.execute("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
        return int(raw[0]), list(raw[1])
    next_cursor, keys = await client.scan(cursor, match=pattern, count=SCAN_COUNT)
    return int(next_cursor), [k if isinstance(k, bytes) else str(k).encode() for k in keys]


def _trim(seen: dict[str, int]) -> None:
    if len(seen) > KEEP_GROUPS:
        kept = _largest(seen.items(), KEEP_GROUPS)
        seen.clear()
        seen.update(kept)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
