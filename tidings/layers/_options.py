"""Checks of the layers' numeric options, shared by every backend's constructor."""

from __future__ import annotations

__all__ = ["positive_int", "positive_number"]


def positive_number(name: str, value: object) -> float:
    """Return ``value`` if it is a positive int or float, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return value


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, not {value!r}")
    return value
