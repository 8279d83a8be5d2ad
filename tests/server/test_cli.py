"""``tidings serve`` as a real process: flags, signals, workers, sockets, TLS, reload."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tidings.server._options import OPTIONS, SIZE, Option
from tidings.server.config import Timeouts, WebSocketSettings

from ._helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


class Proc:
    def __init__(
        self, args: list[str], log: Path, cwd: Path = ROOT, *, new_session: bool = False
    ) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tidings", *args],
            cwd=cwd,
            env=_env(),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,  # its own process group, for killpg
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged; output:\n{self.output}")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._fh.close()
        return self.popen.returncode


@contextlib.contextmanager
def tidings(
    args: list[str],
    tmp_path: Path,
    *,
    ready: str = "Tidings serving on",
    new_session: bool = False,
) -> Iterator[Proc]:
    proc = Proc(args, tmp_path / "server.log", new_session=new_session)
    try:
        proc.wait_for_log(ready)
        yield proc
    finally:
        proc.stop()


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _wait_children(pid: int, count: int, timeout: float = 15) -> set[int]:
    """The child pids of ``pid`` once there are ``count`` of them (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while len(_children(pid)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return _children(pid)


def test_help_documents_every_option_with_its_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = " ".join(out.split())  # argparse wraps lines
    for flag in [
        "--host",
        "--port",
        "--uds",
        "--fd",
        "--workers",
        "--root-path",
        "--proxy-headers",
        "--forwarded-allow-ips",
        "--access-log",
        "--log-level",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--reload",
        "--factory",
        "--max-header-size",
        "--max-body-size",
        "--max-connections",
        "--header-timeout",
        "--keepalive-timeout",
        "--graceful-timeout",
        "--application-close-timeout",
        "--backlog",
        "--ws-max-message-size",
        "--ws-ping-interval",
        "--ws-per-message-deflate",
    ]:
        assert flag in out, flag
    assert "(default: 104857600)" in out  # --max-body-size
    assert "(default: 127.0.0.1)" in out


def test_application_close_timeout_help_shows_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    entry = out[out.rindex("--application-close-timeout ") :].split(" --")[0]
    assert "cancelled" in entry
    assert "then it is cancelled (default: 10.0)" in entry, entry


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--application-close-timeout must be a positive number of seconds, not 0.0"),
        ("-1", "argument --application-close-timeout: must not be negative"),
        ("soon", "argument --application-close-timeout: 'soon' is not a number of seconds"),
        ("nan", "--application-close-timeout must be a positive number of seconds, not nan"),
    ],
)
def test_application_close_timeout_must_be_a_positive_number(value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "tests.server.apps:hello", "--port", "0",
         f"--application-close-timeout={value}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr


def test_application_close_timeout_reaches_the_server(tmp_path: Path) -> None:
    """``--application-close-timeout 0.5``: an app that ignores the client leaving is
    cancelled after half a second, with one warning line and no traceback."""
    (tmp_path / "lingering.py").write_text(
        "import asyncio\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'http':\n"
        "        await receive()\n"
        "        await asyncio.sleep(3600)\n"
    )
    port = free_port()
    args = ["serve", "lingering:app", "--app-dir", str(tmp_path), "--port", str(port)]
    with tidings([*args, "--application-close-timeout", "0.5"], tmp_path) as proc:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
        proc.wait_for_log("cancelled (--application-close-timeout)")
        assert proc.stop() == 0
    warning = "application for GET /stuck still running 0.5 s after its connection closed"
    assert proc.output.count(warning) == 1, proc.output
    assert "Traceback" not in proc.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port"),
        (["--workers", "0"], "--workers"),
        (["--ssl-certfile", "x.pem"], "--ssl-keyfile"),
        (["--forwarded-allow-ips", "not-an-ip"], "--forwarded-allow-ips"),
        (["--max-body-size", "lots"], "--max-body-size"),
        (["--root-path", "api/"], "--root-path"),
    ],
)
def test_bad_flags_fail_at_start_naming_the_flag(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "tests.server.apps:hello", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_unimportable_app_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "no_such_module:app", "--port", "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "could not import module 'no_such_module'" in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_lifespan_startup_exits_non_zero_with_the_apps_message(tmp_path: Path) -> None:
    (tmp_path / "failing_app.py").write_text(
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await send({'type': 'lifespan.startup.failed', 'message': 'no database'})\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "failing_app:app", "--port", "0"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "no database" in result.stderr


def test_graceful_shutdown_finishes_in_flight_requests(tmp_path: Path) -> None:
    port = free_port()
    with tidings(["serve", "tests.server.apps:slow_first", "--port", str(port)], tmp_path) as proc:
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /0 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        busy = socket.create_connection(("127.0.0.1", port))
        busy.sendall(b"GET /1.0 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)  # let the request reach the app
        proc.popen.send_signal(signal.SIGTERM)
        # The idle keep-alive connection is closed at once...
        idle.settimeout(5)
        assert idle.recv(4096) == b""
        # ...new connections are refused...
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("server still accepting after SIGTERM")
        # ...and the in-flight request completes, then the server exits 0.
        busy.settimeout(10)
        response = b""
        while chunk := busy.recv(4096):
            response += chunk
        assert response.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in response
        assert response.endswith(b"/1.0")
        assert proc.popen.wait(15) == 0
        idle.close()
        busy.close()


def test_workers_share_the_port_and_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    port = free_port()
    with tidings(
        ["serve", "tests.server.apps:hello", "--port", str(port), "--workers", "2"],
        tmp_path,
        ready="started 2 workers",
    ) as proc:
        workers = _wait_children(proc.popen.pid, 2)
        assert len(workers) == 2
        proc.wait_for_log("Tidings serving on")
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        proc.wait_for_log(f"worker {victim} died")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = _children(proc.popen.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the dead worker was not replaced")
        for _ in range(20):
            assert httpx.get(f"http://127.0.0.1:{port}/").text == "Hello, world!"
        assert proc.stop() == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in now)


def test_unix_domain_socket(tmp_path: Path) -> None:
    path = tmp_path / "t.sock"
    with tidings(["serve", "tests.server.apps:hello", "--uds", str(path)], tmp_path):
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport) as client:
            r = client.get("http://localhost/")
    assert r.text == "Hello, world!"


def test_inherited_file_descriptor(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    fd = sock.fileno()
    log = tmp_path / "server.log"
    with log.open("wb") as fh:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "tests.server.apps:hello", "--fd", str(fd)],
            cwd=ROOT,
            env=_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
        )
        try:
            sock.close()
            r = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
            assert r.text == "Hello, world!"
        finally:
            popen.send_signal(signal.SIGTERM)
            assert popen.wait(15) == 0


def test_tls_with_alpn_http11(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    with tidings(
        [
            "serve",
            "tests.server.apps:echo",
            "--port",
            str(port),
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
        ],
        tmp_path,
    ):
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        # A client that offers only HTTP/1.1 (with h2 offered too, the server picks h2:
        # tests/server/test_http2.py).
        ctx.set_alpn_protocols(["http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"scheme": "https"' in data


def test_reload_restarts_on_code_change(tmp_path: Path) -> None:
    app_dir = tmp_path / "proj"
    app_dir.mkdir()
    module = app_dir / "reloadable.py"
    source = (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'VERSION'})\n"
    )
    module.write_text(source.replace("VERSION", "one"))
    port = free_port()
    proc = Proc(
        [
            "serve",
            "reloadable:app",
            "--port",
            str(port),
            "--reload",
            "--reload-dir",
            str(app_dir),
            "--app-dir",
            str(app_dir),
        ],
        tmp_path / "server.log",
    )
    try:
        proc.wait_for_log("Tidings serving on")
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "one"
        time.sleep(1.1)  # mtime granularity
        module.write_text(source.replace("VERSION", "two"))
        deadline = time.monotonic() + 20
        text = "one"
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text
            except httpx.HTTPError:
                pass
            if text == "two":
                break
            time.sleep(0.1)
        assert text == "two", proc.output
        assert "reloading" in proc.output
    finally:
        assert proc.stop() == 0


def test_backlog_reaches_listen(tmp_path: Path) -> None:
    ss = shutil.which("ss")
    if ss is None:
        pytest.fail("the backlog test reads the listen queue with ss (apt-get install iproute2)")
    port = free_port()
    with tidings(
        ["serve", "tests.server.apps:hello", "--port", str(port), "--backlog", "37"], tmp_path
    ):
        out = subprocess.run(
            [ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout
    # For a listening socket, ss shows the backlog as Send-Q.
    assert out.split()[2] == "37", out


def test_abbreviated_flags_are_refused() -> None:
    # argparse would take --work for --workers; a typo must not silently mean something.
    out = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "tests.server.apps:hello", "--work", "4"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "unrecognized arguments: --work" in out.stderr


def _get(port: int, path: str = "/", timeout: float = 10) -> str:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout).text


def test_a_signal_to_the_process_group_still_shuts_down_gracefully(tmp_path: Path) -> None:
    # Ctrl-C and systemd's default KillMode signal every process of the group: each
    # worker gets the signal directly and again from the supervisor. That must not
    # cut the graceful shutdown short.
    port = free_port()
    with tidings(
        ["serve", "tests.server.apps:whoami", "--port", str(port), "--workers", "2"],
        tmp_path,
        ready="started 2 workers",
        new_session=True,
    ) as proc:
        proc.wait_for_log("Tidings serving on")
        results: list[str] = []
        slow = threading.Thread(target=lambda: results.append(_get(port, "/?1.5", 15)))
        slow.start()
        time.sleep(0.5)  # the request is inside the app
        os.killpg(proc.popen.pid, signal.SIGTERM)
        slow.join(20)
        assert results and results[0].split()[1] == "127.0.0.1", proc.output
        assert proc.popen.wait(20) == 0
        assert "forcing" not in proc.output


def test_sighup_replaces_the_workers_without_downtime(tmp_path: Path) -> None:
    port = free_port()
    with tidings(
        ["serve", "tests.server.apps:whoami", "--port", str(port), "--workers", "2"],
        tmp_path,
        ready="started 2 workers",
    ) as proc:
        old = _wait_children(proc.popen.pid, 2)
        proc.wait_for_log("Tidings serving on")
        slow: list[str] = []
        in_flight = threading.Thread(target=lambda: slow.append(_get(port, "/?1.0", 15)))
        in_flight.start()
        time.sleep(0.3)
        proc.popen.send_signal(signal.SIGHUP)
        failures = 0
        served_by: set[int] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                served_by.add(int(_get(port, timeout=5).split()[0]))
            except httpx.HTTPError:
                failures += 1
            now = _children(proc.popen.pid)
            if len(now) == 2 and not now & old and served_by - old:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"workers not replaced: {old} -> {now}\n{proc.output}")
        in_flight.join(15)
        assert slow and int(slow[0].split()[0]) in old, "the old worker finished its request"
        assert failures == 0
        assert "before SIGHUP) stopped" in proc.output or not any(
            Path(f"/proc/{pid}").exists() for pid in old
        )
        assert proc.stop() == 0


def test_proxy_headers_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "t.sock"
    with tidings(
        ["serve", "tests.server.apps:whoami", "--uds", str(path), "--proxy-headers"], tmp_path
    ):
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport) as client:
            r = client.get("http://localhost/", headers={"x-forwarded-for": "203.0.113.7"})
    assert r.text.split()[1] == "203.0.113.7"


def test_sighup_with_a_broken_release_keeps_the_running_workers(tmp_path: Path) -> None:
    app_dir = tmp_path / "release"
    app_dir.mkdir()
    module = app_dir / "deployed.py"
    module.write_text("from tests.server.apps import whoami as app\n")
    port = free_port()
    with tidings(
        ["serve", "deployed:app", "--app-dir", str(app_dir), "--port", str(port),
         "--workers", "2"],
        tmp_path,
        ready="started 2 workers",
    ) as proc:  # fmt: skip
        proc.wait_for_log("Tidings serving on")
        before = _children(proc.popen.pid)
        module.write_text("this is not python\n")
        proc.popen.send_signal(signal.SIGHUP)
        proc.wait_for_log("keeping the running workers")
        for _ in range(10):
            assert int(_get(port).split()[0]) in before
        assert proc.popen.poll() is None, "the server kept running"
        # The fixed release then rolls out.
        module.write_text("from tests.server.apps import whoami as app\n")
        proc.popen.send_signal(signal.SIGHUP)
        proc.wait_for_log("new workers serving")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not _children(proc.popen.pid) & before:
                break
            time.sleep(0.05)
        assert int(_get(port).split()[0]) not in before
        assert proc.stop() == 0


# -- the option table: parser, build_config and Config agree -------------------------------


def _parse(*args: str) -> argparse.Namespace:
    from tidings.cli import _make_parser

    return _make_parser().parse_args(["serve", "tests.server.apps:hello", *args])


def test_no_flags_build_the_default_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from tidings.server._cli import build_config
    from tidings.server.config import Config

    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert build_config(_parse()) == Config(app="tests.server.apps:hello")


def test_every_flag_reaches_its_config_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from tidings.server._cli import build_config

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.0.2.1")
    config = build_config(
        _parse(
            "--factory", "--host", "::1", "--port", "0", "--uds", "/tmp/t.sock",
            "--backlog", "7", "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem",
            "--ssl-keyfile-password", "pw", "--workers", "3", "--reload",
            "--reload-dir", "a", "--reload-dir", "b", "--loop", "asyncio", "--lifespan", "off",
            "--root-path", "/api", "--proxy-headers", "--no-access-log", "--log-level", "debug",
            "--max-header-size", "8KiB", "--max-header-count", "5", "--max-body-size", "1M",
            "--max-connections", "9", "--max-pipeline", "2", "--write-high-water", "2KiB",
            "--header-timeout", "1.5", "--keepalive-timeout", "2", "--body-timeout", "3",
            "--graceful-timeout", "4", "--application-close-timeout", "0.5",
            "--ws-max-message-size", "2MiB", "--ws-max-frame-size", "4KiB",
            "--ws-max-fragments", "8", "--ws-ping-interval", "0", "--ws-ping-timeout", "6",
            "--ws-handshake-timeout", "7", "--no-ws-per-message-deflate",
            "--ws-max-send-buffer", "1GiB", "--ws-max-queue", "3",
        )
    )  # fmt: skip
    assert (config.factory, config.host, config.port, config.uds) == (True, "::1", 0, "/tmp/t.sock")
    assert (config.ssl_certfile, config.ssl_keyfile, config.ssl_keyfile_password) == (
        "c.pem",
        "k.pem",
        "pw",
    )
    assert (config.workers, config.reload, config.reload_dirs) == (3, True, ("a", "b"))
    assert (config.loop, config.lifespan, config.root_path) == ("asyncio", "off", "/api")
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == ("10.0.0.0/8", "192.0.2.1")
    assert (config.access_log, config.log_level) == (False, "debug")
    lim, t, ws = config.limits, config.timeouts, config.websocket
    assert (lim.max_header_size, lim.max_header_count, lim.max_body_size) == (8192, 5, 1 << 20)
    assert (lim.max_connections, lim.max_pipeline, lim.write_high_water) == (9, 2, 2048)
    assert lim.backlog == 7
    assert (t.header, t.keepalive, t.body, t.graceful, t.application_close) == (
        1.5,
        2.0,
        3.0,
        4.0,
        0.5,
    )
    assert (ws.max_message_size, ws.max_frame_size, ws.max_fragments) == (2 << 20, 4096, 8)
    assert (ws.ping_interval, ws.ping_timeout, ws.handshake_timeout) == (None, 6.0, 7.0)
    assert ws.per_message_deflate is False
    assert (ws.max_send_buffer, ws.max_queue) == (1 << 30, 3)


@pytest.mark.parametrize(
    "option",
    [option for option in OPTIONS if option.bounds],
    ids=lambda o: o.flag,
)
def test_each_bound_is_checked_and_names_the_flag(option: Option) -> None:
    from tidings.server._cli import build_config
    from tidings.server.config import ConfigError

    assert option.bounds is not None
    low, high = option.bounds
    for value in (low, high):
        build_config(_parse(option.flag, str(value)))
    # A size below 0 is refused by the parser itself (see --max-body-size lots, above).
    too_low = [] if low == 0 and option.kind is SIZE else [low - 1]
    for value in [*too_low, high + 1]:
        with pytest.raises(ConfigError) as info:
            build_config(_parse(option.flag, str(value)))
        assert str(info.value) == (
            f"{option.flag} must be an integer from {low} to {high}, not {value!r}"
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lifespan": "sometimes"}, "--lifespan must be auto, on or off"),
        ({"log_level": "loud"}, "--log-level 'loud' is not a log level"),
        ({"port": True}, "--port must be an integer from 0 to 65535, not True"),
        ({"uds": "t.sock", "fd": 3}, "--uds and --fd cannot be used together"),
        ({"root_path": "/api/"}, "--root-path must start with '/' and not end with '/'"),
        (
            {"forwarded_allow_ips": ("*", "proxy")},
            "--forwarded-allow-ips: 'proxy' is not an IP address or network",
        ),
        (
            {"timeouts": Timeouts(header=0)},
            "--header-timeout must be a positive number of seconds, not 0",
        ),
        (
            {"websocket": WebSocketSettings(handshake_timeout=0.0)},
            "--ws-handshake-timeout must be a positive number of seconds, not 0.0",
        ),
        (
            {"websocket": WebSocketSettings(ping_interval=-1.0)},
            "--ws-ping-interval must be positive (or 0 to disable), not -1.0",
        ),
    ],
)
def test_config_keywords_are_checked_naming_the_flag(
    changes: dict[str, object], message: str
) -> None:
    """The checks run on every Config, however built (keywords here, not flags)."""
    from tidings.server.config import Config, ConfigError

    with pytest.raises(ConfigError) as info:
        Config(app="app:app", **changes)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert Config(app="app:app", log_level="INFO").log_level == "INFO"
