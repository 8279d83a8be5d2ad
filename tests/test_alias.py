"""tidings.alias: libraries that import ``channels`` run on Tidings, opt-in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import tidings
import tidings.alias
import tidings.layers
from tidings.alias import AliasConflict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def alias() -> Iterator[None]:
    tidings.alias.install()
    try:
        yield
    finally:
        tidings.alias.uninstall()
    assert "channels" not in sys.modules


def test_channels_modules_are_tidings_modules(alias: None) -> None:
    import channels
    import channels.generic.websocket
    import channels.layers
    from channels.layers import get_channel_layer

    assert channels is tidings
    assert channels.layers is tidings.layers
    assert get_channel_layer is tidings.layers.get_channel_layer
    assert channels.DEFAULT_CHANNEL_LAYER == "default"
    assert channels.generic.websocket.__name__ == "tidings.generic.websocket"
    assert sys.modules["channels.generic"] is sys.modules["tidings.generic"]


def test_a_module_tidings_lacks_raises_and_names_both(alias: None) -> None:
    with pytest.raises(ModuleNotFoundError, match=r"'channels\.nope'.*'tidings\.nope'") as info:
        import channels.nope  # type: ignore[import-not-found]  # noqa: F401
    assert info.value.name == "channels.nope"


def test_install_twice_and_uninstall(alias: None) -> None:
    tidings.alias.install()
    assert sum(isinstance(f, tidings.alias._ChannelsAlias) for f in sys.meta_path) == 1
    assert tidings.alias.installed()


def test_not_installed_by_default() -> None:
    assert not tidings.alias.installed()
    with pytest.raises(ModuleNotFoundError):
        import channels  # type: ignore[import-not-found]  # noqa: F401


@pytest.fixture
def real_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package named ``channels`` on the path, as an installed Channels would be."""
    fake = tmp_path / "channels"
    fake.mkdir()
    (fake / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_refuses_to_shadow_an_installed_channels(real_channels: None) -> None:
    with pytest.raises(AliasConflict, match=r"a real Channels is installed at .*channels"):
        tidings.alias.install()
    assert not tidings.alias.installed()


def test_refuses_when_a_real_channels_is_already_imported(real_channels: None) -> None:
    import channels  # noqa: F401

    try:
        with pytest.raises(AliasConflict, match="already imported"):
            tidings.alias.install()
    finally:
        del sys.modules["channels"]
    assert not tidings.alias.installed()


LIBRARY = '''
"""A third-party library written for Channels: it imports ``channels`` itself."""
import channels
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer

LAYER_ALIAS = channels.DEFAULT_CHANNEL_LAYER


class Observer(AsyncJsonWebsocketConsumer):
    groups = ["observers"]

    async def receive_json(self, content, **kwargs):
        await get_channel_layer(LAYER_ALIAS).group_send(
            "observers", {"type": "observed", "value": content["value"]}
        )

    async def observed(self, event):
        await self.send_json({"seen": event["value"]})
'''

SETTINGS = """
import tidings.alias

tidings.alias.install()

SECRET_KEY = "x"
INSTALLED_APPS = ["tidings", "django.contrib.contenttypes", "django.contrib.auth"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
USE_TZ = True
"""

SCRIPT = """
import asyncio

import django

django.setup()

import observer_lib
import tidings.generic.websocket
from tidings.layers import get_channel_layer
from tidings.testing import WebsocketCommunicator


async def main():
    assert issubclass(observer_lib.Observer, tidings.generic.websocket.AsyncJsonWebsocketConsumer)
    assert type(get_channel_layer()).__module__ == "tidings.layers.inmemory"
    a = WebsocketCommunicator(observer_lib.Observer.as_asgi(), "/")
    b = WebsocketCommunicator(observer_lib.Observer.as_asgi(), "/")
    assert (await a.connect())[0] and (await b.connect())[0]
    await a.send_json_to({"value": 42})
    print("a", await a.receive_json_from(timeout=5))
    print("b", await b.receive_json_from(timeout=5))
    await a.disconnect()
    await b.disconnect()


asyncio.run(main())
"""


def test_a_library_importing_channels_runs_on_tidings(tmp_path: Path) -> None:
    (tmp_path / "observer_lib.py").write_text(textwrap.dedent(LIBRARY))
    (tmp_path / "lib_settings.py").write_text(SETTINGS)
    (tmp_path / "main.py").write_text(SCRIPT)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "lib_settings",
    }
    proc = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["a {'seen': 42}", "b {'seen': 42}"]
