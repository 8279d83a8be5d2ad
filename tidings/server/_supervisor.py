"""The supervisor: pre-forked workers sharing the listening sockets, and ``--reload``.

The supervisor binds the sockets, then forks ``--workers`` processes that each
import the app and serve on them (the kernel spreads accepted connections).
A worker that dies is logged and replaced; one that exits with
``EXIT_STARTUP_FAILED`` (import or lifespan startup failed) stops everything,
because restarting it would fail the same way. On SIGTERM/SIGINT the workers
get SIGTERM and the graceful timeout; stragglers get SIGKILL.

SIGHUP restarts the workers without downtime (deploying new code): a new set is
started first, each importing the app afresh; once every new worker serves (it
says so through a pipe), the old ones get SIGTERM and finish their requests
within the graceful timeout while the new ones accept. If a new worker fails to
start (a broken release) or is not serving within ``READY_TIMEOUT``, the new
ones are stopped and the running ones keep serving.

With ``--reload`` the supervisor runs one worker and replaces it whenever a
``.py`` file under the watched directories changes (polled once a second).

A forked worker runs the ``ServeWorker`` it was given (``main`` passes its own):
this module never imports ``main``, which imports it.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tidings.server._worker import EXIT_STARTUP_FAILED, ServeWorker
from tidings.server.config import Config

if TYPE_CHECKING:
    from tidings.server._metrics import MetricsHub

__all__ = ["Supervisor"]

logger = logging.getLogger("tidings.error")

_POLL = 0.2

#: Seconds new workers get to start serving after SIGHUP (import, lifespan startup)
#: before the rolling restart is abandoned and the running workers kept.
READY_TIMEOUT = 60.0
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".tox"}


class Supervisor:
    """Forks and watches worker processes."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        *,
        serve: ServeWorker,
        metrics: MetricsHub | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self._serve = serve  # what a forked worker runs
        self.metrics = metrics  # --metrics-bind: the workers' figures and the listener
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
                self._idle(_POLL)
            self._stop_workers(self.config.timeouts.graceful)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.exit_status

    def _stopped(self) -> bool:
        return self.stopping

    def _idle(self, seconds: float) -> None:
        """Wait between two checks of the workers; serve metrics scrapes meanwhile."""
        if self.metrics is None:
            time.sleep(seconds)
        else:
            self.metrics.poll(seconds, set(self.workers) | self._retiring)

    def _watch_dirs(self) -> list[Path]:
        return [Path(d) for d in (self.config.reload_dirs or (os.getcwd(),))]

    def _rolling_restart(self, count: int) -> None:
        """Start ``count`` new workers; once all serve, stop the current ones gracefully.

        If a new worker fails to start (a broken release), the new ones are stopped
        and the running ones keep serving.
        """
        old = list(self.workers)
        logger.info("SIGHUP: starting %d new worker%s", count, "" if count == 1 else "s")
        new = dict(self._spawn(ready_pipe=True) for _ in range(count))
        failed = self._wait_ready(new)
        if failed is not None:
            logger.error(
                "SIGHUP: new worker %d %s; keeping the running workers %s",
                *failed,
                ", ".join(map(str, old)),
            )
            self._retire(list(new))
            return
        logger.info("SIGHUP: new workers serving; stopping %s", ", ".join(map(str, old)))
        self._retire(old)

    def _retire(self, pids: list[int]) -> None:
        """SIGTERM ``pids`` (if alive); they are reaped later without being replaced."""
        for pid in pids:
            if self.workers.pop(pid, None) is not None:
                self._retiring.add(pid)
                _kill(pid, signal.SIGTERM)

    def _wait_ready(self, new: dict[int, int]) -> tuple[int, str] | None:
        """Wait until every worker in ``new`` (pid -> read end of its ready pipe) serves.

        Returns None when all are ready (or a stop signal came meanwhile), else the pid
        of one that did not start and why.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = dict(new)
        try:
            while waiting and not self.stopping:
                for pid, fd in list(waiting.items()):
                    readable, _, _ = select.select([fd], [], [], 0)
                    if readable and os.read(fd, 1):
                        del waiting[pid]
                        continue
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done or readable:  # exited, or closed its pipe without serving
                        if done:
                            self.workers.pop(pid, None)
                            code = os.waitstatus_to_exitcode(status)
                            return pid, f"exited with status {code} before serving"
                        return pid, "closed its readiness pipe before serving"
                if time.monotonic() > deadline:
                    return next(iter(waiting)), f"was not serving within {READY_TIMEOUT:.0f} s"
                time.sleep(0.05)
            return None
        finally:
            for fd in new.values():
                os.close(fd)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            if not self.stopping and not self.config.reload:
                self._restart_requested = True
            return
        if self.stopping and signum == signal.SIGINT:
            for pid in list(self.workers):
                _kill(pid, signal.SIGKILL)
        self.stopping = True

    def _spawn(self, *, ready_pipe: bool = False) -> tuple[int, int]:
        """Fork a worker; return its pid and (with ``ready_pipe``) the read end of a pipe
        it writes one byte to once it serves (else -1)."""
        read_fd, write_fd = os.pipe() if ready_pipe else (-1, -1)
        pair = self.metrics.pair() if self.metrics is not None else None
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(s, signal.SIG_DFL)
                if self.metrics is not None and pair is not None:
                    self.metrics.in_worker(*pair)

                def ready() -> None:
                    os.write(write_fd, b"1")
                    os.close(write_fd)

                if ready_pipe:
                    os.close(read_fd)
                status = self._serve(
                    self.config.replace(workers=1, reload=False),
                    self.sockets,
                    on_started=ready if ready_pipe else None,
                )
            except BaseException:
                logger.exception("worker %d crashed", os.getpid())
            finally:
                os._exit(status)
        if ready_pipe:
            os.close(write_fd)
        if self.metrics is not None and pair is not None:
            self.metrics.add_worker(pid, *pair)
        self.workers[pid] = time.monotonic()
        return pid, read_fd

    def _reap(self) -> None:
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
