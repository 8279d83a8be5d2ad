"""MQTT topic names, topic filters and the patterns of :class:`TopicRouter` routes.

Theory of operation
-------------------
The rules are MQTT 5.0 section 4.7 (the same in 3.1.1 section 4.7):

* a topic name or filter is UTF-8 text of 1 to 65,535 bytes with no U+0000
  (section 1.5.4); Python ``str`` cannot hold the surrogates that UTF-8 forbids
  once encoded, so encoding checks the rest;
* a topic name (what is published to) holds no wildcard (section 4.7.1);
* in a filter, ``+`` stands for exactly one whole level and ``#`` for any number
  of levels, and only as the last level (sections 4.7.1.2 and 4.7.1.3);
* a filter starting with a wildcard does not match a topic starting with ``$``
  (section 4.7.2).

A route *pattern* is a filter in which a level may be a named capture
``<name>``: it subscribes as ``+`` and the level's text lands in
``scope["topic_route"]["kwargs"][name]``. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tidings.mqtt._errors import TopicError

__all__ = ["MAX_TOPIC_BYTES", "TopicPattern", "check_filter", "check_topic", "filter_matches"]

#: MQTT 5.0 section 1.5.4: a UTF-8 string is prefixed by a two-byte length.
MAX_TOPIC_BYTES: Final = 65_535

_CAPTURE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise TopicError(f"An MQTT {what} must be a str, not {type(text).__name__}.")
    if not text:
        raise TopicError(f"An MQTT {what} must not be empty (MQTT 5.0 section 4.7.3).")
    if "\x00" in text:
        raise TopicError(f"An MQTT {what} must not contain U+0000 (MQTT 5.0 section 1.5.4).")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise TopicError(f"An MQTT {what} must be valid UTF-8 (no lone surrogates).") from None
    if size > MAX_TOPIC_BYTES:
        raise TopicError(
            f"An MQTT {what} is at most {MAX_TOPIC_BYTES} bytes of UTF-8; this one is {size}."
        )
    return text


def check_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid topic *name* (something to publish to).

    Raises:
        TopicError: not a str, empty, too long, holds U+0000 or a wildcard.
    """
    name = _check_text(topic, "topic name")
    if "+" in name or "#" in name:
        raise TopicError(
            f"Cannot publish to {name[:80]!r}: wildcards '+' and '#' are only allowed in "
            "subscriptions (MQTT 5.0 section 4.7.1)."
        )
    return name


def check_filter(topic_filter: object) -> str:
    """Return ``topic_filter`` if it is a valid topic *filter* (something to subscribe to).

    Raises:
        TopicError: not a str, empty, too long, holds U+0000, or misplaces a wildcard.
    """
    text = _check_text(topic_filter, "topic filter")
    levels = text.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise TopicError(
                f"Topic filter {text[:80]!r}: '#' must be a whole level and the last one "
                "(MQTT 5.0 section 4.7.1.2)."
            )
        if "+" in level and level != "+":
            raise TopicError(
                f"Topic filter {text[:80]!r}: '+' must be a whole level (MQTT 5.0 section 4.7.1.3)."
            )
    return text


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether the topic name ``topic`` matches ``topic_filter`` (MQTT 5.0 section 4.7)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # section 4.7.2
    want = topic_filter.split("/")
    have = topic.split("/")
    for index, level in enumerate(want):
        if level == "#":
            return True  # also matches the parent level: "a/#" matches "a"
        if index >= len(have):
            return False
        if level != "+" and level != have[index]:
            return False
    return len(want) == len(have)


def filter_covers(wide: str, narrow: str) -> bool:
    """Whether every topic that ``narrow`` matches is matched by ``wide`` too.

    A broker sends one copy per matching subscription of a client (MQTT 5.0
    section 4.7.2 allows it, and Mosquitto does it): the runtime subscribes
    only to the filters no other one covers, so each message arrives once.
    """
    want = wide.split("/")
    have = narrow.split("/")
    if narrow.startswith("$") and wide[:1] in ("+", "#"):
        return False  # section 4.7.2: "$SYS/x" is not under "#"
    for index, level in enumerate(want):
        if level == "#":
            return True
        if index >= len(have) or have[index] == "#":
            return False
        if level != "+" and level != have[index]:
            return False
    return len(want) == len(have)


def minimal_filters(filters: dict[str, int]) -> dict[str, int]:
    """Drop the filters another one covers; the cover takes the highest QoS of both."""
    kept: dict[str, int] = {}
    for candidate, qos in filters.items():
        covers = [f for f in filters if f != candidate and filter_covers(f, candidate)]
        if not covers:
            kept[candidate] = max(
                [qos]
                + [q for f, q in filters.items() if f != candidate and filter_covers(candidate, f)]
            )
    return kept


@dataclass(frozen=True)
class TopicPattern:
    """A route pattern: a topic filter whose levels may be named captures ``<name>``.

    Attributes:
        source: the pattern as written.
        topic_filter: what is subscribed to (each capture becomes ``+``).
        names: the capture name of each level (``None`` for a literal or a wildcard).
    """

    source: str
    topic_filter: str
    names: tuple[str | None, ...]

    @classmethod
    def parse(cls, source: object) -> TopicPattern:
        """Compile a pattern such as ``"sensors/<device>/temp"`` or ``"logs/#"``.

        Raises:
            TopicError: the pattern is not a valid filter once its captures are
                replaced by ``+``, a capture is malformed or repeated, or it uses
                ``$share/`` (set ``SHARED_GROUP`` on the broker instead).
        """
        if not isinstance(source, str):
            raise TopicError(f"A topic pattern must be a str, not {type(source).__name__}.")
        if source.startswith("$share/"):
            raise TopicError(
                f"Topic pattern {source[:80]!r}: do not write '$share/' in a route; set the "
                "broker's SHARED_GROUP and every route subscribes as a shared subscription."
            )
        levels: list[str] = []
        names: list[str | None] = []
        for level in source.split("/"):
            match = _CAPTURE.fullmatch(level)
            if match is not None:
                if match.group(1) in names:
                    raise TopicError(
                        f"Topic pattern {source!r} names the capture {match.group(1)!r} twice."
                    )
                names.append(match.group(1))
                levels.append("+")
                continue
            if "<" in level or ">" in level:
                raise TopicError(
                    f"Topic pattern {source[:80]!r}: a capture is a whole level of the form "
                    "<name> (letters, digits, underscore), like 'sensors/<device>/temp'."
                )
            names.append(None)
            levels.append(level)
        topic_filter = check_filter("/".join(levels))
        return cls(source, topic_filter, tuple(names))

    def match(self, topic: str) -> dict[str, str] | None:
        """The captures of ``topic`` if it matches, else ``None``."""
        if not filter_matches(self.topic_filter, topic):
            return None
        levels = topic.split("/")
        return {name: levels[i] for i, name in enumerate(self.names) if name is not None}
