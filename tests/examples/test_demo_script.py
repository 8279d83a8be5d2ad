"""./scripts/demo from scratch: a copy of the checkout, a new .venv, a real server.

The script runs as a newcomer runs it, in a copy of the repository (the files
a clone has, plus work not committed yet) with no ``.venv``: it must create
the venv, install Tidings, migrate the example, create the demo users and
serve on the port given, with the address and the credentials on its first
line. A second run must start without installing anything or creating users.
Slow (a pip install into an empty venv): only in ``./scripts/test --all``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from ._chat import REPO, Process

INSTALL_TIMEOUT = 540.0


def copy_checkout(into: Path) -> Path:
    """Copy the files a clone would have (and uncommitted new ones), nothing ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / os.fsdecode(name)
        if source.is_file():  # a tracked file may have been deleted in the work tree
            target = into / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_env() -> dict[str, str]:
    """The environment of a fresh shell: no venv active, no project settings."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "DJANGO_SETTINGS_MODULE", "TIDINGS_REDIS_URL"):
        env.pop(name, None)
    venv_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


def run_demo(checkout: Path, port: int, log: Path) -> tuple[Process, float]:
    """Start ./scripts/demo; return it once the server answers, with the seconds it took."""
    started = time.monotonic()
    demo = Process(
        ["./scripts/demo", "--port", str(port)],
        cwd=checkout,
        env=demo_env(),
        log=log,
        start_new_session=True,  # runserver's autoreloader is two processes: stop the group
    )
    deadline = started + INSTALL_TIMEOUT
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=10)
            if response.status_code == 200:
                return demo, time.monotonic() - started
        except httpx.TransportError:
            pass
        if demo.popen.poll() is not None or time.monotonic() > deadline:
            stop_demo(demo)
            raise AssertionError(f"./scripts/demo did not serve:\n{demo.output()}")
        time.sleep(0.2)


def stop_demo(demo: Process) -> bool:
    """Ctrl-C, as in a terminal: SIGINT to the demo's process group; whether it ended so."""
    ended = True
    if demo.popen.poll() is None:
        os.killpg(demo.popen.pid, signal.SIGINT)
        try:
            demo.popen.wait(15)
        except subprocess.TimeoutExpired:
            ended = False
            os.killpg(demo.popen.pid, signal.SIGKILL)
    demo.stop()
    return ended


def log_in(port: int, username: str, password: str) -> int:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        client.get("/accounts/login/")
        response = client.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        return response.status_code


@pytest.mark.slow
def test_demo_sets_up_from_scratch_then_starts_fast(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "tidings")
    assert not (checkout / ".venv").exists()

    port = free_port()
    demo, _ = run_demo(checkout, port, tmp_path / "first.log")
    try:
        first_line = demo.output().splitlines()[0]
        banner = re.fullmatch(
            rf"Tidings demo: open http://127\.0\.0\.1:{port}/ and log in as "
            r"alice bob carol \(password: (\S+)\)",
            first_line,
        )
        assert banner is not None, demo.output()
        password = banner.group(1)
        assert log_in(port, "alice", password) == 302  # a redirect: logged in
        assert log_in(port, "bob", "wrong") == 200  # the form again, with an error
    finally:
        assert stop_demo(demo), "Ctrl-C did not stop ./scripts/demo"
    output = demo.output()
    assert "creating .venv" in output
    assert "installing Tidings into .venv" in output
    assert "Created user alice." in output
    assert (checkout / "examples" / "chat" / "db.sqlite3").exists()
    assert "Traceback" not in output, output

    port = free_port()
    again, seconds = run_demo(checkout, port, tmp_path / "second.log")
    try:
        assert log_in(port, "carol", password) == 302
    finally:
        assert stop_demo(again), "Ctrl-C did not stop ./scripts/demo"
    output = again.output()
    assert output.startswith(f"Tidings demo: open http://127.0.0.1:{port}/ and log in as")
    assert "installing" not in output
    assert "Created user" not in output
    assert seconds < 30, f"the second start took {seconds:.1f} s:\n{output}"
