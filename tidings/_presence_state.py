"""Presence state without I/O: the replica of every node's members, diffs, settings.

Theory of operation
-------------------
Presence is replicated, as in Phoenix Presence: every process (a *node*, named
by its tracker's layer channel) holds the members of every node, and changes
travel as deltas over the channel layer (see :mod:`tidings._presence_tracker`).
This module holds the data and its rules, and nothing that waits:

- a *member entry* is ``(topic, key, ref) -> meta``, owned by one node. ``key``
  is the presence key the app chose (a user id, by default); ``ref`` is a fresh
  random id per ``track`` call, so re-tracking with new metadata is a leave of
  the old ref and a join of the new one, and a client can apply a diff's joins
  before its leaves in every case;
- a node's entries change only through that node's own messages
  (:meth:`Replica.join`, :meth:`Replica.leave`, :meth:`Replica.replace_node`)
  or its expiry (:meth:`Replica.drop_node`): no message can remove another
  node's member;
- every change is recorded in a :class:`DiffBuffer` per topic, which coalesces
  what happens within one batch window: a ref that joins and leaves within the
  window appears in neither list.

The public shape of a topic's list and of a diff is Phoenix's:
``{key: {"metas": [meta, ...]}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "RESERVED_META_KEYS",
    "SETTING",
    "DiffBuffer",
    "Entry",
    "Meta",
    "PresenceSettings",
    "Presences",
    "Replica",
    "check_meta",
    "parse_settings",
]

Meta: TypeAlias = dict[str, Any]
"""One connection's metadata: JSON-serializable, with ``ref``, ``conn`` and ``joined_at``."""

Presences: TypeAlias = dict[str, dict[str, list[Meta]]]
"""A topic's members: ``{key: {"metas": [meta, ...]}}`` (Phoenix's shape)."""

Entry: TypeAlias = tuple[str, str, str, Meta]
"""``(topic, key, ref, meta)``: one member connection, as it travels between nodes."""

SETTING: Final = "TIDINGS_PRESENCE"
RESERVED_META_KEYS: Final = frozenset({"ref", "conn", "joined_at"})
"""Metadata keys Tidings sets itself; an app's ``meta`` may not hold them."""


@dataclass(frozen=True)
class PresenceSettings:
    """``TIDINGS_PRESENCE``, checked.

    Attributes:
        heartbeat_interval: seconds between a node's heartbeats (and its sweeps
            of silent nodes).
        timeout: seconds of silence after which a node's members are dropped.
            A killed process's members disappear within ``timeout +
            heartbeat_interval`` (30 s with the defaults).
        batch_window: seconds over which changes are coalesced into one delta
            per node and one diff per topic and subscriber.
        max_meta_bytes: largest metadata, as compact UTF-8 JSON, a connection
            may carry.
        sync_wait: seconds a newly started node waits for the other nodes'
            states before its first list.
    """

    heartbeat_interval: float = 5.0
    timeout: float = 25.0
    batch_window: float = 0.05
    max_meta_bytes: int = 4096
    sync_wait: float = 1.0


_KEYS: Final = {
    "HEARTBEAT_INTERVAL": "heartbeat_interval",
    "TIMEOUT": "timeout",
    "BATCH_WINDOW": "batch_window",
    "MAX_META_BYTES": "max_meta_bytes",
    "SYNC_WAIT": "sync_wait",
}


def _number(key: str, value: object, *, integer: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
        or not math.isfinite(value)
        or value <= 0
    ):
        kind = "an int" if integer else "a number"
        raise ImproperlyConfigured(f"{SETTING}[{key!r}] must be {kind} > 0, not {value!r}")
    return value


def parse_settings(raw: object) -> PresenceSettings:
    """Check the ``TIDINGS_PRESENCE`` setting (None: all defaults).

    Raises:
        ImproperlyConfigured: an unknown key, a value out of range, or a
            ``TIMEOUT`` shorter than two heartbeats; the message names the key.
    """
    if raw is None:
        return PresenceSettings()
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict, not {type(raw).__name__}")
    unknown = sorted(str(key) for key in raw if key not in _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(map(repr, _KEYS))}"
        )
    values = {
        _KEYS[key]: _number(key, value, integer=key == "MAX_META_BYTES")
        for key, value in raw.items()
    }
    settings = PresenceSettings(**values)  # type: ignore[arg-type]
    if settings.timeout < 2 * settings.heartbeat_interval:
        raise ImproperlyConfigured(
            f"{SETTING}['TIMEOUT'] ({settings.timeout}) must be at least twice "
            f"{SETTING}['HEARTBEAT_INTERVAL'] ({settings.heartbeat_interval}), so that "
            "one lost heartbeat does not drop a live node's members"
        )
    return settings


def check_meta(meta: object, max_bytes: int) -> Meta:
    """Return a copy of an app's ``meta`` after checking it.

    Raises:
        TypeError: ``meta`` is not a dict with str keys, or is not JSON-serializable.
        ValueError: it holds a reserved key, or is over ``max_bytes`` as JSON.
    """
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(key, str) for key in meta):
        raise TypeError(f"presence meta must be a dict with str keys, not {type(meta).__name__}")
    reserved = sorted(RESERVED_META_KEYS.intersection(meta))
    if reserved:
        raise ValueError(f"presence meta may not set {', '.join(reserved)}: Tidings sets them")
    try:
        encoded = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"presence meta must be JSON-serializable: {exc}") from exc
    if len(encoded) > max_bytes:
        raise ValueError(
            f"presence meta is {len(encoded)} bytes as JSON, over the limit of {max_bytes} "
            f"({SETTING}['MAX_META_BYTES'])"
        )
    copied: Meta = json.loads(encoded)
    return copied


