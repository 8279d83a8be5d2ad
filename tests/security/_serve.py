"""A ``tidings serve`` process for attack tests that measure the server from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def server_env() -> dict[str, str]:
    """The environment of a server subprocess: this checkout first, no Django settings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


@contextmanager
def tidings_serve(
    args: list[str], log: Path, *, ready: str = "Tidings serving on"
) -> Iterator[subprocess.Popen[bytes]]:
    """``tidings serve ARGS`` with stdout and stderr in ``log``, once it says ``ready``.

    Stopped with SIGTERM (SIGKILL after 15 s) when the block ends.
    """
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", *args],
            cwd=ROOT,
            env=server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 15
            while ready not in log.read_text(errors="replace"):
                if popen.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text(errors="replace"))
                time.sleep(0.05)
            yield popen
        finally:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(15)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
