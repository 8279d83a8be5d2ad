"""Django settings for the test suite (SQLite in a per-run temporary file)."""

from __future__ import annotations

import os
import tempfile

SECRET_KEY = "tidings-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1", "example.com", ".example.org"]
USE_TZ = True
INSTALLED_APPS = [
    "tidings",  # before staticfiles, so that its runserver is the one Django picks
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.django_urls"
STATIC_URL = "/static/"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TIDINGS_TEST_DB")
        or os.path.join(tempfile.mkdtemp(prefix="tidings-db-"), "test.sqlite3"),
    }
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CHANNEL_LAYERS = {"default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
