"""The Django app config: ``"tidings"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["TidingsConfig"]


class TidingsConfig(AppConfig):
    """Registers Tidings with Django (management commands, system checks)."""

    name = "tidings"
    verbose_name = "Tidings"
