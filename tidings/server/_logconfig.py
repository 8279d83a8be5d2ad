"""Logging set-up for ``tidings serve``: one line per event on stderr.

Loggers: ``tidings.error`` (server events and app errors) and
``tidings.access`` (one line per response, off with ``--no-access-log``).
Applications may configure them further; we only add a handler when the
logger has none, so a Django ``LOGGING`` config keeps precedence.
"""

from __future__ import annotations

import logging
import sys

from tidings.server.config import Config

__all__ = ["configure_logging", "level_of"]

_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def level_of(name: str) -> int:
    name = name.lower()
    if name == "trace":
        return logging.DEBUG
    return logging.getLevelNamesMapping()[name.upper()]


def configure_logging(config: Config) -> None:
    level = level_of(config.log_level)
    formatter = logging.Formatter(_FORMAT)
    for name in ("tidings.error", "tidings.access", "tidings"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
    root = logging.getLogger("tidings")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.propagate = False
    access = logging.getLogger("tidings.access")
    if not config.access_log or not access.isEnabledFor(logging.INFO):
        access.disabled = not config.access_log
