"""The test project with ``DEBUG = False`` (static files only with ``--insecure``)."""

from __future__ import annotations

from tests.django_project.settings import *  # noqa: F403

DEBUG = False
