"""The browser test harness: headless Chromium, a ``tidings serve`` process, a cutting proxy.

- :class:`BrowserFactory` starts Debian's Chromium through Debian's chromedriver with
  Selenium. Each browser has its own fresh profile directory, so its own cookie jar,
  cache and storage: two browsers are two independent users. Selenium Manager is never
  asked for anything (both executables are given, ``SE_OFFLINE`` is set), and the
  flags keep Chromium from calling hosts this machine cannot reach.
- :class:`ServerProcess` runs ``python -m tidings serve`` on a free port of 127.0.0.1
  with a Django settings module and keeps its log (the access log names the worker's
  PID on every line).
- :class:`CuttingProxy` is a TCP proxy on 127.0.0.1 that, while cutting, aborts each
  connection after a random number of bytes towards the client or a random lifetime,
  whichever comes first: frames and HTTP responses are cut in the middle. It runs
  its own asyncio loop in a thread, because Selenium calls block.

Everything waits on conditions with deadlines (:func:`wait_js`), never on fixed
sleeps; a failed wait reports the browser's console log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

__all__ = [
    "CHROMIUM_ARGS",
    "ROOT",
    "BrowserFactory",
    "CuttingProxy",
    "ServerProcess",
    "console_log",
    "free_port",
    "poll",
    "serving",
    "wait_js",
]

ROOT = Path(__file__).resolve().parents[2]

# Headless, and nothing that reaches out to Google's services (this machine has no
# route to them, and retries would only slow the browser down).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1024,768",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _executable(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"the browser tests need {name} (Debian: apt-get install {package}); "
            "./scripts/test installs it when run as root"
        )
    return path


class BrowserFactory:
    """Starts independent headless Chromium browsers; :meth:`close` quits them all.

    Call the factory to get a new Selenium ``WebDriver``; each one has a fresh profile
    (``--user-data-dir`` in a temporary directory removed at close), hence its own
    cookies: use two for a test with two users. The browser's console is kept
    (``console_log(driver)``).

    Args:
        page_load_timeout: seconds ``driver.get()`` may take.
    """

    def __init__(self, *, page_load_timeout: float = 15) -> None:
        self.page_load_timeout = page_load_timeout
        self.drivers: list[WebDriver] = []
        self.profiles: list[str] = []
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download

    def __call__(self) -> WebDriver:
        profile = tempfile.mkdtemp(prefix="tidings-chromium-")
        self.profiles.append(profile)
        options = webdriver.ChromeOptions()
        options.binary_location = _executable("chromium", "chromium")
        for arg in [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=_executable("chromedriver", "chromium-driver"))
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(self.page_load_timeout)
        driver.set_script_timeout(self.page_load_timeout)
        self.drivers.append(driver)
        return driver

    def close(self) -> None:
        """Quit every browser this factory started and remove their profiles."""
        while self.drivers:
            driver = self.drivers.pop()
            with contextlib.suppress(Exception):
                driver.quit()
        while self.profiles:
            shutil.rmtree(self.profiles.pop(), ignore_errors=True)


def console_log(driver: WebDriver) -> str:
    """The browser console lines logged since the last call (for failure messages)."""
    if not isinstance(driver, webdriver.Chrome):
        return "(no console log)"
    try:
        entries = driver.get_log("browser")
    except Exception as exc:
        return f"(console log unavailable: {exc})"
    return "\n".join(f"{e.get('level')} {e.get('message')}" for e in entries)


def wait_js(
    driver: WebDriver,
    script: str,
    *args: Any,
    timeout: float = 10,
    message: str = "",
    describe: str | None = None,
) -> Any:
    """Run ``script`` (a function body that returns) until its result is truthy.

    Returns the truthy result. On timeout fails with ``message``, the last result of
    ``describe`` (another script, e.g. one returning the page's state) and the console.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = driver.execute_script(script, *args)
        if result:
            return result
        if time.monotonic() > deadline:
            state = driver.execute_script(describe) if describe else result
            raise AssertionError(
                f"timed out after {timeout} s waiting for: {message or script}\n"
                f"state: {state!r}\nconsole:\n{console_log(driver)}"
            )
        time.sleep(0.05)


class ServerProcess:
    """``python -m tidings serve APP --port PORT ...`` with ``DJANGO_SETTINGS_MODULE``.

    Args:
        app: the ``module:attribute`` of the ASGI application.
        settings: the Django settings module.
        log: file that gets the server's stdout and stderr.
        args: more ``tidings serve`` flags.
        env: more environment variables.
    """

    def __init__(
        self,
        app: str,
        *,
        settings: str,
        log: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log = log
        environ = dict(os.environ)
        environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
        environ["DJANGO_SETTINGS_MODULE"] = settings
        environ.update(env or {})
        self._fh = log.open("wb")
        command = [sys.executable, "-m", "tidings", "serve", app]
        command += ["--host", "127.0.0.1", "--port", str(self.port), *(args or [])]
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=environ, stdout=self._fh, stderr=subprocess.STDOUT
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20, text: str = "Tidings serving on") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"server not ready ({text!r} not logged); output:\n{self.output}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._fh.close()


@contextlib.contextmanager
def serving(*args: Any, **kwargs: Any) -> Iterator[ServerProcess]:
    """A :class:`ServerProcess` that is ready, stopped at exit."""
    server = ServerProcess(*args, **kwargs)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class CuttingProxy:
    """A TCP proxy from a free port of 127.0.0.1 to ``upstream_port``.

    While :attr:`cutting` is true, each connection is aborted (both sides, at once)
    after a random number of bytes towards the client in ``cut_bytes`` or after a
    random lifetime in ``cut_after`` seconds, whichever comes first; a connection
    opened while not cutting starts its clock when cutting starts. :attr:`cuts` counts
    the connections aborted.

    :meth:`kill_matching` adds a rule of its own, applied whether cutting or not: a
    connection whose first bytes from the client contain a pattern is aborted a
    while after it opened (a proxy that lets a WebSocket open, then kills it).

    While :attr:`frozen` is true, bytes are dropped both ways and nothing is closed:
    a host that vanished without a FIN or RST (powered off, cut off the network).
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        cut_bytes: tuple[int, int] = (1500, 6000),
        cut_after: tuple[float, float] = (0.3, 1.0),
        seed: int | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.cut_bytes = cut_bytes
        self.cut_after = cut_after
        self.random = random.Random(seed)
        self.cutting = False
        self.frozen = False
        self.kill_rule: tuple[bytes, float] | None = None
        self.cuts = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._thread = threading.Thread(target=self._run, name="cutting-proxy", daemon=True)
        self._thread.start()
        server = self._server if self._ready.wait(10) else None
        if server is None:
            raise RuntimeError("the proxy did not start")
        self.port: int = server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self._loop.create_task(self._ticker())
        self._ready.set()
        self._loop.run_forever()
        for link in list(self._links):
            link.abort()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def start_cutting(self) -> None:
        self._loop.call_soon_threadsafe(self._set_cutting, True)

    def stop_cutting(self) -> None:
        self._loop.call_soon_threadsafe(self._set_cutting, False)

    def _set_cutting(self, on: bool) -> None:
        self.cutting = on
        for link in self._links:
            link.arm()

    def kill_matching(self, pattern: bytes, after: float) -> None:
        """Abort connections whose first request contains ``pattern``, ``after`` s in."""
        self.kill_rule = (pattern, after)

    def cut_all(self) -> None:
        """Abort every open connection now."""

        def cut() -> None:
            for link in list(self._links):
                self.cuts += 1
                link.abort()

        self._loop.call_soon_threadsafe(cut)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = self._loop.time()
            for link in list(self._links):
                if (self.cutting and link.deadline is not None and now >= link.deadline) or (
                    link.kill_at is not None and now >= link.kill_at
                ):
                    self.cuts += 1
                    link.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        link = _Link(self, writer, up_writer)
        self._links.add(link)
        link.arm()
        try:
            await asyncio.gather(
                link.pipe(reader, up_writer, down=False),
                link.pipe(up_reader, writer, down=True),
            )
        finally:
            self._links.discard(link)
            link.abort()

    def close(self) -> None:
        if self._loop.is_closed():
            return

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


class _Link:
    def __init__(
        self, proxy: CuttingProxy, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.budget: int | None = None
        self.deadline: float | None = None
        self.kill_at: float | None = None
        self.first = True
        self.closed = False

    def arm(self) -> None:
        proxy = self.proxy
        if proxy.cutting and self.budget is None:
            self.budget = proxy.random.randint(*proxy.cut_bytes)
            self.deadline = proxy._loop.time() + proxy.random.uniform(*proxy.cut_after)
        elif not proxy.cutting:
            self.budget = self.deadline = None

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.transport.abort()
            self.upstream.transport.abort()

    @staticmethod
    async def _flush(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        for _ in range(100):
            if writer.transport.is_closing() or not writer.transport.get_write_buffer_size():
                return
            await asyncio.sleep(0.002)

    async def pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool
    ) -> None:
        try:
            while not self.closed:
                data = await reader.read(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                if self.proxy.frozen:
                    continue  # swallowed: the other end hears nothing, not even a close
                rule = self.proxy.kill_rule
                if not down and self.first and rule is not None and rule[0] in data:
                    self.kill_at = self.proxy._loop.time() + rule[1]
                self.first = self.first and down
                if down and self.budget is not None:
                    if len(data) >= self.budget:
                        writer.write(data[: self.budget])  # a cut in mid-message
                        await self._flush(writer)
                        self.proxy.cuts += 1
                        self.abort()
                        return
                    self.budget -= len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            self.abort()


def poll(check: Callable[[], Any], *, timeout: float = 10, message: str = "") -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(0.05)
