"""The test project with a database, for ``python -m django test`` and the live server.

``TIDINGS_LIVE_DB_DIR`` is the directory for the SQLite files; with
``TIDINGS_LIVE_TEST_DB=memory`` the test database keeps Django's default (in
memory), which ChannelsLiveServerTestCase must refuse.
"""

from __future__ import annotations

import os
import tempfile

from tests.django_project.settings import *  # noqa: F403

INSTALLED_APPS = [
    "tidings",
    "django.contrib.staticfiles",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
_DB_DIR = os.environ.get("TIDINGS_LIVE_DB_DIR") or tempfile.gettempdir()
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_DB_DIR, "main.sqlite3"),
        "TEST": (
            {}
            if os.environ.get("TIDINGS_LIVE_TEST_DB") == "memory"
            else {"NAME": os.path.join(_DB_DIR, "test.sqlite3")}
        ),
    }
}
