"""Test settings whose ASGI_APPLICATION names an attribute that does not exist."""

from __future__ import annotations

from tests.django_settings import *  # noqa: F403

ASGI_APPLICATION = "tests.worker_project.asgi.no_such_application"
