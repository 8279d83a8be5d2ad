"""The Django app config: ``"tidings"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["TidingsConfig"]


class TidingsConfig(AppConfig):
    """Registers Tidings with Django (management commands, system checks).

    List ``"tidings"`` before ``"django.contrib.staticfiles"`` in
    ``INSTALLED_APPS`` so that ``manage.py runserver`` is Tidings' (check
    ``tidings.W001`` says so when it is not).
    """

    name = "tidings"
    verbose_name = "Tidings"

    def ready(self) -> None:
        from tidings._checks import register_checks

        register_checks()
