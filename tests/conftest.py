"""Suite-wide test set-up: Django settings, and the services ./scripts/test starts.

Fixtures that only one area needs live in that area's own conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_settings")


def _worker_redis_database() -> None:
    """Give each pytest-xdist worker a database of the run's redis-server of its own.

    ./scripts/test runs the suite in several worker processes that share one private
    redis-server. Tests pick key prefixes of their own, but some count what a layer
    leaves behind on the whole server; database N+1 for worker gwN keeps them apart.
    Set in the environment, so servers and workers the tests start inherit it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    url = os.environ.get("TIDINGS_TEST_REDIS_URL")
    if not url or not worker.startswith("gw"):
        return
    database = int(worker[2:]) % 15 + 1
    os.environ["TIDINGS_TEST_REDIS_URL"] = urlsplit(url)._replace(path=f"/{database}").geturl()


_worker_redis_database()
django.setup()


@pytest.fixture(scope="session")
def django_db() -> Iterator[None]:
    """Create the tables of the test database once per run (a real SQLite file)."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the redis-server that ./scripts/test started for this run.

    Fails (never skips) when it is missing: the Redis tests are part of the suite.
    """
    url = os.environ.get("TIDINGS_TEST_REDIS_URL")
    if not url:
        pytest.fail(
            "TIDINGS_TEST_REDIS_URL is not set: run the suite with ./scripts/test, "
            "which starts a private redis-server, or export the URL of one you started"
        )
    return url
