"""Settings of the runserver test project: Tidings first, static files, no database.

``python -m django runserver --settings tests.django_project.settings`` serves
``asgi.application``. The reloader test sets ``TIDINGS_TEST_RELOAD_PROBE`` to
the name of a module it writes in a temporary directory, so that it has a
watched file to change without touching the source tree.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tidings-django-project-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True
INSTALLED_APPS = ["tidings", "django.contrib.staticfiles"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.django_project.urls"
ASGI_APPLICATION = "tests.django_project.asgi.application"
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
DATABASES: dict[str, dict[str, object]] = {}
CHANNEL_LAYERS = {"default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"}}

_probe = os.environ.get("TIDINGS_TEST_RELOAD_PROBE")
if _probe:
    importlib.import_module(_probe)