class DiffBuffer:
    """The joins and leaves of one topic within one batch window, coalesced by ref."""

    __slots__ = ("joins", "leaves")

    def __init__(self) -> None:
        self.joins: dict[str, tuple[str, Meta]] = {}
        self.leaves: dict[str, tuple[str, Meta]] = {}

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves)

    def join(self, key: str, ref: str, meta: Meta) -> None:
        self.joins[ref] = (key, meta)

    def leave(self, key: str, ref: str, meta: Meta) -> None:
        if self.joins.pop(ref, None) is None:
            self.leaves[ref] = (key, meta)

    def as_message(self, topic: str) -> dict[str, Any]:
        """The ``presence.diff`` message (Phoenix's shape), for consumers."""
        return {
            "type": "presence.diff",
            "topic": topic,
            "joins": _grouped(self.joins.values()),
            "leaves": _grouped(self.leaves.values()),
        }


def _grouped(items: Iterable[tuple[str, Meta]]) -> Presences:
    grouped: Presences = {}
    for key, meta in items:
        grouped.setdefault(key, {"metas": []})["metas"].append(meta)
    return grouped


class Replica:
    """The members of every node, by topic, and the diffs their changes make.

    ``diffs`` holds a :class:`DiffBuffer` per topic changed since the last
    :meth:`take_diffs`.
    """

    def __init__(self) -> None:
        # topic -> key -> ref -> (node, meta)
        self._topics: dict[str, dict[str, dict[str, tuple[str, Meta]]]] = {}
        # node -> ref -> (topic, key)
        self._nodes: dict[str, dict[str, tuple[str, str]]] = {}
        self.diffs: dict[str, DiffBuffer] = {}

    def _diff(self, topic: str) -> DiffBuffer:
        buffer = self.diffs.get(topic)
        if buffer is None:
            buffer = self.diffs[topic] = DiffBuffer()
        return buffer

    def join(self, node: str, topic: str, key: str, ref: str, meta: Meta) -> None:
        """Add (or replace) ``node``'s member ``ref``; a ref already owned elsewhere is ignored."""
        owned = self._nodes.setdefault(node, {})
        known = owned.get(ref)
        if known is None and any(ref in refs for refs in self._nodes.values()):
            return
        if known is not None:
            self.leave(node, ref)
            owned = self._nodes.setdefault(node, {})
        owned[ref] = (topic, key)
        self._topics.setdefault(topic, {}).setdefault(key, {})[ref] = (node, meta)
        self._diff(topic).join(key, ref, meta)

    def leave(self, node: str, ref: str) -> bool:
        """Remove ``node``'s member ``ref``; False if ``node`` has no such member."""
        owned = self._nodes.get(node)
        if owned is None or ref not in owned:
            return False
        topic, key = owned.pop(ref)
        if not owned:
            del self._nodes[node]
        members = self._topics[topic]
        _, meta = members[key].pop(ref)
        if not members[key]:
            del members[key]
        if not members:
            del self._topics[topic]
        self._diff(topic).leave(key, ref, meta)
        return True

    def drop_node(self, node: str) -> int:
        """Remove every member of ``node``; return how many there were."""
        refs = [*self._nodes.get(node, ())]
        for ref in refs:
            self.leave(node, ref)
        return len(refs)

    def replace_node(self, node: str, entries: Iterable[Entry]) -> None:
        """Make ``node``'s members exactly ``entries`` (a full state from that node)."""
        wanted = {ref: (topic, key, meta) for topic, key, ref, meta in entries}
        for ref in [*self._nodes.get(node, ())]:
            if ref not in wanted:
                self.leave(node, ref)
        owned = self._nodes.get(node, {})
        for ref, (topic, key, meta) in wanted.items():
            if owned.get(ref) != (topic, key):
                self.join(node, topic, key, ref, meta)

    def entries_of(self, node: str) -> list[Entry]:
        """``node``'s members, as they travel in a state message."""
        found: list[Entry] = []
        for ref, (topic, key) in self._nodes.get(node, {}).items():
            found.append((topic, key, ref, self._topics[topic][key][ref][1]))
        return found

    def nodes(self) -> set[str]:
        """The nodes that have members."""
        return set(self._nodes)

    def list(self, topic: str) -> Presences:
        """The members of ``topic``: ``{key: {"metas": [...]}}``, metas in join order."""
        members = self._topics.get(topic, {})
        return {
            key: {"metas": [meta for _, meta in refs.values()]} for key, refs in members.items()
        }

    def count(self, topic: str) -> int:
        """How many keys (users) ``topic`` has."""
        return len(self._topics.get(topic, ()))

    def topics(self) -> dict[str, int]:
        """Every topic with members, and its number of keys."""
        return {topic: len(members) for topic, members in self._topics.items()}

    def take_diffs(self) -> dict[str, DiffBuffer]:
        """The non-empty diffs since the last call; the buffers start afresh."""
        diffs = {topic: buffer for topic, buffer in self.diffs.items() if buffer}
        self.diffs = {}
        return diffs
