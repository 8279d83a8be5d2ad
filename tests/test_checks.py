"""System checks: ASGI_APPLICATION (E001/E002), CHANNEL_LAYERS (E003), TIDINGS_PRESENCE (E004),
app order (W001)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import CheckMessage, run_checks
from django.core.checks.registry import registry
from django.test import override_settings

from tidings._checks import (
    check_asgi_application,
    check_channel_layers,
    check_presence_settings,
    check_runserver_override,
)

REPO = Path(__file__).resolve().parent.parent
GOOD_APP = "tests.django_project.asgi.application"
INMEMORY = "tidings.layers.InMemoryChannelLayer"


def ids(messages: list[CheckMessage]) -> list[str | None]:
    return [message.id for message in messages]


@pytest.fixture
def no_asgi_setting() -> Iterator[None]:
    with override_settings():
        if hasattr(settings, "ASGI_APPLICATION"):
            del settings.ASGI_APPLICATION
        yield


# -- registration ---------------------------------------------------------------


def test_checks_are_registered_by_the_app_config() -> None:
    registered = {getattr(check, "__name__", None) for check in registry.get_checks()}
    for check in (
        check_asgi_application,
        check_channel_layers,
        check_presence_settings,
        check_runserver_override,
    ):
        assert check.__name__ in registered


def test_run_checks_reports_a_missing_setting(no_asgi_setting: None) -> None:
    assert "tidings.E001" in ids(run_checks())


# -- ASGI_APPLICATION -----------------------------------------------------------


def test_valid_application_passes() -> None:
    with override_settings(ASGI_APPLICATION=GOOD_APP):
        assert check_asgi_application(None) == []


def test_missing_setting_is_e001(no_asgi_setting: None) -> None:
    (error,) = check_asgi_application(None)
    assert error.id == "tidings.E001"
    assert error.is_serious()
    assert "ASGI_APPLICATION" in error.msg
    assert "it is not set" in error.msg
    assert error.hint is not None and "mysite.asgi.application" in error.hint


@pytest.mark.parametrize("value", ["", "application", 42])
def test_not_a_dotted_path_is_e001(value: object) -> None:
    with override_settings(ASGI_APPLICATION=value):
        (error,) = check_asgi_application(None)
    assert error.id == "tidings.E001"
    assert repr(value) in error.msg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tests.django_project.no_such_module.application", "cannot be imported"),
        ("tests.django_project.asgi.no_such_name", "has no attribute 'no_such_name'"),
        ("tests.django_project.settings.STATIC_URL", "not callable"),
        (
            "tests.worker_project.broken_asgi.application",
            "failed to import: ModuleNotFoundError: No module named "
            "'tidings_no_such_module_for_tests'",
        ),
    ],
    ids=["no-module", "no-attribute", "not-callable", "error-inside-module"],
)
def test_unresolvable_application_is_e002(value: str, expected: str) -> None:
    with override_settings(ASGI_APPLICATION=value):
        (error,) = check_asgi_application(None)
    assert error.id == "tidings.E002"
    assert "ASGI_APPLICATION" in error.msg
    assert expected in error.msg
    assert error.hint is not None and repr(value) in error.hint


# -- CHANNEL_LAYERS -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"default": {"BACKEND": INMEMORY, "CONFIG": {"capacity": 10}}},
        {"default": {"BACKEND": INMEMORY, "TEST_CONFIG": {"expiry": 5}}},
        {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    ],
)
def test_valid_channel_layers_pass(value: dict[str, Any]) -> None:
    with override_settings(CHANNEL_LAYERS=value):
        assert check_channel_layers(None) == []


def test_unset_channel_layers_pass() -> None:
    with override_settings():
        del settings.CHANNEL_LAYERS
        assert check_channel_layers(None) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("redis://localhost", "CHANNEL_LAYERS must be a dict"),
        ({"default": {}}, "CHANNEL_LAYERS['default']['BACKEND'] is missing"),
        ({"default": {"BACKEND": "tidings.layers.Nope"}}, "CHANNEL_LAYERS['default']['BACKEND']"),
        (
            {"default": {"BACKEND": INMEMORY, "CONFIG": {"bogus": 1}}},
            "CHANNEL_LAYERS['default']['CONFIG'] has option(s) 'bogus'",
        ),
        (
            {"default": {"BACKEND": INMEMORY, "TEST_CONFIG": {"bogus": 1}}},
            "CHANNEL_LAYERS['default']['TEST_CONFIG'] has option(s) 'bogus'",
        ),
        ({"default": {"BACKEND": INMEMORY, "OPTIONS": {}}}, "unknown key(s) 'OPTIONS'"),
    ],
    ids=["not-a-dict", "no-backend", "bad-backend", "bad-option", "bad-test-option", "bad-key"],
)
def test_wrong_channel_layers_are_e003(value: object, expected: str) -> None:
    with override_settings(CHANNEL_LAYERS=value):
        (error,) = check_channel_layers(None)
    assert error.id == "tidings.E003"
    assert expected in error.msg


def test_each_wrong_alias_is_reported() -> None:
    layers = {
        "default": {"BACKEND": INMEMORY},
        "one": {"BACKEND": "tidings.layers.Nope"},
        "two": {"CONFIG": {}},
    }
    with override_settings(CHANNEL_LAYERS=layers):
        errors = check_channel_layers(None)
    assert ids(errors) == ["tidings.E003", "tidings.E003"]
    assert "CHANNEL_LAYERS['one']" in errors[0].msg
    assert "CHANNEL_LAYERS['two']" in errors[1].msg


# -- TIDINGS_PRESENCE -----------------------------------------------------------


@pytest.mark.parametrize("value", [None, {}, {"TIMEOUT": 60, "HEARTBEAT_INTERVAL": 10}])
def test_valid_presence_settings_pass(value: object) -> None:
    with override_settings(TIDINGS_PRESENCE=value):
        assert check_presence_settings(None) == []


def test_unset_presence_settings_pass() -> None:
    with override_settings():
        if hasattr(settings, "TIDINGS_PRESENCE"):
            del settings.TIDINGS_PRESENCE
        assert check_presence_settings(None) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([("TIMEOUT", 5)], "TIDINGS_PRESENCE must be a dict"),
        ({"TIMEOUTS": 5}, "TIDINGS_PRESENCE has unknown key(s) 'TIMEOUTS'"),
        ({"TIMEOUT": -1}, "TIDINGS_PRESENCE['TIMEOUT'] must be a number > 0"),
        ({"MAX_META_BYTES": 1.5}, "TIDINGS_PRESENCE['MAX_META_BYTES'] must be an int > 0"),
        ({"TIMEOUT": 6, "HEARTBEAT_INTERVAL": 5}, "TIDINGS_PRESENCE['TIMEOUT']"),
    ],
    ids=["not-a-dict", "unknown-key", "negative", "not-an-int", "timeout-under-two-heartbeats"],
)
def test_wrong_presence_settings_are_e004(value: object, expected: str) -> None:
    with override_settings(TIDINGS_PRESENCE=value):
        (error,) = check_presence_settings(None)
    assert error.id == "tidings.E004"
    assert expected in error.msg


# -- INSTALLED_APPS order -------------------------------------------------------

BASE_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]


def test_tidings_before_staticfiles_passes() -> None:
    with override_settings(INSTALLED_APPS=[*BASE_APPS, "tidings", "django.contrib.staticfiles"]):
        assert check_runserver_override(None) == []


def test_staticfiles_before_tidings_is_w001() -> None:
    with override_settings(INSTALLED_APPS=[*BASE_APPS, "django.contrib.staticfiles", "tidings"]):
        (warning,) = check_runserver_override(None)
    assert warning.id == "tidings.W001"
    assert not warning.is_serious()
    assert "'django.contrib.staticfiles' comes before 'tidings'" in warning.msg
    assert warning.hint is not None and "Move 'tidings' above" in warning.hint


def test_apps_without_runserver_may_come_first() -> None:
    with override_settings(INSTALLED_APPS=[*BASE_APPS, "tidings"]):
        assert check_runserver_override(None) == []


# -- manage.py check, as a process ------------------------------------------------


def _check(settings_module: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings", settings_module],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_manage_check_passes_on_the_test_project() -> None:
    completed = _check("tests.django_project.settings")
    assert completed.returncode == 0, completed.stderr
    assert "System check identified no issues" in completed.stdout


def test_manage_check_fails_naming_the_settings() -> None:
    completed = _check("tests.django_project.settings_broken")
    assert completed.returncode == 1
    assert "?: (tidings.E002) ASGI_APPLICATION is " in completed.stderr
    assert "'tests.django_project.no_such_module' cannot be imported" in completed.stderr
    assert "?: (tidings.E003) CHANNEL_LAYERS['default']['BACKEND']" in completed.stderr
    assert "?: (tidings.E004) TIDINGS_PRESENCE['SYNC_WAIT'] must be a number" in completed.stderr
    assert "Traceback" not in completed.stderr
