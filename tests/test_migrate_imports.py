"""``tidings migrate-imports``: what it rewrites, what it leaves, where it looks.

A small Channels project (the shape of Channels' tutorial, plus the cases a
text substitution gets wrong) is written to a temporary directory next to a
virtual environment and a ``.git`` directory that hold Channels code too. The
command runs as users run it, in a subprocess; after ``--write`` the project
imports and its consumer answers through ``WebsocketCommunicator``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tidings._migrate import project_files, rewrite_source

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = """\
INSTALLED_APPS = [
    "daphne",  # the server
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "django.contrib.staticfiles",
    "chat",
]
SECRET_KEY = "x"
ALLOWED_HOSTS = ["localhost"]
ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    "redis": {
        "BACKEND": 'channels_redis.core.RedisChannelLayer',
        "CONFIG": {"hosts": [("127.0.0.1", 6379)]},
    },
}
"""

SETTINGS_AFTER = """\
INSTALLED_APPS = [
    "tidings",  # the server
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "chat",
]
SECRET_KEY = "x"
ALLOWED_HOSTS = ["localhost"]
ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CHANNEL_LAYERS = {
    "default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"},
    "redis": {
        "BACKEND": 'tidings.layers.redis.RedisChannelLayer',
        "CONFIG": {"hosts": [("127.0.0.1", 6379)]},
    },
}
"""

CONSUMERS = '''\
"""The chat consumer; see channels.generic.websocket for the base class."""
import json

from channels.generic.websocket import AsyncWebsocketConsumer
import channels.layers


def room_names(room):  # an attribute named channels stays
    return [c.name for c in room.channels]


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        # from channels.layers: the comment stays
        layer = channels.layers.get_channel_layer()
        await layer.group_add("room", self.channel_name)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(
            "room", {"type": "chat.message", "message": json.loads(text_data)["message"]}
        )

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))
'''

CONSUMERS_AFTER = (
    CONSUMERS.replace(
        "from channels.generic.websocket import", "from tidings.generic.websocket import"
    )
    .replace("import channels.layers\n", "import tidings.layers\n")
    .replace("layer = channels.layers.get_", "layer = tidings.layers.get_")
)

ROUTING = """\
from django.urls import path
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import (
    AllowedHostsOriginValidator,
)

from chat.consumers import ChatConsumer

application = ProtocolTypeRouter(
    {"websocket": AllowedHostsOriginValidator(URLRouter([path("ws/", ChatConsumer.as_asgi())]))}
)
"""

CHECK = """
import asyncio, json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
import django
django.setup()
from tidings.testing import WebsocketCommunicator
from mysite.asgi import application

async def main():
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    client = WebsocketCommunicator(application, "/ws/", headers=headers)
    assert (await client.connect())[0]
    await client.send_to(text_data=json.dumps({"message": "hi"}))
    assert json.loads(await client.receive_from()) == {"message": "hi"}
    await client.disconnect()

