"""Run the chat example for real: a copy of the project, its server, its commands.

:class:`ChatSite` copies ``examples/chat`` into a temporary directory (so the
tests never touch the checkout's database), migrates it and creates users.
Its processes (``tidings serve`` or ``manage.py runserver``, ``manage.py
runworker``, ``manage.py notify``) run with the copy as working directory and
import path, exactly as a user runs them, with the channel layer chosen as a user chooses it: the
``TIDINGS_REDIS_URL`` environment variable, or nothing for the in-memory one.

The clients are real too: :func:`login` logs in through the login form with
httpx (CSRF token and all), :func:`websocket` opens a bare WebSocket with the
session cookie and the site's Origin (what the pages' ``tidings.js`` does,
without its session layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLE = REPO / "examples" / "chat"
PASSWORD = "tidings-test"
START_TIMEOUT = 30.0
RECEIVE_TIMEOUT = 10.0


def copy_example(into: Path) -> Path:
    """Copy examples/chat to ``into`` without its database or caches; return the copy."""
    shutil.copytree(
        EXAMPLE, into, ignore=shutil.ignore_patterns("db.sqlite3*", "__pycache__", "*.pyc")
    )
    return into


def example_env(root: Path, redis_url: str | None = None) -> dict[str, str]:
    """The environment of the example's processes: its directory on the path, the layer."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONUNBUFFERED="1")
    env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py and asgi.py set their own
    env.pop("TIDINGS_REDIS_URL", None)
    if redis_url:
        env["TIDINGS_REDIS_URL"] = redis_url
    return env


class Process:
    """A child process whose output goes to a log file, stopped by PID."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str], log: Path, **kw: Any):
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, **kw
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.popen.poll() is not None:
                raise AssertionError(f"exited ({self.popen.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log_file.close()
        return self.popen.returncode


class Server(Process):
    """The example's server on a free port of 127.0.0.1, once it answers.

    ``tidings serve mysite.asgi:application`` on a socket bound here (``--fd``), or
    with ``runserver=True`` what ./scripts/demo runs, ``manage.py runserver`` (which
    also serves static files), without the autoreloader.
    """

    def __init__(
        self, site: ChatSite, *, redis_url: str | None, name: str, runserver: bool = False
    ) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        if runserver:
            self.sock.close()  # runserver binds the port itself
            command = ["manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"]
            pass_fds: list[int] = []
        else:
            fd = self.sock.fileno()
            command = ["-m", "tidings", "serve", "mysite.asgi:application", "--fd", str(fd)]
            pass_fds = [fd]
        super().__init__(
            [sys.executable, *command],
            cwd=site.root,
            env=site.env(redis_url),
            log=site.root / f"{name}.log",
            pass_fds=pass_fds,
        )
        # The first answer means the application has started.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                httpx.get(self.url + "/accounts/login/", timeout=START_TIMEOUT).raise_for_status()
                break
            except httpx.HTTPError:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"the server did not start:\n{self.output()}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        code = super().stop(sig)
        self.sock.close()
        return code


class ChatSite:
    """A migrated copy of the example with the users alice, bob and carol."""

    def __init__(self, root: Path) -> None:
        self.root = copy_example(root)
        self.manage("migrate", "--verbosity", "0")
        self.manage("demousers", PASSWORD, "alice", "bob", "carol")

    def env(self, redis_url: str | None) -> dict[str, str]:
        return example_env(self.root, redis_url)

    def manage(
        self, *args: str, redis_url: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env(redis_url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert completed.returncode == 0, completed.stdout + completed.stderr
        return completed

    @contextlib.contextmanager
    def serve(
        self, *, redis_url: str | None = None, name: str = "server", runserver: bool = False
    ) -> Iterator[Server]:
        server = Server(self, redis_url=redis_url, name=name, runserver=runserver)
        try:
            yield server
        finally:
            code = server.stop()
            assert code == 0, f"the server exited with {code}:\n{server.output()}"
            assert "Traceback" not in server.output(), server.output()

    @contextlib.contextmanager
    def runworker(self, *, redis_url: str) -> Iterator[Process]:
        worker = Process(
            [sys.executable, "manage.py", "runworker", "chat-summaries"],
            cwd=self.root,
            env=self.env(redis_url),
            log=self.root / "worker.log",
        )
        try:
            worker.wait_for_output("Running worker for channels chat-summaries")
            yield worker
        finally:
            code = worker.stop()
            assert code == 0, f"the worker exited with {code}:\n{worker.output()}"
            assert "Traceback" not in worker.output(), worker.output()

    def messages(self, room: str) -> list[tuple[str, str]]:
        """``(author, text)`` of a room's saved messages, read from the SQLite file."""
        with contextlib.closing(sqlite3.connect(self.root / "db.sqlite3")) as db:
            rows = db.execute(
                "SELECT u.username, m.text FROM chat_message m "
                "JOIN auth_user u ON u.id = m.author_id WHERE m.room = ? ORDER BY m.id",
                (room,),
            ).fetchall()
        return [(str(author), str(text)) for author, text in rows]


@contextlib.asynccontextmanager
async def login(server: Server, username: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client logged in through the login form."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await client.get("/accounts/login/")
        response = await client.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert response.status_code == 302, response.text
        assert "sessionid" in client.cookies
        yield client


def websocket(
    server: Server, path: str, client: httpx.AsyncClient | None = None, *, origin: str = ""
) -> connect:
    """Open ``path`` as the site's pages do: its Origin, and the client's cookies if any."""
    headers = {}
    if client is not None:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    return connect(
        server.ws_url + path,
        origin=origin or server.url,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=10,
    )


async def receive(ws: ClientConnection, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
    """The next JSON message from the server."""
    data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return data


async def receive_type(
    ws: ClientConnection, kind: str, timeout: float = RECEIVE_TIMEOUT
) -> dict[str, Any]:
    """The next message of type ``kind``, skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            data = await receive(ws, timeout)
            if data.get("type") == kind:
                return data
