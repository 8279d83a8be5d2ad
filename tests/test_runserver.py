"""``manage.py runserver`` with ``"tidings"`` installed: a real process on a real port.

Every test starts ``python -m django runserver`` on a free port of 127.0.0.1
with the settings of ``tests/django_project`` and talks to it with httpx and
the websockets client. Processes run in their own session, so a Ctrl-C can
be sent to the whole group as a terminal would; each is stopped by PID at
the end (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
SETTINGS = "tests.django_project.settings"
TIDINGS_LINE = "serves the ASGI application 'tests.django_project.asgi.application'"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DjangoProcess:
    """``python -m django ARGS`` with its output collected line by line."""

    def __init__(
        self, *args: str, settings: str = SETTINGS, env: dict[str, str] | None = None
    ) -> None:
        full_env = dict(os.environ)
        full_env.pop("DJANGO_SETTINGS_MODULE", None)
        full_env["PYTHONPATH"] = str(REPO)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["DJANGO_RUNSERVER_HIDE_WARNING"] = "true"
        full_env.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", *args, "--settings", settings],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            # Ctrl-C as in a terminal: a shell runs background jobs (and CI runners
            # may run this suite) with SIGINT ignored, and an ignored signal stays
            # ignored across exec, so Python would install no KeyboardInterrupt.
            preexec_fn=_default_sigint,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, True)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, into: list[str], announce: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def wait_for_stdout(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """Return the next stdout line containing ``text``; fail on EOF or timeout."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout} s; {self.output()}") from None
            if line is None:
                self.process.wait(10)
                raise AssertionError(f"exited before printing {text!r}; {self.output()}")
            if text in line:
                return line

    def interrupt(self, *, group: bool = False) -> None:
        """Ctrl-C: SIGINT to the process, or to its whole process group as a terminal does."""
        if group:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._finish()
        return code

    def _finish(self) -> None:
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._finish()

    def output(self) -> str:
        return f"stdout:\n{''.join(self.stdout)}\nstderr:\n{''.join(self.stderr)}"


@pytest.fixture
def runserver() -> Iterator[list[DjangoProcess]]:
    """Collects the processes a test starts and stops each by PID afterwards."""
    started: list[DjangoProcess] = []
    yield started
    for process in started:
        process.stop()


def start(
    started: list[DjangoProcess],
    *args: str,
    settings: str = SETTINGS,
    env: dict[str, str] | None = None,
) -> tuple[DjangoProcess, str]:
    """Start ``runserver 127.0.0.1:<free port> ARGS``; return it and its base URL."""
    port = free_port()
    process = DjangoProcess("runserver", f"127.0.0.1:{port}", *args, settings=settings, env=env)
    started.append(process)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """One ``runserver --noreload`` (DEBUG) for the read-only tests; yields its URL."""
    port = free_port()
    process = DjangoProcess("runserver", f"127.0.0.1:{port}", "--noreload")
    try:
        process.wait_for_stdout(TIDINGS_LINE)
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


def test_http_consumer(server: str) -> None:
    response = httpx.get(f"http://{server}/hello/", timeout=10)
    assert response.status_code == 200
    assert response.text == "hello from a tidings consumer"


def test_django_view_through_asgi(server: str) -> None:
    response = httpx.get(f"http://{server}/django/", timeout=10)
    assert response.status_code == 200
    assert response.text == "hello from a django view"


def test_static_files_served_in_debug(server: str) -> None:
    response = httpx.get(f"http://{server}/static/probe.txt", timeout=10)
    assert response.status_code == 200
    assert response.text == "tidings static probe\n"
    assert response.headers["content-type"].startswith("text/plain")
    missing = httpx.get(f"http://{server}/static/missing.txt", timeout=10)
    assert missing.status_code == 404


def test_websocket_echo(server: str) -> None:
    with connect(f"ws://{server}/ws/echo/", open_timeout=10) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=10) == b"\x00\x01"


def test_banner_and_ctrl_c_exit_cleanly(runserver: list[DjangoProcess]) -> None:
    process, url = start(runserver, "--noreload")
    line = process.wait_for_stdout(TIDINGS_LINE)
    assert line.startswith("Tidings ")
    assert "(HTTP/1.1 and WebSocket; static files at /static/)" in line
    assert f"Starting development server at {url}/" in "".join(process.stdout)
    assert httpx.get(f"{url}/hello/", timeout=10).status_code == 200
    with connect(f"{url.replace('http', 'ws')}/ws/echo/", open_timeout=10) as ws:
        ws.send("before ctrl-c")
        assert ws.recv(timeout=10) == "before ctrl-c"
        process.interrupt()
        with pytest.raises(ConnectionClosedOK) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001  # going away
    assert process.wait() == 0, process.output()
    stderr = "".join(process.stderr)
    assert "Traceback" not in stderr
    assert "received SIGINT: shutting down" in stderr
    assert '"GET /hello/ HTTP/1.1" 200' in stderr  # the access log


