"""Settings of the browser test project: one process, the in-memory channel layer.

No database: sessions live in signed cookies, so ``AuthMiddlewareStack`` works
(every visitor is anonymous) without tables.
"""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tidings-browser-tests-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = [
    "tidings",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.browser.project.urls"
ASGI_APPLICATION = "tests.browser.project.asgi.application"
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
DATABASES: dict[str, dict[str, object]] = {}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
CHANNEL_LAYERS = {"default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"}}
