"""A private Mosquitto for the MQTT tests: own port, own config, stopped by PID.

Never the machine's broker: every test starts (and kills) its own process on
a free port of 127.0.0.1, with a config file in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["Mosquitto", "free_port", "mosquitto_binary"]


def mosquitto_binary() -> str:
    """The mosquitto executable (Debian puts it in /usr/sbin, outside most PATHs)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """One mosquitto process and its config; ``start``/``kill``/``stop`` by PID."""

    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str] | None = None,
        websockets: bool = False,
        tls: bool = False,
        extra: str = "",
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.ws_port = free_port() if websockets else None
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        lines = [
            # As root, mosquitto would switch to its own user, which cannot read
            # this private directory: stay the user that started it.
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {directory}/",
            "autosave_interval 1",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
        ]
        if users is not None:
            self._password_file(users)
            lines += ["allow_anonymous false", f"password_file {directory / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        self.tls_port = free_port() if tls else None
        if self.tls_port is not None:
            self._certificate()
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"certfile {directory / 'server.pem'}",
                f"keyfile {directory / 'server.key'}",
                "allow_anonymous true",
            ]
        if self.ws_port is not None:
            lines += [f"listener {self.ws_port} 127.0.0.1", "protocol websockets"]
            lines.append("allow_anonymous true" if users is None else "allow_anonymous false")
        lines.append(extra)
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def _password_file(self, users: dict[str, str]) -> None:
        path = self.directory / "passwd"
        path.write_text("")
        for user, password in users.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(path), user, password],
                check=True,
                capture_output=True,
            )
        path.chmod(0o600)

    def _certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (``server.pem``, also the CA file)."""
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(self.directory / "server.key"),
             "-out", str(self.directory / "server.pem")],
            check=True, capture_output=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited: {log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def kill(self) -> None:
        """SIGKILL: the broker dies without a goodbye (its persistence file stays)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
