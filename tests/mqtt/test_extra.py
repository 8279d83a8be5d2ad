"""Without the ``mqtt`` extra: Tidings works, ``tidings.mqtt`` says what to install."""

from __future__ import annotations

import subprocess
import sys

# Hide paho-mqtt from a fresh interpreter, as if the extra were not installed.
_BLOCK = """
import sys
class _NoPaho:
    def find_spec(self, name, path=None, target=None):
        if name == "paho" or name.startswith("paho."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoPaho())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DJANGO_SETTINGS_MODULE": "tests.django_settings", "PATH": ""},
    )


def test_tidings_works_without_the_extra() -> None:
    result = _run(
        "import django; django.setup()\n"
        "import tidings, tidings.routing, tidings.worker, tidings.consumer\n"
        "from tidings.routing import ProtocolTypeRouter\n"
        "async def app(scope, receive, send): pass\n"
        "ProtocolTypeRouter({'http': app})\n"
        "print('ok')"
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_tidings_mqtt_names_the_extra() -> None:
    result = _run("import tidings.mqtt")
    assert result.returncode != 0
    assert 'pip install "tidings[mqtt]"' in result.stderr