asyncio.run(main())
print("chat works")
"""


def write_project(root: Path) -> dict[Path, str]:
    """A Channels project, a virtual environment and a .git directory under ``root``."""
    files = {
        root / "mysite" / "__init__.py": "",
        root / "mysite" / "settings.py": SETTINGS,
        root / "mysite" / "urls.py": "urlpatterns = []\n",
        root / "mysite" / "asgi.py": ROUTING,
        root / "chat" / "__init__.py": "",
        root / "chat" / "consumers.py": CONSUMERS,
        root / "notes.txt": "from channels.layers import x\n",
    }
    outside = "from channels.layers import get_channel_layer\n"
    for place in (
        ".venv/lib/python3.11/site-packages/pkg/mod.py",
        "venv/lib/mod.py",
        "env-with-any-name/lib/mod.py",
        ".git/hooks/mod.py",
        "node_modules/pkg/mod.py",
        "lib/site-packages/mod.py",
    ):
        files[root / place] = outside
    files[root / "env-with-any-name" / "pyvenv.cfg"] = "home = /usr/bin\n"
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "tidings", "migrate-imports", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def snapshot(root: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_dry_run_prints_the_diff_and_changes_nothing(tmp_path: Path) -> None:
    write_project(tmp_path)
    before = snapshot(tmp_path)
    completed = run(tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert snapshot(tmp_path) == before
    diff = completed.stdout
    assert "--- a/mysite/settings.py\n+++ b/mysite/settings.py\n" in diff
    assert '-    "daphne",  # the server\n+    "tidings",  # the server\n' in diff
    assert '-    "channels",\n' in diff
    assert "+from tidings.generic.websocket import AsyncWebsocketConsumer\n" in diff
    assert "+from tidings.routing import ProtocolTypeRouter, URLRouter\n" in diff
    for untouched in ("site-packages", "venv", "env-with-any-name", ".git", "node_modules"):
        assert untouched not in diff
    assert "notes.txt" not in diff
    assert "3 file(s) would change" in completed.stderr


def test_write_rewrites_the_project_only_and_is_idempotent(tmp_path: Path) -> None:
    files = write_project(tmp_path)
    completed = run(tmp_path, "--write")
    assert completed.returncode == 0, completed.stderr
    after = snapshot(tmp_path)
    expected = dict(files)
    expected[tmp_path / "mysite" / "settings.py"] = SETTINGS_AFTER
    expected[tmp_path / "chat" / "consumers.py"] = CONSUMERS_AFTER
    expected[tmp_path / "mysite" / "asgi.py"] = ROUTING.replace("from channels.", "from tidings.")
    assert after == expected

    again = run(tmp_path, "--write")
    assert again.returncode == 0
    assert snapshot(tmp_path) == after
    assert "0 file(s) rewritten" in again.stderr
    assert run(tmp_path).stdout == ""


def test_the_migrated_project_imports_and_chats(tmp_path: Path) -> None:
    write_project(tmp_path)
    assert run(tmp_path, "--write").returncode == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    completed = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.stdout.strip() == "chat works", completed.stderr


def test_paths_may_name_files_and_directories(tmp_path: Path) -> None:
    write_project(tmp_path)
    completed = run(tmp_path, "chat/consumers.py", "--write")
    assert completed.returncode == 0
    assert (tmp_path / "chat" / "consumers.py").read_text() == CONSUMERS_AFTER
    assert (tmp_path / "mysite" / "settings.py").read_text() == SETTINGS
    assert run(tmp_path, "missing").returncode == 2


def test_a_file_that_does_not_parse_is_reported_and_left(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("from channels.db import (\n")
    (tmp_path / "fine.py").write_text("from channels.db import database_sync_to_async\n")
    completed = run(tmp_path, "--write")
    assert completed.returncode == 1
    assert "broken.py: skipped" in completed.stderr
    assert (tmp_path / "broken.py").read_text() == "from channels.db import (\n"
    assert (tmp_path / "fine.py").read_text() == "from tidings.db import database_sync_to_async\n"


def test_project_files_skip_environments_and_tooling(tmp_path: Path) -> None:
    write_project(tmp_path)
    found = {p.relative_to(tmp_path).as_posix() for p in project_files(tmp_path)}
    assert found == {
        "mysite/__init__.py",
        "mysite/settings.py",
        "mysite/urls.py",
        "mysite/asgi.py",
        "chat/__init__.py",
        "chat/consumers.py",
    }


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("import channels\n", "import tidings\n"),
        ("import channels.db as db\n", "import tidings.db as db\n"),
        ("import os, channels.layers\n", "import os, tidings.layers\n"),
        ("from channels import layers\n", "from tidings import layers\n"),
        ("from . import channels\n", "from . import channels\n"),
        ("from .channels import x\n", "from .channels import x\n"),
        ("from mychannels.layers import x\n", "from mychannels.layers import x\n"),
        ("import channels_redis\n", "import channels_redis\n"),
        (
            "from channels_redis.core import RedisChannelLayer\n",
            "from tidings.layers.redis import RedisChannelLayer\n",
        ),
        (
            "try:\n    from channels.db import x\nexcept ImportError:\n    pass\n",
            "try:\n    from tidings.db import x\nexcept ImportError:\n    pass\n",
        ),
        ("if True: import channels.db\n", "if True: import tidings.db\n"),
        ("x = 'é'; from channels.db import x\n", "x = 'é'; from tidings.db import x\n"),
        (
            "import channels.layers\nchannels.layers.get_channel_layer()\n",
            "import tidings.layers\ntidings.layers.get_channel_layer()\n",
        ),
        ("channels = 3\nprint(channels)\n", "channels = 3\nprint(channels)\n"),
        ('"""Uses channels.layers."""\n', '"""Uses channels.layers."""\n'),
        ("# import channels\n", "# import channels\n"),
        ('x = "channels"\n', 'x = "channels"\n'),
        ('x = "see channels.layers here"\n', 'x = "see channels.layers here"\n'),
        ('x = b"channels.layers"\n', 'x = b"channels.layers"\n'),
        (
            'ROUTE = "channels.routing.get_default_application"\n',
            'ROUTE = "tidings.routing.get_default_application"\n',
        ),
        ("x = r'channels.db'\n", "x = r'tidings.db'\n"),
        (
            'B = "channels_redis.pubsub.RedisPubSubChannelLayer"\n',
            'B = "tidings.layers.redis.RedisChannelLayer"\n',
        ),
    ],
)
def test_rewrite_source(before: str, after: str) -> None:
    assert rewrite_source(before).text == after
    assert rewrite_source(after).text == after


def test_uses_of_a_rebound_name_are_left_with_a_note() -> None:
    text = "import channels.layers\nchannels.layers.x()\n\ndef f(channels):\n    return channels\n"
    rewrite = rewrite_source(text, path="m.py")
    assert rewrite.text == text.replace("import channels.layers", "import tidings.layers")
    assert rewrite.notes == [
        "m.py: the name 'channels' is also bound otherwise; "
        "its uses (channels.x) were left as they are: check them"
    ]


def test_channels_redis_imports_without_a_counterpart_get_a_note() -> None:
    text = "import channels_redis\nfrom channels_redis.pubsub import RedisPubSubChannelLayer\n"
    rewrite = rewrite_source(text, path="m.py")
    assert rewrite.text == text
    assert rewrite.notes == [
        f"m.py:{line}: {module} has no Tidings module of its own: "
        "use tidings.layers.redis (see docs/migration.md)"
        for line, module in ((1, "channels_redis"), (2, "channels_redis.pubsub"))
    ]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # "tidings" exactly once, before staticfiles, in the place of what it replaces.
        ('A = 1\nINSTALLED_APPS = ["daphne", "x"]\n', 'A = 1\nINSTALLED_APPS = ["tidings", "x"]\n'),
        (
            'INSTALLED_APPS = ["a", "django.contrib.staticfiles", "channels"]\n',
            'INSTALLED_APPS = ["a", "tidings", "django.contrib.staticfiles"]\n',
        ),
        (
            'INSTALLED_APPS = ("a", "django.contrib.staticfiles", "daphne", "channels",)\n',
            'INSTALLED_APPS = ("a", "tidings", "django.contrib.staticfiles",)\n',
        ),
        (
            "INSTALLED_APPS = [\n    'a',\n    'django.contrib.staticfiles',\n    'channels',\n]\n",
            "INSTALLED_APPS = [\n    'a',\n    'tidings',\n    'django.contrib.staticfiles',\n]\n",
        ),
        (
            'INSTALLED_APPS = ["daphne", "tidings", "channels.apps.ChannelsConfig"]\n',
            'INSTALLED_APPS = ["tidings"]\n',
        ),
        (
            'INSTALLED_APPS = ["django.contrib.staticfiles", "tidings"]\n',
            'INSTALLED_APPS = ["tidings", "django.contrib.staticfiles"]\n',
        ),
        ('INSTALLED_APPS = ["tidings", "x"]\n', 'INSTALLED_APPS = ["tidings", "x"]\n'),
        ('INSTALLED_APPS = ["x"]\n', 'INSTALLED_APPS = ["x"]\n'),
        ('OTHER = ["channels"]\n', 'OTHER = ["channels"]\n'),
    ],
)
def test_installed_apps(before: str, after: str) -> None:
    assert rewrite_source(before).text == after
    assert rewrite_source(after).text == after


def test_the_command_is_in_the_reference() -> None:
    from tests.test_docs_reference import _flag_rows, _options, _section
    from tidings.cli import _make_parser

    parser = _make_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    options = _options(sub.choices["migrate-imports"])  # type: ignore[attr-defined]
    documented = {
        f for flags, _ in _flag_rows(_section("`tidings migrate-imports`")) for f in flags
    }
    assert documented == set(options)
