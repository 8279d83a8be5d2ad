"""What the supervisor and the worker processes it forks agree on.

``main`` serves (one process) and ``supervisor`` forks processes that serve: the
supervisor is handed the function a forked worker runs (``ServeWorker``) instead of
importing ``main``, and both read the exit statuses from here. Keep this module a
leaf: it imports nothing from ``tidings.server`` but the config.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from tidings.server.config import Config

__all__ = ["EXIT_STARTUP_FAILED", "ServeWorker"]

# Exit status when the app failed to import or lifespan startup failed; the
# supervisor does not restart a worker that exits with it.
EXIT_STARTUP_FAILED = 3


class ServeWorker(Protocol):
    """Serve ``config`` on ``sockets`` in this (forked) process; return its exit status.

    ``on_started``, when given, is called once the worker listens (its readiness signal).
    """

    def __call__(
        self,
        config: Config,
        sockets: list[socket.socket],
        *,
        on_started: Callable[[], None] | None,
    ) -> int: ...
