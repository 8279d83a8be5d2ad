"""ChannelsLiveServerTestCase: a real server process, real sockets, a shared SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.sessions.models import Session
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import override_settings
from django.utils import timezone
from websockets.sync.client import connect

import tidings.alias
import tidings.testing
from tidings.testing import ChannelsLiveServerTestCase, TidingsLiveServerTestCase
from tidings.testing.live import ChannelsLiveServerTestCase as LiveFromModule

REPO = Path(__file__).resolve().parent.parent.parent
PROJECT = REPO / "tests" / "django_project"


@pytest.mark.usefixtures("django_db")
@override_settings(
    ASGI_APPLICATION="tests.django_project.asgi.application",
    ROOT_URLCONF="tests.django_project.urls",
    ALLOWED_HOSTS=["testserver"],
    STATICFILES_DIRS=[str(PROJECT / "static")],
)
class LiveServerTests(ChannelsLiveServerTestCase):
    # Only these tables are emptied after each test: the rest of the suite shares the database.
    available_apps = ["django.contrib.sessions"]

    def test_urls(self) -> None:
        port = self._live_port()
        assert self.live_server_url == f"http://localhost:{port}"
        assert self.live_server_ws_url == f"ws://localhost:{port}"

    def test_http_request_reaches_a_consumer(self) -> None:
        response = httpx.get(f"{self.live_server_url}/hello/", timeout=10)
        assert response.status_code == 200
        assert response.text == "hello from a tidings consumer"

    def test_overridden_settings_and_host_reach_the_server(self) -> None:
        # ROOT_URLCONF and ALLOWED_HOSTS come from override_settings; "localhost" is added.
        response = httpx.get(f"{self.live_server_url}/host/", timeout=10)
        assert response.status_code == 200
        assert response.text == f"localhost:{self._live_port()}"
        refused = httpx.get(
            f"{self.live_server_url}/host/", headers={"host": "elsewhere.example"}, timeout=10
        )
        assert refused.status_code == 400

    def test_static_files_are_served(self) -> None:
        response = httpx.get(f"{self.live_server_url}/static/probe.txt", timeout=10)
        assert response.status_code == 200
        assert response.text == "tidings static probe\n"

    def test_server_sees_rows_the_test_created(self) -> None:
        url = f"{self.live_server_url}/sessions/live-row/"
        assert httpx.get(url, timeout=10).text == "no"
        Session.objects.create(
            session_key="live-row",
            session_data="",
            expire_date=timezone.now() + timedelta(days=1),
        )
        assert httpx.get(url, timeout=10).text == "yes"

    def test_websocket_echo(self) -> None:
        with connect(f"{self.live_server_ws_url}/ws/echo/", open_timeout=10) as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == "ping"


@override_settings(
    ASGI_APPLICATION="tests.django_project.asgi.application",
    STATICFILES_DIRS=[str(PROJECT / "static")],
)
class NoStaticTests(ChannelsLiveServerTestCase):
    serve_static = False

    def test_static_files_are_not_served(self) -> None:
        # Not even with the directory configured: the request reaches the application,
        # whose URL router has no static route (Django's 404 page).
        response = httpx.get(f"{self.live_server_url}/static/probe.txt", timeout=10)
        assert response.status_code == 404


@override_settings(ASGI_APPLICATION="tests.django_project.asgi_channels_alias.application")
class ChannelsAliasTests(ChannelsLiveServerTestCase):
    """A test process that runs Channels code through tidings.alias (as Channels' own
    suite does, from a pytest plugin) gets the alias in the server process too."""

    @classmethod
    def setUpClass(cls) -> None:
        if not tidings.alias.installed():
            tidings.alias.install()
            cls.addClassCleanup(tidings.alias.uninstall)
        super().setUpClass()

    def test_server_imports_channels_through_the_alias(self) -> None:
        response = httpx.get(f"{self.live_server_url}/", timeout=10)
        assert response.status_code == 200
        assert response.text == "served through the channels alias"


class StartupFailureTests(unittest.TestCase):
    def test_server_that_cannot_import_the_app_fails_set_up_with_its_traceback(self) -> None:
        class Broken(ChannelsLiveServerTestCase):
            def test_nothing(self) -> None:
                raise AssertionError("never runs")

        with (
            override_settings(ASGI_APPLICATION="tests.django_project.no_such_module.app"),
            pytest.raises(RuntimeError, match="no_such_module"),
        ):
            Broken.setUpClass()
        Broken.doClassCleanups()
        assert Broken._live_server is None

    def test_in_memory_sqlite_is_refused(self) -> None:
        class InMemory(ChannelsLiveServerTestCase):
            def test_nothing(self) -> None:
                raise AssertionError("never runs")

        memory = dict(connections["default"].settings_dict, NAME=":memory:")
        original = connections["default"].settings_dict
        connections["default"].settings_dict = memory
        try:
            with pytest.raises(ImproperlyConfigured, match=r"DATABASES\['default'\]\['TEST'\]"):
                InMemory.setUpClass()
            InMemory.doClassCleanups()
        finally:
            connections["default"].settings_dict = original
            InMemory._live_server = None

    def test_urls_need_a_running_server(self) -> None:
        with pytest.raises(RuntimeError, match="setUpClass"):
            _ = ChannelsLiveServerTestCase.live_server_url


def test_public_names() -> None:
    assert TidingsLiveServerTestCase is ChannelsLiveServerTestCase is LiveFromModule
    assert ChannelsLiveServerTestCase.host == "localhost"
    assert ChannelsLiveServerTestCase.serve_static is True
    assert "ChannelsLiveServerTestCase" in tidings.testing.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        _: Any = tidings.testing.no_such_name


def _django_test(db_dir: Path, test_db: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        TIDINGS_LIVE_DB_DIR=str(db_dir),
        TIDINGS_LIVE_TEST_DB=test_db,
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "test",
            "tests.django_project.live_tests",
            "--settings",
            "tests.django_project.settings_live",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_under_djangos_test_runner_the_server_uses_the_test_database(tmp_path: Path) -> None:
    completed = _django_test(tmp_path, "file")
    assert completed.returncode == 0, completed.stderr
    assert "Ran 1 test" in completed.stderr
    assert not (tmp_path / "test.sqlite3").exists()  # destroyed after the run


def test_under_djangos_test_runner_an_in_memory_database_is_refused(tmp_path: Path) -> None:
    completed = _django_test(tmp_path, "memory")
    assert completed.returncode == 1
    assert "ImproperlyConfigured" in completed.stderr
    assert "cannot open the in-memory SQLite test database" in completed.stderr
