"""The HTTP/2 conformance probe (``compliance/h2/run.py``) against ``tidings serve``.

The server runs as a real process (``tidings serve app:app --app-dir compliance/h2``)
over h2c and over TLS with ALPN; the probe runs every case (a whole run takes seconds)
and writes its verdicts as JSON. A case that fails and is not in ``KNOWN_FAILURES``
fails the test, and so does a known failure that now passes (strike it from the list).
The last test checks the probe itself against a server that answers PINGs and nothing
else, so a probe that passes everything cannot go unnoticed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "compliance" / "h2" / "run.py"

# Cases Tidings fails today, each with why. None: the server's own core
# (tidings.wire.http2) follows every rule the probe checks.
KNOWN_FAILURES: set[str] = set()
# RFC 8441 cases skip until the server advertises SETTINGS_ENABLE_CONNECT_PROTOCOL.
ALLOWED_SKIPS = {"rfc8441/3/1", "rfc8441/4/1", "rfc8441/4/2"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"tidings serve exited with status {proc.returncode}:\n{out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"tidings serve did not listen on port {port} within {timeout} s")


def _serve(*extra: str) -> Iterator[int]:
    port = _free_port()
    cmd = [sys.executable, "-m", "tidings", "serve", "app:app", "--app-dir", str(PROBE.parent)]
    cmd += ["--port", str(port), "--no-access-log", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def h2c_port() -> Iterator[int]:
    yield from _serve()


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[int]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=t"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    yield from _serve("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))


def _probe(port: int, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    report = tmp_path / "h2-probe.json"
    proc = subprocess.run(
        [sys.executable, str(PROBE), "--port", str(port), "--json", str(report), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "h2-probe: " in proc.stdout
    return proc, json.loads(report.read_text())


def _check_verdicts(proc: subprocess.CompletedProcess[str], report: Any) -> None:
    verdicts = {c["id"]: c["verdict"] for c in report["cases"]}
    assert len(verdicts) >= 130, "the probe lost cases"
    unexpected = sorted(i for i, v in verdicts.items() if v == "FAIL" and i not in KNOWN_FAILURES)
    fixed = sorted(i for i in KNOWN_FAILURES if verdicts.get(i) == "PASS")
    skipped = sorted(i for i, v in verdicts.items() if v == "SKIP" and i not in ALLOWED_SKIPS)
    assert not unexpected, f"new HTTP/2 conformance failures {unexpected}:\n{proc.stdout}"
    assert not fixed, f"{fixed} pass now: remove them from KNOWN_FAILURES"
    assert not skipped, f"unexpected skips {skipped}:\n{proc.stdout}"


def test_h2_probe_over_h2c(h2c_port: int, tmp_path: Path) -> None:
    """Every RFC 9113 / 7541 / 8441 case over cleartext HTTP/2 with prior knowledge."""
    _check_verdicts(*_probe(h2c_port, tmp_path))


def test_h2_probe_over_tls(tls_port: int, tmp_path: Path) -> None:
    """Every case again over TLS, where ALPN must choose h2."""
    _check_verdicts(*_probe(tls_port, tmp_path, "--tls"))


class _PingOnlyServer:
    """A server that sends SETTINGS, answers PINGs and ignores every other frame."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # empty SETTINGS
            buffer = b""
            try:
                while not self.stopping:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    buffer = self._frames(
                        conn, buffer.removeprefix(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    )
            except OSError:
                return

    @staticmethod
    def _frames(conn: socket.socket, buffer: bytes) -> bytes:
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags, payload = buffer[3], buffer[4], buffer[9 : 9 + length]
            if kind == 0x6 and not flags & 0x1 and length == 8:
                conn.sendall(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + payload)
            buffer = buffer[9 + length :]
        return buffer

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.sock.close()


def test_probe_fails_a_server_that_ignores_errors(tmp_path: Path) -> None:
    """The probe is not vacuous: a server that ignores bad frames fails the error cases."""
    server = _PingOnlyServer()
    try:
        proc, report = _probe(server.port, tmp_path, "--section", "6.5", "--timeout", "0.2")
    finally:
        server.close()
    verdicts = {c["id"]: c["verdict"] for c in report["cases"]}
    assert proc.returncode == 1
    assert verdicts["http2/6.5/2"] == "FAIL"  # SETTINGS on a stream, silently accepted
    assert verdicts["http2/6.5.2/5"] == "PASS"  # an unknown setting, rightly ignored
    assert verdicts["http2/6.5.3/2"] == "FAIL"  # SETTINGS never acknowledged
    assert "h2-probe: 1 passed, " in proc.stdout
