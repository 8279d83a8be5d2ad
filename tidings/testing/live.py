"""A live server for end-to-end tests (Channels' ``ChannelsLiveServerTestCase``).

Theory of operation
-------------------
:class:`ChannelsLiveServerTestCase` is a ``TransactionTestCase`` whose
class set-up starts the Tidings server in a **separate process**, serving
``ASGI_APPLICATION`` on a free port, so that a real client (a browser driven
by Selenium or Playwright, ``httpx``, ``websockets``) can talk to it over
HTTP and WebSocket at :attr:`~ChannelsLiveServerTestCase.live_server_url`
and :attr:`~ChannelsLiveServerTestCase.live_server_ws_url`. The server
stops when the class's tests are done.

The test process binds and listens on the socket *before* the server
starts, then hands it over (file descriptor inheritance), so the port is
known and connectable at once and cannot be taken by anyone else. The child
is a fresh interpreter (``subprocess``; no ``fork`` of a threaded test
process). It loads the same settings module and then takes from the test
process, as they are when the server starts:

- every setting changed with ``override_settings`` / ``modify_settings``
  (on the test class, say) whose value is plain JSON data (strings,
  numbers, lists, dicts...); other values cannot cross and are left out;
- ``DEBUG``, which Django's test runner turns off;
- the database ``NAME`` of every connection (the *test* databases);
- ``ALLOWED_HOSTS``, with :attr:`~ChannelsLiveServerTestCase.host` added;
- the ``channels`` import alias (:mod:`tidings.alias`), if it is installed.

Settings the test process assigns directly, not through
``override_settings``, do not reach the server.
The server's channel layers are its own: an in-memory layer is not shared
with the test process; use the Redis layer to ``group_send`` from a test to
the server's consumers.

Because the server is another process, it must see the test database
through a file or a database server. SQLite's default test database is in
memory, so with SQLite give it a file name::

    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            "TEST": {"NAME": BASE_DIR / "test_db.sqlite3"},
        }
    }

``TransactionTestCase`` commits what a test writes (and empties the tables
afterwards), so the server sees rows the test created.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import traceback
from typing import Any, ClassVar, Final

from django.conf import UserSettingsHolder, settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import TransactionTestCase
from django.utils.functional import classproperty

import tidings.alias

__all__ = ["ChannelsLiveServerTestCase", "TidingsLiveServerTestCase"]

_CONFIG_ENV: Final = "TIDINGS_LIVE_SERVER_CONFIG"
# Run in the child: restore the parent's import path first, so the settings
# module and the application import exactly as they do in the test process.
_CHILD_CODE: Final = (
    "import json, os, sys\n"
    f"config = json.loads(os.environ[{_CONFIG_ENV!r}])\n"
    "sys.path[:] = config['sys_path']\n"
    "from tidings.testing.live import _serve_child\n"
    "sys.exit(_serve_child(config))\n"
)
_READY: Final = b"ready\n"


class _ServerProcess:
    """The server child process and the socket handed to it."""

    def __init__(self, host: str, config: dict[str, Any], *, startup_timeout: float) -> None:
        from tidings.server._main import bind_sockets
        from tidings.server.config import Config

        self.host = host
        (sock,) = bind_sockets(Config(host=host, port=0))
        self.port: int = sock.getsockname()[1]
        ready_read, ready_write = os.pipe()
        try:
            config = dict(config, fd=sock.fileno(), ready_fd=ready_write)
            env = dict(os.environ, **{_CONFIG_ENV: json.dumps(config)})
            env["DJANGO_SETTINGS_MODULE"] = config["settings_module"]
            self.process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE],
                env=env,
                pass_fds=(sock.fileno(), ready_write),
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            # The child holds its own copies now; ours would keep the pipe from
            # reaching EOF and would queue connections after the child exits.
            os.close(ready_write)
            sock.close()
        try:
            report = _read_until_eof(ready_read, startup_timeout)
        finally:
            os.close(ready_read)
        if report != _READY:
            status = self.stop()
            detail = report.decode(errors="replace").strip() or f"exit status {status}"
            raise RuntimeError(f"The live server process did not start:\n{detail}")

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the server gracefully (SIGTERM), killing it after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def _read_until_eof(fd: int, timeout: float) -> bytes:
    """Read ``fd`` until EOF or ``timeout`` seconds; a timeout yields what came so far."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    chunks.append(f"\n(no answer within {timeout:g} seconds)".encode())
    return b"".join(chunks)


def _serve_child(config: dict[str, Any]) -> int:
    """The server process: apply the test process's settings, then serve until SIGTERM."""
    ready_fd: int = config["ready_fd"]
    try:
        import django
        from django.conf import settings as child_settings

        if config["channels_alias"]:
            import tidings.alias

            tidings.alias.install()
        for name, value in config["settings"].items():
            setattr(child_settings, name, value)
        for alias, name in config["databases"].items():
            if alias in child_settings.DATABASES:
                child_settings.DATABASES[alias]["NAME"] = name
        django.setup()

        from django.apps import apps

        from tidings.routing import get_default_application
        from tidings.server._logconfig import configure_logging
        from tidings.server._main import bind_sockets, serve_in_process
        from tidings.server.config import Config
        from tidings.staticfiles import StaticFilesWrapper

        application = get_default_application()
        if config["serve_static"] and apps.is_installed("django.contrib.staticfiles"):
            application = StaticFilesWrapper(application)
        server_config = Config(
            app=application, fd=config["fd"], access_log=False, log_level="warning"
        )
        configure_logging(server_config)
        sockets = bind_sockets(server_config)
    except Exception:
        os.write(ready_fd, traceback.format_exc().encode())
        os.close(ready_fd)
        return 1
    os.write(ready_fd, _READY)
    os.close(ready_fd)
    return serve_in_process(server_config, sockets)


