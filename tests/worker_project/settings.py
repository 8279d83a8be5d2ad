"""Test settings with an ASGI_APPLICATION that routes one worker channel."""

from __future__ import annotations

from tests.django_settings import *  # noqa: F403

ASGI_APPLICATION = "tests.worker_project.asgi.application"
