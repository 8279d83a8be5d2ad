"""Every public module imports before Django's settings are configured, as Channels' do.

Channels' tutorial ``asgi.py`` imports ``channels.auth`` (and routing, security)
*above* ``get_asgi_application()``, before ``DJANGO_SETTINGS_MODULE`` is even set.
A migrated project does the same with ``tidings.``; a module that reads a setting,
or imports Django models, at import time makes ``tidings serve`` exit at start-up.

Each module is imported in a fresh interpreter without ``DJANGO_SETTINGS_MODULE``;
the public modules are found by walking the package, so a new one is covered as
soon as it exists. Private modules (a ``_`` in the dotted path, ``tidings.__main__``
included) are internals that public modules import, so they are covered through them.
"""

from __future__ import annotations

import asyncio
import os
import pkgutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

import tidings

from .server._helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def public_modules() -> list[str]:
    """``tidings`` and every submodule without a ``_``-prefixed part in its name."""
    found = ["tidings"]
    for info in pkgutil.walk_packages(tidings.__path__, "tidings."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return sorted(found)


def bare_env() -> dict[str, str]:
    """The environment with no Django settings and this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# Imports the module, then checks it did not configure settings or set Django up
# to get there (either would hide the problem from the next import).
_IMPORT_CHECK = textwrap.dedent(
    """
    import importlib, sys
    importlib.import_module(sys.argv[1])
    from django.apps import apps
    from django.conf import settings
    assert not settings.configured, "the import configured Django's settings"
    assert not apps.ready, "the import set Django up"
    """
)


def test_discovery_finds_the_channels_modules() -> None:
    modules = set(public_modules())
    assert {
        "tidings.auth",
        "tidings.sessions",
        "tidings.middleware",
        "tidings.security.websocket",
        "tidings.routing",
        "tidings.consumer",
        "tidings.generic.websocket",
        "tidings.generic.http",
        "tidings.layers",
        "tidings.layers.redis",
        "tidings.db",
        "tidings.exceptions",
        "tidings.testing",
        "tidings.alias",
        "tidings.apps",
        "tidings.management.commands.runserver",
    } <= modules
    assert not [name for name in modules if "._" in name]


@pytest.mark.parametrize("module", public_modules())
def test_module_imports_without_settings(module: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, module],
        cwd=tmp_path,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr}"


# A project laid out as Channels' tutorial has it: asgi.py imports the middleware
# before it sets DJANGO_SETTINGS_MODULE and calls get_asgi_application().
_SETTINGS = """
SECRET_KEY = "not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tidings",
]
ROOT_URLCONF = "mysite.urls"
DATABASES = {}
ASGI_APPLICATION = "mysite.asgi.application"
USE_TZ = True
"""

_URLS = """
from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("", lambda request: HttpResponse("hello from django"))]
"""

_ASGI = """
import os

from tidings.auth import AuthMiddlewareStack
from tidings.routing import ProtocolTypeRouter, URLRouter
from tidings.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application
from django.urls import path

from mysite.consumers import WhoAmI

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django_asgi_app = get_asgi_application()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("ws/", WhoAmI.as_asgi())]))
        ),
    }
)
"""

_CONSUMERS = """
from tidings.generic.websocket import AsyncWebsocketConsumer


class WhoAmI(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        await self.send(text_data="anonymous" if self.scope["user"].is_anonymous else "user")
"""


def write_project(root: Path) -> None:
    package = root / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(_SETTINGS)
    (package / "urls.py").write_text(_URLS)
    (package / "asgi.py").write_text(_ASGI)
    (package / "consumers.py").write_text(_CONSUMERS)


def test_serve_a_project_whose_asgi_imports_auth_first(tmp_path: Path) -> None:
    write_project(tmp_path)
    port = free_port()
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "tidings", "serve", "mysite.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--app-dir", str(tmp_path)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=bare_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "Tidings serving on" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"tidings serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not serving after 30 s:\n{log.read_text()}"
            time.sleep(0.05)
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert response.status_code == 200
        assert response.text == "hello from django"
        assert asyncio.run(who_am_i(port)) == "anonymous"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


async def who_am_i(port: int) -> str:
    """Open the WebSocket through AuthMiddlewareStack; return what the consumer says."""
    async with connect(
        f"ws://127.0.0.1:{port}/ws/", origin=Origin(f"http://127.0.0.1:{port}"), open_timeout=10
    ) as ws:
        answer = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(answer, str)
    return answer
