"""``tidings worker module:app CHANNEL...``: Django settings, clear errors, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APP = "tests.worker_project.asgi:application"
SETTINGS = "tests.worker_project.settings"


def _env(settings_module: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if settings_module is not None:
        env["DJANGO_SETTINGS_MODULE"] = settings_module
    return env


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "tidings", "worker", *args]


@pytest.mark.parametrize(
    ("args", "env_settings"),
    [([APP, "jobs", "--settings", SETTINGS], None), ([APP, "jobs", "other"], SETTINGS)],
    ids=["--settings", "DJANGO_SETTINGS_MODULE"],
)
def test_worker_runs_with_django_settings_until_sigterm(
    args: list[str], env_settings: str | None
) -> None:
    process = subprocess.Popen(
        _worker(*args),
        cwd=REPO,
        env=_env(env_settings),
        stderr=subprocess.PIPE,
        text=True,
    )
    # Bounds the blocking reads below: a hung worker is killed, which ends its stderr.
    guard = threading.Timer(30, process.kill)
    guard.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the worker logs once it handles signals
            if "Running worker for channels jobs" in line:
                assert "on channel layer 'default'" in line
                break
        else:
            raise AssertionError(f"worker exited early with {process.wait(10)}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        guard.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.parametrize(
    ("args", "env_settings", "expected"),
    [
        (
            [APP, "jobs"],
            None,
            "Django settings are not configured: pass --settings or set DJANGO_SETTINGS_MODULE",
        ),
        (
            [APP, "jobs", "--settings", "tests.no_such_settings"],
            None,
            "cannot import the Django settings module 'tests.no_such_settings'",
        ),
        ([APP, "jobs", "--layer", "missing"], SETTINGS, "channel layer 'missing'"),
        ([APP, "bad name!"], SETTINGS, "bad name!"),
    ],
    ids=["no-settings", "bad-settings-module", "unknown-layer", "bad-channel-name"],
)
def test_worker_configuration_errors_are_one_line(
    args: list[str], env_settings: str | None, expected: str
) -> None:
    completed = subprocess.run(
        _worker(*args),
        cwd=REPO,
        env=_env(env_settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "tidings: error: " in completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "--layer", "missing"], "hannel layer 'missing': "),
        (["bad name!"], "hannel name must be a str"),
    ],
    ids=["unknown-layer", "bad-channel-name"],
)
def test_worker_and_runworker_share_one_front_door(args: list[str], expected: str) -> None:
    """``tidings worker`` and ``manage.py runworker`` report a mistake with the same sentence
    (runworker, as Django commands do, with a capital first letter and exit status 1)."""

    def run(command: list[str], prefix: str) -> tuple[int, str]:
        completed = subprocess.run(
            command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60
        )
        (line,) = [x for x in completed.stderr.splitlines() if expected in x]
        assert line.startswith(prefix), line
        return completed.returncode, line.removeprefix(prefix)

    status, cli = run(_worker(APP, *args, "--settings", SETTINGS), "tidings: error: ")
    manage = [sys.executable, "-m", "django", "runworker", *args, "--settings", SETTINGS]
    django_status, command = run(manage, "CommandError: ")
    assert (status, django_status) == (2, 1)
    assert command == cli[:1].upper() + cli[1:]