class ChannelsLiveServerTestCase(TransactionTestCase):
    """A ``TransactionTestCase`` with the Tidings server running ``ASGI_APPLICATION``.

    Use :attr:`live_server_url` (``http://localhost:PORT``) and
    :attr:`live_server_ws_url` (``ws://localhost:PORT``) to reach it. The
    server runs in another process for the whole test class; see the module
    documentation for which settings it shares with the test process.

    Raises:
        ImproperlyConfigured: (at class set-up) a database the test case uses
            is SQLite in memory, which the server process cannot open;
            settings are not from a settings module.
        RuntimeError: (at class set-up) the server process did not start;
            the message carries its traceback.
    """

    host: ClassVar[str] = "localhost"
    """The address the server listens on, and the host of the URLs."""
    serve_static: ClassVar[bool] = True
    """Serve ``STATIC_URL`` from the static files finders (needs ``django.contrib.staticfiles``)."""
    server_startup_timeout: ClassVar[float] = 30.0
    """Seconds the server process may take to import the project and start."""

    _live_server: ClassVar[_ServerProcess | None] = None

    @classproperty
    def live_server_url(cls) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{cls.host}:{cls._live_port()}"

    @classproperty
    def live_server_ws_url(cls) -> str:
        """``ws://host:port`` of the running server."""
        return f"ws://{cls.host}:{cls._live_port()}"

    @classmethod
    def _live_port(cls) -> int:
        if cls._live_server is None:
            raise RuntimeError("The live server runs only between setUpClass and tearDownClass.")
        return cls._live_server.port

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls._check_databases()
        cls.addClassCleanup(cls._stop_live_server)
        cls._live_server = _ServerProcess(
            cls.host, cls._server_config(), startup_timeout=cls.server_startup_timeout
        )

    @classmethod
    def _stop_live_server(cls) -> None:
        if cls._live_server is not None:
            cls._live_server.stop()
            cls._live_server = None

    @classmethod
    def _aliases(cls) -> list[str]:
        databases = cls.databases
        if databases == "__all__":
            return list(connections)
        return [alias for alias in connections if alias in databases]

    @classmethod
    def _check_databases(cls) -> None:
        for alias in cls._aliases():
            connection = connections[alias]
            if connection.vendor == "sqlite" and connection.is_in_memory_db():  # type: ignore[attr-defined]
                raise ImproperlyConfigured(
                    f"{cls.__name__} serves from another process, which cannot open the "
                    f"in-memory SQLite test database of DATABASES[{alias!r}]. Give it a "
                    f"file: DATABASES[{alias!r}]['TEST'] = {{'NAME': 'test_db.sqlite3'}}."
                )

    @classmethod
    def _server_config(cls) -> dict[str, Any]:
        module = _settings_module()
        if not module:
            raise ImproperlyConfigured(
                f"{cls.__name__} needs settings from a module (DJANGO_SETTINGS_MODULE): "
                "the server process loads them; settings.configure() cannot reach it."
            )
        server_settings = _overridden_settings()
        server_settings["DEBUG"] = bool(settings.DEBUG)
        allowed_hosts = list(settings.ALLOWED_HOSTS)
        if cls.host not in allowed_hosts:
            allowed_hosts.append(cls.host)
        server_settings["ALLOWED_HOSTS"] = allowed_hosts
        return {
            "settings_module": module,
            "sys_path": list(sys.path),
            "settings": server_settings,
            "databases": {
                alias: os.fspath(name)
                for alias in connections
                if (name := connections[alias].settings_dict.get("NAME"))
            },
            "serve_static": cls.serve_static,
            # A test process that runs Channels code through the alias (installed
            # by a test plugin, say, rather than by the settings) needs it in the
            # server too, before the settings name ``"channels"`` as an app.
            "channels_alias": tidings.alias.installed(),
        }


def _settings_module() -> str | None:
    """The settings module under any ``override_settings`` (whose holders report ``None``)."""
    holder = getattr(settings, "_wrapped", None)
    while isinstance(holder, UserSettingsHolder):
        holder = holder.default_settings
    module = getattr(holder, "SETTINGS_MODULE", None)
    return module if isinstance(module, str) and module else None


def _overridden_settings() -> dict[str, Any]:
    """The settings ``override_settings`` changed that survive a JSON round trip unchanged."""
    names: set[str] = set()
    holder = getattr(settings, "_wrapped", None)
    # Each active override_settings wraps the previous settings in one holder.
    while isinstance(holder, UserSettingsHolder):
        names.update(name for name in vars(holder) if name.isupper())
        holder = holder.default_settings
    plain: dict[str, Any] = {}
    for name in sorted(names):
        value = getattr(settings, name, None)
        try:
            if json.loads(json.dumps(value)) == value:
                plain[name] = value
        except (TypeError, ValueError):
            continue
    return plain


TidingsLiveServerTestCase = ChannelsLiveServerTestCase
"""The same class under a Tidings name."""
