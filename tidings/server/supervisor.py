"""The supervisor: pre-forked workers sharing the listening sockets, and ``--reload``.

The supervisor binds the sockets, then forks ``--workers`` processes that each
import the app and serve on them (the kernel spreads accepted connections).
A worker that dies is logged and replaced; one that exits with
``EXIT_STARTUP_FAILED`` (import or lifespan startup failed) stops everything,
because restarting it would fail the same way. On SIGTERM/SIGINT the workers
get SIGTERM and the graceful timeout; stragglers get SIGKILL.

SIGHUP restarts the workers without downtime (deploying new code): a new set is
started first, each importing the app afresh, then the old ones get SIGTERM and
finish their requests within the graceful timeout while the new ones accept.

With ``--reload`` the supervisor runs one worker and replaces it whenever a
``.py`` file under the watched directories changes (polled once a second).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tidings.server.config import Config

__all__ = ["Supervisor"]

logger = logging.getLogger("tidings.error")

_POLL = 0.2
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".tox"}


class Supervisor:
    """Forks and watches worker processes."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        self.config = config
        self.sockets = sockets
        self.workers: dict[int, float] = {}  # pid -> start time
        self.stopping = False
        self.exit_status = 0
        self._restart_times: list[float] = []
        self._restart_requested = False
        # Workers of an earlier generation, stopping after SIGHUP: reaped, not replaced.
        self._retiring: set[int] = set()

    def run(self) -> int:
        count = 1 if self.config.reload else self.config.workers
        previous = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            for _ in range(count):
                self._spawn()
            mtimes = _snapshot(self._watch_dirs()) if self.config.reload else {}
            logger.info(
                "supervisor %d started %d worker%s%s",
                os.getpid(),
                count,
                "" if count == 1 else "s",
                " with --reload" if self.config.reload else "",
            )
            last_scan = time.monotonic()
            while not self.stopping:
                self._reap()
                if self._stopped():
                    break
                if self._restart_requested:
                    self._restart_requested = False
                    self._rolling_restart(count)
                while len(self.workers) < count and not self.stopping:
                    self._throttle()
                    self._spawn()
                if self.config.reload and time.monotonic() - last_scan >= 1.0:
                    last_scan = time.monotonic()
                    current = _snapshot(self._watch_dirs())
                    if current != mtimes:
                        changed = _changed(mtimes, current)
                        mtimes = current
                        logger.info("reloading: %s changed", changed)
                        self._stop_workers(self.config.timeouts.graceful)
                time.sleep(_POLL)
            self._stop_workers(self.config.timeouts.graceful)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.exit_status

    def _stopped(self) -> bool:
        return self.stopping

    def _watch_dirs(self) -> list[Path]:
        return [Path(d) for d in (self.config.reload_dirs or (os.getcwd(),))]

    def _rolling_restart(self, count: int) -> None:
        """Start ``count`` new workers, then stop the current ones gracefully."""
        old = list(self.workers)
        logger.info("SIGHUP: starting %d new worker%s, stopping %s", count,
                    "" if count == 1 else "s", ", ".join(map(str, old)) or "none")  # fmt: skip
        for _ in range(count):
            self._spawn()
        self._retiring.update(old)
        for pid in old:
            self.workers.pop(pid, None)
            _kill(pid, signal.SIGTERM)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            if not self.stopping and not self.config.reload:
                self._restart_requested = True
            return
        if self.stopping and signum == signal.SIGINT:
            for pid in list(self.workers):
                _kill(pid, signal.SIGKILL)
        self.stopping = True

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(s, signal.SIG_DFL)
                from tidings.server.main import serve_in_process

                status = serve_in_process(
                    self.config.replace(workers=1, reload=False), self.sockets
                )
            except BaseException:
                logger.exception("worker %d crashed", os.getpid())
            finally:
                os._exit(status)
        self.workers[pid] = time.monotonic()

    def _reap(self) -> None:
        from tidings.server.main import EXIT_STARTUP_FAILED

        while self.workers or self._retiring:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                self._retiring.clear()
                return
            if pid == 0:
                return
            if pid in self._retiring:
                self._retiring.discard(pid)
                logger.info("worker %d (before SIGHUP) stopped", pid)
                continue
            self.workers.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            if code == EXIT_STARTUP_FAILED:
                logger.error("worker %d failed to start; stopping", pid)
                self.exit_status = EXIT_STARTUP_FAILED
                self.stopping = True
                return
            how = f"signal {-code}" if code < 0 else f"status {code}"
            logger.error("worker %d died (%s); starting a new one", pid, how)

    def _throttle(self) -> None:
        """Avoid a fork storm when workers die straight after starting."""
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < 10.0]
        self._restart_times.append(now)
        if len(self._restart_times) > 5:
            time.sleep(1.0)

    def _stop_workers(self, timeout: float) -> None:
        self.workers.update(dict.fromkeys(self._retiring, 0.0))
        self._retiring.clear()
        for pid in list(self.workers):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout + 1.0
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                break
            if pid == 0:
                time.sleep(0.05)
            else:
                self.workers.pop(pid, None)
        for pid in list(self.workers):
            logger.warning("worker %d did not stop in time; killing it", pid)
            _kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.workers.pop(pid, None)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _iter_py(dirs: list[Path]) -> Iterator[Path]:
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and not d.startswith(".")]
            for name in files:
                if name.endswith(".py"):
                    yield Path(root, name)


def _snapshot(dirs: list[Path]) -> dict[Path, float]:
    result: dict[Path, float] = {}
    for path in _iter_py(dirs):
        try:
            result[path] = path.stat().st_mtime
        except OSError:
            continue
    return result


def _changed(old: dict[Path, float], new: dict[Path, float]) -> str:
    names = sorted({p for p in old.keys() | new.keys() if old.get(p) != new.get(p)})
    shown = ", ".join(str(p) for p in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
