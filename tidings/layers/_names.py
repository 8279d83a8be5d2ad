"""Channel and group name rules, shared by every channel layer backend.

The rules are Channels' documented ones, so names that work there work here:

- a name is a ``str``, not empty, shorter than ``MAX_NAME_LENGTH`` (100)
  characters;
- it holds only ASCII letters, digits, hyphens, underscores and periods;
- a *channel* name may hold one ``!``: the part before it (non-empty) names
  the process that reads the channel, the part after it (possibly empty) is
  local to that process. Group names never hold ``!``;
- ``?`` (the single-reader marker of the old ASGI spec) is not accepted:
  Channels 4 dropped it and no backend here gives it a meaning.

Checks run on every ``send``, so the valid case is one compiled-regex match;
only a name that fails is examined again, to say which rule it broke. The
exception is ``TypeError``, as in Channels, so existing ``except`` clauses
keep working.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_RULE",
    "check_channel_name",
    "check_group_name",
    "check_name_prefix",
    "non_local_name",
]

MAX_NAME_LENGTH: Final = 100
"""Names must be *shorter* than this (Channels' limit; the spec asks for at least 100 bytes)."""

_PART: Final = r"[A-Za-z0-9._-]"
_CHANNEL_RE: Final = re.compile(rf"{_PART}+(?:!{_PART}*)?")
_GROUP_RE: Final = re.compile(rf"{_PART}+")
_ALLOWED: Final = "ASCII letters, digits, hyphens, underscores and periods"
NAME_RULE: Final = (
    f"must be a str shorter than {MAX_NAME_LENGTH} characters holding only {_ALLOWED}"
)
"""The rule every name ``TypeError`` states after its subject (``Channel name``, ...)."""
_SHOWN: Final = 60


def _show(name: str) -> str:
    """Return a repr of ``name`` short enough for an error message."""
    if len(name) > _SHOWN:
        return repr(name[:_SHOWN]) + f"... ({len(name)} characters)"
    return repr(name)


def _basic_problem(name: object, label: str) -> str | None:
    """Return why ``name`` breaks the type or length rule, or ``None``."""
    if not isinstance(name, str):
        return _rule(label, f"not {type(name).__name__}")
    if not name:
        return _rule(label, "not an empty string")
    if len(name) >= MAX_NAME_LENGTH:
        return _rule(label, f"{_show(name)} is too long")
    return None


def _rule(label: str, detail: str) -> str:
    """``"<label> must be ...; <detail>"``: the general rule, then what broke it."""
    return f"{label} {NAME_RULE}; {detail}"


def _character_problem(name: str, label: str) -> str | None:
    """Return the first character of ``name`` outside the alphabet, explained."""
    for index, char in enumerate(name):
        if char == "!":
            continue
        if char == "?":
            return _rule(
                label,
                f"{_show(name)} contains '?' (single-reader '?' names "
                "of the old ASGI spec are not supported)",
            )
        if not re.fullmatch(_PART, char):
            return _rule(label, f"{_show(name)} contains {char!r} at position {index}")
    return None


def check_channel_name(name: object, *, receive: bool = False) -> None:
    """Raise ``TypeError`` naming the broken rule unless ``name`` is a valid channel name.

    Args:
        name: the candidate channel name.
        receive: apply the legacy receive rule as well: a process-specific name
            (one holding ``!``) must end at the ``!``, because such a receive
            reads every channel of that process. Tidings' own layers receive on
            full names and do not pass it.

    Raises:
        TypeError: the name is not a valid channel name; the message says why.
    """
    if isinstance(name, str) and len(name) < MAX_NAME_LENGTH and _CHANNEL_RE.fullmatch(name):
        if receive and "!" in name and not name.endswith("!"):
            raise TypeError(
                f"Channel name {_show(name)} is process-specific: "
                "names passed to receive() must end at the '!'"
            )
        return
    problem = _basic_problem(name, "Channel name")
    if problem is None:
        assert isinstance(name, str)
        if name.count("!") > 1:
            problem = _rule("Channel name", f"{_show(name)} contains more than one '!'")
        elif name.startswith("!"):
            problem = _rule(
                "Channel name",
                f"{_show(name)} has nothing before its '!' "
                "(the part naming the process must not be empty)",
            )
        else:
            problem = _character_problem(name, "Channel name")
    raise TypeError(problem or "Channel name is not valid")


def check_group_name(name: object) -> None:
    """Raise ``TypeError`` naming the broken rule unless ``name`` is a valid group name.

    Raises:
        TypeError: the name is not a valid group name; the message says why.
    """
    _check_plain(name, "Group name")


def check_name_prefix(prefix: object) -> None:
    """Raise ``TypeError`` unless ``prefix`` may start a channel name made by ``new_channel``.

    A prefix follows the group-name rules: no ``!`` (the layer adds it).

    Raises:
        TypeError: the prefix is not valid; the message says why.
    """
    _check_plain(prefix, "Channel prefix")


def _check_plain(name: object, label: str) -> None:
    """Check a name that may not hold ``!`` (group names, prefixes)."""
    if isinstance(name, str) and len(name) < MAX_NAME_LENGTH and _GROUP_RE.fullmatch(name):
        return
    problem = _basic_problem(name, label)
    if problem is None:
        assert isinstance(name, str)
        if "!" in name:
            problem = _rule(
                label,
                f"{_show(name)} contains '!' (only channel names may have a process-specific part)",
            )
        else:
            problem = _character_problem(name, label)
    raise TypeError(problem or f"{label} is not valid")


def non_local_name(name: str) -> str:
    """Return the part of a channel name that all processes see.

    For a process-specific name (``"specific.abc!def"``) that is the part up to
    and including the ``!`` (``"specific.abc!"``); any other name is returned
    unchanged.
    """
    bang = name.find("!")
    if bang == -1:
        return name
    return name[: bang + 1]
