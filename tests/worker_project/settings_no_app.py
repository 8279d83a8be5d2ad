"""Test settings without ASGI_APPLICATION (runworker must refuse to start)."""

from __future__ import annotations

from tests.django_settings import *  # noqa: F403
