"""The test project with a wrong ``ASGI_APPLICATION``, channel layer and presence setting."""

from __future__ import annotations

from tests.django_project.settings import *  # noqa: F403

ASGI_APPLICATION = "tests.django_project.no_such_module.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "tidings.layers.NoSuchLayer"}}
TIDINGS_PRESENCE = {"SYNC_WAIT": 0}
