# mysite/settings.py
"""Settings of the chat: Django's startproject defaults, trimmed, plus Tidings.

For anything beyond a local try, set the environment variables DJANGO_SECRET_KEY,
DJANGO_DEBUG=0 and DJANGO_ALLOWED_HOSTS (comma-separated); TIDINGS_REDIS_URL (e.g.
redis://127.0.0.1:6379/0) switches the channel layer to Redis.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-tidings-chat-example")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") != "0"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h]

INSTALLED_APPS = [
    "tidings",  # first: its runserver serves HTTP and WebSocket
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "mysite.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

# Channel layer: in-memory by default, Redis when TIDINGS_REDIS_URL is set.
REDIS_URL = os.environ.get("TIDINGS_REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "tidings.layers.redis.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"}}

# The "summarize room" job runs in a worker that reads this channel. With Redis,
# start it with `python manage.py runworker chat-summaries`. The in-memory layer
# cannot reach another process, so then the server runs the worker itself.
CHAT_SUMMARY_CHANNEL = "chat-summaries"
CHAT_WORKER_IN_SERVER = not REDIS_URL
CHAT_SUMMARY_DELAY = 1.0  # seconds: the job pretends to be slow

LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