@pytest.mark.parametrize(
    ("settings", "args", "status"),
    [
        (SETTINGS, ["--nostatic"], 404),
        ("tests.django_project.settings_nodebug", [], 404),
        ("tests.django_project.settings_nodebug", ["--insecure"], 200),
    ],
    ids=["nostatic", "no-debug", "no-debug-insecure"],
)
def test_static_files_switches(
    runserver: list[DjangoProcess], settings: str, args: list[str], status: int
) -> None:
    process, url = start(runserver, "--noreload", *args, settings=settings)
    line = process.wait_for_stdout(TIDINGS_LINE)
    assert ("static files at" in line) is (status == 200)
    assert httpx.get(f"{url}/static/probe.txt", timeout=10).status_code == status


def test_reloader_restarts_on_code_change(runserver: list[DjangoProcess], tmp_path: Path) -> None:
    probe = tmp_path / "tidings_reload_probe.py"
    probe.write_text("VALUE = 1\n")
    env = {
        "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}",
        "TIDINGS_TEST_RELOAD_PROBE": "tidings_reload_probe",
    }
    process, url = start(runserver, env=env)
    process.wait_for_stdout(TIDINGS_LINE)
    first = httpx.get(f"{url}/hello/", timeout=10)
    assert first.status_code == 200
    # Django's StatReloader compares modification times each second, from the first
    # scan that sees the file: a change before that scan goes unnoticed, so the file
    # is touched again (later each time) until the server restarts.
    probe.write_text("VALUE = 2\n")
    mtime = probe.stat().st_mtime
    for attempt in range(1, 7):
        os.utime(probe, (mtime + 5 * attempt, mtime + 5 * attempt))
        try:
            process.wait_for_stdout(TIDINGS_LINE, timeout=5)
            break
        except AssertionError:
            if attempt == 6:
                raise
    assert httpx.get(f"{url}/hello/", timeout=10).status_code == 200
    assert any("tidings_reload_probe.py changed, reloading" in line for line in process.stderr)
    # Ctrl-C in a terminal reaches the reloader and the server process alike.
    process.interrupt(group=True)
    assert process.wait() == 0, process.output()
    assert "Traceback" not in "".join(process.stderr), process.output()


def test_noasgi_runs_djangos_wsgi_server(runserver: list[DjangoProcess]) -> None:
    process, url = start(runserver, "--noreload", "--noasgi")
    process.wait_for_stdout("Starting development server at")
    assert httpx.get(f"{url}/django/", timeout=10).text == "hello from a django view"
    # Static files, as django.contrib.staticfiles' runserver serves them.
    assert httpx.get(f"{url}/static/probe.txt", timeout=10).text == "tidings static probe\n"
    # The consumer exists only in the ASGI application.
    assert httpx.get(f"{url}/hello/", timeout=10).status_code == 404
    process.stop()
    assert not any(TIDINGS_LINE in line for line in process.stdout)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_addrport(runserver: list[DjangoProcess]) -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    process = DjangoProcess("runserver", f"[::1]:{port}", "--noreload")
    runserver.append(process)
    process.wait_for_stdout(TIDINGS_LINE)
    assert f"Starting development server at http://[::1]:{port}/" in "".join(process.stdout)
    assert httpx.get(f"http://[::1]:{port}/hello/", timeout=10).status_code == 200


def test_port_in_use(runserver: list[DjangoProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = DjangoProcess("runserver", f"127.0.0.1:{port}", "--noreload")
        runserver.append(process)
        assert process.wait() == 1
    assert "Error: That port is already in use." in "".join(process.stderr), process.output()


def test_system_check_errors_stop_runserver(runserver: list[DjangoProcess]) -> None:
    process, _ = start(runserver, "--noreload", settings="tests.django_project.settings_broken")
    assert process.wait() == 1
    stderr = "".join(process.stderr)
    assert "tidings.E002" in stderr
    assert "ASGI_APPLICATION" in stderr
    assert "tidings.E003" in stderr
